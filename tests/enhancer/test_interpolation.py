"""Weight-space interpolation of two exports of one network (scripts/interpolate_weights.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from enhancer_networks import CONFIG, random_enhancer
from safetensors.torch import load_file

from prodray.enhancer.inference import Enhancer
from prodray.enhancer.interpolation import interpolate_exports
from prodray.io.artifacts import export_model

ROOT = Path(__file__).resolve().parents[2]


def random_export(folder: Path, seed: int, **config) -> Path:
    export_model(str(folder), "enhancer", random_enhancer(seed, **config), {**CONFIG, **config})
    return folder


def weights(folder: Path) -> dict:
    return load_file(str(folder / "enhancer.safetensors"))


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_interpolated_weights_lie_on_the_line_between_the_two(tmp_path, t):
    start, end = random_export(tmp_path / "a", 0), random_export(tmp_path / "b", 1)
    model_id = interpolate_exports(str(start), str(end), t, str(tmp_path / "mix"))
    mixed, a, b = weights(tmp_path / "mix"), weights(start), weights(end)
    assert mixed.keys() == a.keys()
    for key, value in mixed.items():
        torch.testing.assert_close(value, a[key] + t * (b[key] - a[key]), rtol=0, atol=1e-6)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two differ, so t is seen
    config = json.loads((tmp_path / "mix" / "config.json").read_text())
    starts = json.loads((start / "config.json").read_text())["model_id"]
    ends = json.loads((end / "config.json").read_text())["model_id"]
    assert config["interpolated"] == {"start": starts, "end": ends, "t": t}
    assert config["model_id"] == model_id and (model_id == starts) == (t == 0.0)


def test_the_result_keeps_the_start_models_clean_partner(tmp_path):
    clean = "enhancer-b66f337e3125"  # the shipped enhancer-x2, restore-x2's partner
    start = random_export(tmp_path / "a", 0, channels=48, blocks=8, clean_model_id=clean)
    end = random_export(tmp_path / "b", 1, channels=48, blocks=8, clean_model_id=clean)
    interpolate_exports(str(start), str(end), 0.5, str(tmp_path / "mix"))
    assert Enhancer.load(str(tmp_path / "mix"), strength="auto").restores


def test_different_networks_and_a_bad_t_are_refused(tmp_path):
    start, deeper = random_export(tmp_path / "a", 0), random_export(tmp_path / "b", 1, blocks=2)
    with pytest.raises(ValueError, match="blocks"):
        interpolate_exports(str(start), str(deeper), 0.5, str(tmp_path / "mix"))
    with pytest.raises(ValueError, match="t must be in"):
        interpolate_exports(str(start), str(start), 1.5, str(tmp_path / "mix"))
    assert not (tmp_path / "mix").exists()


def test_the_script_exports_and_reports_errors(tmp_path):
    start, end = random_export(tmp_path / "a", 0), random_export(tmp_path / "b", 1)
    script = [sys.executable, str(ROOT / "scripts" / "interpolate_weights.py")]
    ok = subprocess.run([*script, "--start", str(start), "--end", str(end), "--t", "0.5", "--out",
                         str(tmp_path / "mix")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "exported enhancer-" in ok.stdout, ok.stderr
    bad = subprocess.run([*script, "--start", str(start), "--end", str(tmp_path / "none"), "--t", "0.5",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr
