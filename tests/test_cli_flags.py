"""One definition of the bulk and serve flags: jobs/enhance_catalog.py and `prodray enhance` take the
same flags, generated from config.BulkConfig (jobs/serve.py's from config.ServeJobConfig); a bad
value fails naming flag and field before any work; --dry-run prints the resolved config."""

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prodray import cli
from prodray.cli_flags import add_config_flags, config_fields, config_from_args, flag_name
from prodray.config import BulkConfig, ConfigError, ServeJobConfig

ROOT = Path(__file__).resolve().parents[1]
BULK_ARGS = ["--input", "s3://bucket/in", "--output", "s3://bucket/out"]
# The union of the flags the job and `prodray enhance` took before they shared one definition.
BULK_FLAGS = {"--input", "--output", "--model", "--scale", "--format", "--quality", "--batch-size", "--actors",
              "--actor-cpus", "--actor-gpus", "--actor-memory-gib", "--max-error-fraction", "--min-longest-side",
              "--pad-square", "--max-output-bytes", "--self-ensemble", "--max-output-pixels", "--strength",
              "--task", "--mask", "--masks", "--colours"}


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any attempt to reach Ray or run the job fails the test."""
    import prodray.cluster.bulk
    import prodray.cluster.jobs

    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(prodray.cluster.jobs, "connect_ray", refuse)
    monkeypatch.setattr(prodray.cluster.bulk, "run_bulk", refuse)
    monkeypatch.setenv("PRODRAY_HOME", str(tmp_path / "no-stack"))  # `prodray` reads no local stack
    return load_job("enhance_catalog")


def test_job_and_cli_accept_the_same_bulk_flags():
    job = flags(load_job("enhance_catalog").build_parser())
    command = flags(subcommand(cli.build_parser(), "enhance"))
    assert job == command
    assert BULK_FLAGS | {"--dry-run", "--max-bytes", "--max-pixels", "--progress-every-s", "--precision"} == job


@pytest.mark.parametrize("cls", [BulkConfig, ServeJobConfig])
def test_every_field_is_a_flag_helped_by_its_description(cls):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    actions = {action.option_strings[0]: action for action in parser._actions if action.option_strings}
    fields = config_fields(cls)
    assert {flag_name(path) for path, _ in fields} | {"-h", "--dry-run"} == set(actions)
    for path, field in fields:
        assert field.description, path
        assert actions[flag_name(path)].help.startswith(field.description), path


def test_flag_kinds_follow_the_field_types():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, BulkConfig)
    actions = {action.dest: action for action in parser._actions}
    assert actions["format"].choices == ["png", "jpeg", "webp"]
    assert actions["scale"].choices == [1, 2, 4] and actions["scale"].type is int
    assert actions["pad_square"].nargs == 0  # a switch
    assert actions["actor_gpus"].type is float and actions["input"].required
    assert "(default: 90)" in actions["quality"].help


def test_flags_round_trip_to_the_config():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, BulkConfig)
    args = parser.parse_args([*BULK_ARGS, "--scale", "4", "--format", "jpeg", "--actor-gpus", "0", "--pad-square",
                              "--max-error-fraction", "0.1"])
    assert config_from_args(BulkConfig, args) == BulkConfig(input="s3://bucket/in", output="s3://bucket/out",
                                                            scale=4, format="jpeg", actor_gpus=0.0, pad_square=True,
                                                            max_error_fraction=0.1)
    # Flags not given keep the config's defaults, sections included.
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ServeJobConfig)
    config = config_from_args(ServeJobConfig, parser.parse_args(["--enhancer-replicas-num-gpus", "1"]))
    assert config.enhancer_replicas.num_gpus == 1 and config.enhancer_replicas.num_cpus == 1.0
    assert config.generator_replicas.num_cpus == 0.25 and config == ServeJobConfig(enhancer_replicas={"num_gpus": 1})


@pytest.mark.parametrize("bad,named", [
    (["--quality", "101"], "--quality: config field quality: Input should be less than or equal to 100"),
    (["--actor-gpus", "-1"], "--actor-gpus: config field actor_gpus: Input should be greater than or equal to 0"),
    (["--min-longest-side", "0"], "--min-longest-side: config field min_longest_side:"),
    (["--output", "s3://bucket/in"], "--output: config field output: Value error, output must differ from input"),
    (["--input", "gs://bucket/in"], "--input: config field input: Value error, unsupported URI scheme 'gs'"),
])
def test_a_bad_bulk_flag_fails_naming_the_field_before_any_work(no_work, capsys, bad, named):
    job = no_work
    with pytest.raises(ConfigError, match=named):
        job.main([*BULK_ARGS, *bad])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["enhance", *BULK_ARGS, *bad])
    assert exit_.value.code == 2
    assert f"error: {named}" in capsys.readouterr().err


def test_a_flag_outside_its_choices_fails_in_the_parser(no_work, capsys):
    with pytest.raises(SystemExit) as exit_:
        no_work.main([*BULK_ARGS, "--format", "gif"])
    assert exit_.value.code == 2 and "argument --format: invalid choice: 'gif'" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(no_work, capsys):
    extra = ["--scale", "4", "--pad-square", "--actor-gpus", "0", "--dry-run"]
    no_work.main([*BULK_ARGS, *extra])
    printed = json.loads(capsys.readouterr().out)
    assert printed == BulkConfig(input="s3://bucket/in", output="s3://bucket/out", scale=4, pad_square=True,
                                 actor_gpus=0).model_dump()
    assert printed["quality"] == 90 and printed["model"] is None  # defaults are shown, resolved
    cli.main(["enhance", *BULK_ARGS, *extra])
    assert json.loads(capsys.readouterr().out) == printed


def test_dry_run_imports_no_ray():
    """The job file itself, as `ray job submit` runs it: --dry-run leaves Ray unimported."""
    code = ("import runpy, sys; sys.argv = ['enhance_catalog.py', '--input', 's3://b/in', '--output', 's3://b/out', "
            "'--dry-run']; runpy.run_path('jobs/enhance_catalog.py', run_name='__main__'); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["output"] == "s3://b/out"


def test_serve_job_flags_come_from_serve_job_config(monkeypatch, capsys):
    job = load_job("serve")
    monkeypatch.setattr(job, "connect_ray", lambda: pytest.fail("work started"))
    parser_flags = flags(job.build_parser())
    assert {"--model", "--generator", "--host", "--port", "--timeout", "--dry-run"} <= parser_flags
    assert parser_flags == {flag_name(path) for path, _ in config_fields(ServeJobConfig)} | {"--dry-run"}
    job.main(["--generator", "none", "--enhancer-replicas-num-gpus", "1", "--port", "8100", "--dry-run"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == ServeJobConfig(generator="none", enhancer_replicas={"num_gpus": 1}, port=8100).model_dump()
    with pytest.raises(ConfigError, match="--port: config field port"):
        job.main(["--port", "0"])


def test_shipped_bulk_commands_parse():
    """The RayJob manifest's and the demo's bulk commands use flags the job accepts."""
    doc = yaml.safe_load((ROOT / "deploy" / "rayjob-enhance.yaml").read_text())
    commands = [doc["spec"]["entrypoint"]]
    demo = (ROOT / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    commands += [line.split("submit ", 1)[1] for line in demo.splitlines()
                 if "submit python jobs/enhance_catalog.py" in line]
    assert len(commands) == 2
    parser = load_job("enhance_catalog").build_parser()
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["python", "jobs/enhance_catalog.py"], command
        config_from_args(BulkConfig, parser.parse_args(words[2:]))
