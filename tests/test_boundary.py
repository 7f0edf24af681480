"""The functional-core boundary: plain modules import without Ray; only the Ray shell imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CORE_MODULES = ["prodray.models", "prodray.degradations", "prodray.codec", "prodray.storage",
                "prodray.checkpoint", "prodray.metrics", "prodray.config", "prodray.enhance",
                "prodray.evaluation", "prodray.catalog", "prodray.local", "prodray.train.gan_core",
                "prodray.train.gan_local"]

# Files allowed to import Ray (cli.py only lazily, inside functions).
RAY_SHELL = ("prodray/train/", "prodray/bulk.py", "prodray/listing.py", "prodray/serve.py", "prodray/jobs_common.py",
             "prodray/cli.py", "jobs/")


def test_core_modules_do_not_import_ray():
    code = ("import sys\n"
            f"for name in {CORE_MODULES!r}:\n"
            "    __import__(name)\n"
            "    assert 'ray' not in sys.modules, f'importing {name} imported ray'\n"
            "import prodray.cli, prodray.jobs_common\n"
            "assert 'ray' not in sys.modules, 'prodray.cli / jobs_common import ray at module level'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def _ray_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) for every `import ray...` / `from ray... import` in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and any(a.name == "ray" or a.name.startswith("ray.") for a in child.names):
                found.append((child.lineno, top_level))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module and (
                    child.module == "ray" or child.module.startswith("ray.")):
                found.append((child.lineno, top_level))
            visit(child, nested)

    visit(tree, True)
    return found


def test_only_the_ray_shell_imports_ray():
    offenders, eager_cli = [], []
    for path in sorted([*REPO.glob("prodray/**/*.py"), *REPO.glob("jobs/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        imports = _ray_imports(path)
        if not imports:
            continue
        if not rel.startswith(RAY_SHELL):
            offenders.append(f"{rel}:{imports[0][0]}")
        elif rel in ("prodray/cli.py", "prodray/jobs_common.py") and any(top for _, top in imports):
            eager_cli.append(rel)
    assert not offenders, f"only the Ray shell may import ray; found in {offenders}"
    assert not eager_cli, f"these must import ray lazily (inside functions): {eager_cli}"


def test_boundary_check_sees_ray_imports(tmp_path):
    # The AST check itself must notice both spellings, at module level and nested.
    sample = tmp_path / "m.py"
    sample.write_text("import os\nimport ray\nfrom ray.train import Checkpoint\n"
                      "def f():\n    import ray.data\n")
    assert _ray_imports(sample) == [(2, True), (3, True), (5, False)]
    sample.write_text("import rayon\nfrom raytracing import x\n")
    assert _ray_imports(sample) == []
