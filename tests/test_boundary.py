"""The functional-core boundary, checked statically from the source files: only prodray/cluster/
imports Ray, nothing outside it (but the entry points) imports prodray.cluster, and prodray has no
import cycle. Plus one run-time check that importing every core module leaves Ray unloaded."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prodray"
RAY_SHELL = "prodray/cluster/"
# Entry points: they parse arguments and may call into the Ray shell, lazily (inside functions).
ENTRY_POINTS = ("prodray/cli.py",)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, child.lineno, top_level))
                # `from prodray.io import storage` imports the module prodray.io.storage
                found.extend((f"{child.module}.{alias.name}", child.lineno, top_level) for alias in child.names)
            visit(child, nested)

    visit(tree, True)
    return found


def is_ray(module: str) -> bool:
    return module == "ray" or module.startswith("ray.")


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_cluster_folder_imports_ray():
    offenders = []
    for path in [*package_files(), *sorted((REPO / "jobs").glob("*.py"))]:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(RAY_SHELL):
            continue
        offenders += [f"{rel}:{line}" for module, line, _ in imports(path) if is_ray(module)]
    assert not offenders, f"only {RAY_SHELL} may import ray; found in {offenders}"


def test_the_core_does_not_import_the_cluster_folder():
    offenders, eager = [], []
    for path in package_files():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(RAY_SHELL):
            continue
        for module, line, top_level in imports(path):
            if module == "prodray.cluster" or module.startswith("prodray.cluster."):
                (eager if rel in ENTRY_POINTS and top_level else offenders if rel not in ENTRY_POINTS else []).append(
                    f"{rel}:{line}")
    assert not offenders, f"the core imports prodray.cluster: {offenders}"
    assert not eager, f"entry points must import prodray.cluster lazily (inside functions): {eager}"


def import_graph() -> dict[str, set[str]]:
    """prodray module -> the prodray modules it imports (at any depth of the file)."""
    names = {module_name(path) for path in package_files()}
    graph = {}
    for path in package_files():
        targets = set()
        for module, _, _ in imports(path):
            while module and module not in names:  # `from prodray.io.storage import x` -> prodray.io.storage
                module = module.rpartition(".")[0]
            if module and module != "prodray":
                targets.add(module)
        me = module_name(path)
        targets.discard(me)
        graph[me] = {t for t in targets if not me.startswith(t + ".")}  # a module's own package __init__
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_inside_prodray():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_what_they_look_for(tmp_path):
    # The AST walk notices both spellings, at module level and nested; the cycle finder finds one.
    sample = tmp_path / "m.py"
    sample.write_text("import os\nimport ray\nfrom ray.train import Checkpoint\ndef f():\n    import ray.data\n")
    assert [(m, line, top) for m, line, top in imports(sample) if is_ray(m)] == [
        ("ray", 2, True), ("ray.train", 3, True), ("ray.train.Checkpoint", 3, True), ("ray.data", 5, False)]
    sample.write_text("import rayon\nfrom raytracing import x\n")
    assert not [m for m, _, _ in imports(sample) if is_ray(m)]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_core_modules_import_without_ray():
    core = sorted(module_name(p) for p in package_files()
                  if not p.relative_to(REPO).as_posix().startswith(RAY_SHELL))
    code = ("import sys\n"
            f"for name in {core!r}:\n"
            "    __import__(name)\n"
            "    assert 'ray' not in sys.modules, f'importing {name} imported ray'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
