"""prodray.config: YAML + `a.b=c` overrides, validated, with the offending field named."""

from __future__ import annotations

import pytest

from prodray.config import ConfigError, EnhancerTrainConfig, dump_config, load_config

BASE = ["data.sources=[/tmp/images]"]


def test_defaults_with_required_source():
    cfg = load_config(EnhancerTrainConfig, overrides=BASE)
    assert cfg.data.sources == ["/tmp/images"]
    assert cfg.model.scale == 2


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {scale: 2, channels: 32}\n"
                    "data: {sources: ['s3://bucket/train'], patch_size: 64}\n"
                    "run: {name: demo}\n")
    cfg = load_config(EnhancerTrainConfig, path, ["model.scale=4", "optim.lr=0.0005", "run.use_gpu=true"])
    assert cfg.model.scale == 4
    assert cfg.model.channels == 32  # untouched values from the file survive
    assert cfg.optim.lr == pytest.approx(5e-4)
    assert cfg.run.use_gpu is True
    assert cfg.data.sources == ["s3://bucket/train"]
    assert '"scale": 4' in dump_config(cfg)


def test_shipped_configs_load():
    from pathlib import Path

    import prodray

    folder = Path(prodray.__file__).parent / "configs"
    from prodray.config import GanTrainConfig

    for path in sorted(folder.glob("enhancer*.yaml")):
        cfg = load_config(EnhancerTrainConfig, path)
        assert cfg.data.patch_size % cfg.model.scale == 0, path.name
    gan_configs = sorted(folder.glob("gan_*.yaml"))
    assert gan_configs
    for path in gan_configs:
        assert load_config(GanTrainConfig, path).data.batch_size >= 2, path.name
    assert {p.name for p in folder.glob("*.yaml")} == {p.name for p in [*folder.glob("enhancer*.yaml"), *gan_configs]}


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"model\.colour"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "model.colour=red"])


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="bogus"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "bogus.x=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "data.batch_size=lots"])
    with pytest.raises(ConfigError, match=r"model\.scale"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "model.scale=3"])


def test_missing_sources_is_named():
    with pytest.raises(ConfigError, match=r"data"):
        load_config(EnhancerTrainConfig)


def test_patch_size_must_be_multiple_of_scale():
    with pytest.raises(ConfigError, match="patch_size"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "model.scale=4", "data.patch_size=66"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(EnhancerTrainConfig, tmp_path / "nope.yaml")


def test_bad_yaml_and_bad_override(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(EnhancerTrainConfig, path)
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(EnhancerTrainConfig, overrides=["model.scale"])


def test_config_error_is_value_error():
    # jobs_common.run_main turns ValueErrors into one line and exit code 2.
    assert issubclass(ConfigError, ValueError)
