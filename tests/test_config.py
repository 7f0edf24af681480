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
    from prodray.config import load_train_config

    enhancer_configs = sorted([*folder.glob("enhancer*.yaml"), *folder.glob("restore*.yaml")])
    for path in enhancer_configs:
        cfg = load_train_config(path)  # every shipped config names its kind
        assert cfg.kind == ("enhancer-adversarial" if "adversarial" in path.name else "enhancer"), path.name
        assert cfg.data.patch_size % cfg.model.scale == 0, path.name
        if path.name.startswith("restore"):  # a restoration model: on damaged inputs, from a clean one
            assert cfg.degradation.jpeg_prob > 0, path.name  # (x1 has no clean partner: from scratch)
            assert cfg.init_from or cfg.model.scale == 1, path.name
    gan_configs = sorted(folder.glob("gan_*.yaml"))
    assert gan_configs
    for path in gan_configs:
        cfg = load_train_config(path)
        assert cfg.kind == "gan" and cfg.data.batch_size >= 2, path.name
    repair_configs = sorted(folder.glob("repair*.yaml"))
    for path in repair_configs:
        cfg = load_train_config(path)
        assert cfg.kind == "repair" and cfg.data.patch_size % 8 == 0, path.name
    recolour_configs = sorted(folder.glob("recolour*.yaml"))
    for path in recolour_configs:
        assert load_train_config(path).check().kind == "recolour", path.name
    assert {p.name for p in folder.glob("*.yaml")} == {p.name for p in [*enhancer_configs, *gan_configs,
                                                                         *repair_configs, *recolour_configs]}


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
    with pytest.raises(ConfigError, match=r"model\.unshuffle"):
        load_config(EnhancerTrainConfig, overrides=[*BASE, "model.unshuffle=3"])


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


# ---------------------------------------------------------------- bulk and serve configs

BULK = {"input": "s3://bucket/in", "output": "s3://bucket/out"}


def test_bulk_defaults_are_the_jobs():
    from prodray.config import BulkConfig
    from prodray.io.codec import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    assert BulkConfig(**BULK).model_dump() == {
        **BULK, "model": None, "scale": 2, "format": "png", "quality": 90, "max_bytes": DEFAULT_MAX_BYTES,
        "max_pixels": DEFAULT_MAX_PIXELS, "batch_size": 8, "actors": 1, "actor_cpus": 1.0, "actor_gpus": None,
        "actor_memory_gib": 2.0, "max_error_fraction": None, "progress_every_s": 10.0, "min_longest_side": None,
        "pad_square": False, "max_output_bytes": None, "self_ensemble": False, "precision": "auto",
        "max_output_pixels": 160_000_000, "strength": None, "task": "enhance", "mask": None, "masks": None,
        "colours": None}


@pytest.mark.parametrize("update,field", [
    ({"input": "gs://bucket/in"}, "input"),
    ({"output": "s3:///no-bucket"}, "output"),
    ({"output": "s3://bucket/in/"}, "output"),  # the input again, with a slash
    ({"format": "gif"}, "format"),
    ({"quality": 0}, "quality"),
    ({"quality": 101}, "quality"),
    ({"scale": 3}, "scale"),
    ({"min_longest_side": 0}, "min_longest_side"),
    ({"actor_gpus": -1}, "actor_gpus"),
    ({"actor_memory_gib": -0.5}, "actor_memory_gib"),
    ({"max_output_bytes": 0}, "max_output_bytes"),
    ({"max_error_fraction": 1.5}, "max_error_fraction"),
    ({"actors": 0}, "actors"),
    ({"colour": "red"}, "colour"),
])
def test_bad_bulk_config_names_the_field(update, field):
    from prodray.config import BulkConfig, validate

    with pytest.raises(ConfigError, match=rf"^config field {field}: "):
        validate(BulkConfig, {"input": "s3://bucket/in", "output": "s3://bucket/out", **update})


def test_bulk_config_is_frozen_plain_data():
    import pickle

    from prodray.config import BulkConfig

    config = BulkConfig(**BULK, pad_square=True)
    assert pickle.loads(pickle.dumps(config)) == config  # it travels to the enhancer actors
    with pytest.raises(ValueError):
        config.quality = 10


def test_serve_config_defaults_and_the_job_part():
    from prodray.config import ServeConfig, ServeJobConfig

    config = ServeConfig()
    assert (config.model, config.generator, config.device) == ("enhancer-x2", "gan-fashion-products", "auto")
    assert config.serves_generator
    replicas = {name: getattr(config, name) for name in ("ingress_replicas", "enhancer_replicas", "generator_replicas",
                                                          "repair_replicas")}
    # Together they fit a 2-CPU head (the local demo).
    assert {name: r.num_cpus for name, r in replicas.items()} == {
        "ingress_replicas": 0.5, "enhancer_replicas": 1.0, "generator_replicas": 0.25, "repair_replicas": 0.25}
    assert config.repair == "repair" and config.serves_repair and replicas["repair_replicas"].max_batch_size == 1
    assert not ServeConfig(repair="none").serves_repair and not ServeConfig(repair="NONE").serves_repair
    assert replicas["ingress_replicas"].max_ongoing_requests == 32
    assert replicas["enhancer_replicas"].max_ongoing_requests >= replicas["enhancer_replicas"].max_batch_size
    assert ServeConfig(generator="None").generator == "none" and not ServeConfig(generator="none").serves_generator
    job = ServeJobConfig(model="m", port=9000, host="0.0.0.0")
    assert job.app_config() == ServeConfig(model="m")  # host, port and timeout are the job's, not the app's


def test_serve_config_partial_section_keeps_that_sections_defaults():
    from prodray.config import ServeConfig, validate

    config = validate(ServeConfig, {"generator_replicas": {"num_gpus": 1}})
    assert config.generator_replicas.num_gpus == 1 and config.generator_replicas.num_cpus == 0.25
