"""Bulk recolouring (--task recolour) through Ray Data against the real S3 server: a result per image
and colour with the colour in the key, the product moved to the colour and the background kept byte
for byte, alpha kept, white-only photos refused, reruns that do only the colours not done yet, and
bad colours refused before any work."""

import io

import numpy as np
import pytest
from PIL import Image

from prodray.catalog.manifest import output_key, read_manifest
from prodray.config import BulkConfig, ConfigError, validate
from prodray.io import storage
from prodray.io.artifacts import export_model
from prodray.metrics import srgb_to_lab
from prodray.recolour.baseline import lab_shift
from prodray.recolour.colours import nearest_colour_name, parse_colour

ray = pytest.importorskip("ray")

NET = {"arch": "bilateral-grid", "channels": 8, "grid_depth": 4, "grid_size": 8, "input_size": 32,
       "kind": "recolour"}


def recolour_export(uri: str) -> str:
    """An untrained network: exactly the Lab shift baseline, so results can be checked against it."""
    from prodray.recolour.model import RecolourNet
    net = RecolourNet(**{k: v for k, v in NET.items() if k not in ("arch", "kind")})
    return export_model(uri, "recolour", net, NET)


def product_photo(height: int, width: int, base=(210, 160, 90)) -> tuple[np.ndarray, np.ndarray]:
    """A shaded tan ellipse on pure white -> (rgb, the ellipse's mask)."""
    y, x = np.mgrid[0:height, 0:width]
    shape = ((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 <= 1
    rgb = np.full((height, width, 3), 255, np.uint8)
    rgb[shape] = np.clip(np.array(base) - (x[shape] * 30 // width)[:, None], 0, 255)
    return rgb, shape


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def read_rgba(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(uri))).convert("RGBA"))


def rows_by_result(output: str) -> dict:
    return {(row["input_key"], row["colour"]): row for row in read_manifest(output)}


def results(output: str) -> list[str]:
    return sorted(f["uri"] for f in storage.list_files(output) if "/_" not in f["uri"])


def named(rgb: np.ndarray, mask: np.ndarray) -> str:
    return nearest_colour_name(srgb_to_lab(rgb[mask]).mean(axis=0))


def run(config: BulkConfig) -> dict:
    from prodray.cluster.bulk import run_bulk
    return run_bulk(config)


def test_a_result_per_image_and_colour_resumed_per_colour(bucket, local_ray):
    source, output = f"s3://{bucket}/catalog", f"s3://{bucket}/recoloured"
    model_id = recolour_export(f"s3://{bucket}/model")
    shirt, shirt_shape = product_photo(48, 64)
    bag, bag_shape = product_photo(40, 40, base=(120, 140, 200))
    bag_alpha = np.where(bag_shape, 255, 0).astype(np.uint8)
    bag_alpha[bag_shape & (np.arange(40)[None, :] < 20)] = 200  # a half-transparent half: kept as read
    storage.put_bytes(f"{source}/tops/shirt.png", png(shirt))
    storage.put_bytes(f"{source}/bag.png", png(np.dstack([bag, bag_alpha]), "RGBA"))
    storage.put_bytes(f"{source}/blank.png", png(np.full((32, 32, 3), 255, np.uint8)))
    assert named(shirt, shirt_shape) not in ("Red", "Navy Blue", "Green")
    config = BulkConfig(input=source, output=output, task="recolour", colours="red,NAVY,Red",
                        model=f"s3://{bucket}/model", actor_cpus=0.5)
    assert config.colours == "Red,Navy Blue"  # canonical, repeats dropped

    summary = run(config)
    assert summary["counts"] == {"ok": 4, "rejected": 2} and summary["model_id"] == model_id
    rows = rows_by_result(output)
    assert {rows[("blank.png", c)]["reason"].split(":")[0] for c in ("Red", "Navy Blue")} == {"no_product"}
    photos = {"tops/shirt.png": (shirt, shirt_shape), "bag.png": (bag, bag_shape)}
    for (key, (rgb, shape)), colour in [(item, c) for item in photos.items() for c in ("Red", "Navy Blue")]:
        row = rows[(key, colour)]
        slug = colour.lower().replace(" ", "-")
        assert row["status"] == "ok"
        assert row["output_key"] == output_key(key, model_id, config, colour=colour)
        assert row["output_key"] == f"{model_id}/recolour-{slug}-png-q90/{key}"
        result = read_rgba(f"{output}/{row['output_key']}")
        assert np.array_equal(result[..., :3][~shape], rgb[~shape])  # background byte for byte
        assert named(result[..., :3], shape) == colour
        assert np.array_equal(result[..., :3], lab_shift(rgb, parse_colour(colour)[1], shape))
    assert (read_rgba(f"{output}/{rows[('tops/shirt.png', 'Red')]['output_key']}")[..., :3][~shirt_shape] == 255).all()
    bag_result = read_rgba(f"{output}/{rows[('bag.png', 'Red')]['output_key']}")
    assert np.array_equal(bag_result[..., 3], bag_alpha)
    assert len(results(output)) == 4
    assert run(config)["nothing_to_do"] is True

    # A colour added: only that colour is made; the done ones are neither redone nor recorded again.
    before = {uri: storage.get_bytes(uri) for uri in results(output)}
    more = config.model_copy(update={"colours": "Red,Navy Blue,#2e8b57"})
    assert run(more)["counts"] == {"ok": 2, "rejected": 1}
    after = results(output)
    assert len(after) == 6 and all(storage.get_bytes(uri) == data for uri, data in before.items())
    rows = rows_by_result(output)
    green = rows[("tops/shirt.png", "#2e8b57")]
    assert green["output_key"] == f"{model_id}/recolour-2e8b57-png-q90/tops/shirt.png"
    assert named(read_rgba(f"{output}/{green['output_key']}")[..., :3], shirt_shape) == "Green"
    assert rows[("blank.png", "#2e8b57")]["status"] == "rejected"
    assert rows[("bag.png", "Red")]["status"] == "ok"  # not overwritten by a 'skipped' row
    assert run(more)["nothing_to_do"] is True


def test_the_baseline_and_refusals_before_any_work(bucket, local_ray):
    source, output = f"s3://{bucket}/catalog", f"s3://{bucket}/out"
    shirt, shape = product_photo(32, 48)
    storage.put_bytes(f"{source}/shirt.png", png(shirt))
    # A bad colour stops the job at its flag, before Ray or the storage is touched.
    from prodray.cli_flags import config_from_args
    from prodray.cluster.jobs import config_job_parser
    parser = config_job_parser("bulk", BulkConfig)
    flags = ["--input", source, "--output", output, "--task", "recolour", "--model", "baseline"]
    with pytest.raises(ConfigError, match="--colours: .*unknown colour 'teal'"):
        config_from_args(BulkConfig, parser.parse_args([*flags, "--colours", "red,teal"]))
    # A model of another kind is refused before any work.
    from prodray.repair.model import build_repairer
    repair = {"arch": "fourier-unet", "channels": 8, "blocks": 1, "kind": "repair"}
    export_model(f"s3://{bucket}/repair", "repair", build_repairer(repair).eval(), repair)
    config = config_from_args(BulkConfig, parser.parse_args([*flags, "--colours", "navy"]))
    with pytest.raises(ValueError, match="is a 'repair' model; --task recolour needs a recolour model"):
        run(config.model_copy(update={"model": f"s3://{bucket}/repair"}))
    assert storage.list_files(output) == []

    # --model baseline: the classical Lab shift, its id in the key.
    assert run(config)["counts"] == {"ok": 1}
    (row,) = read_manifest(output)
    assert row["output_key"] == "baseline-labshift/recolour-navy-blue-png-q90/shirt.png"
    result = read_rgba(f"{output}/{row['output_key']}")[..., :3]
    assert np.array_equal(result, lab_shift(shirt, parse_colour("Navy Blue")[1], shape))
    assert named(result, shape) == "Navy Blue"


@pytest.mark.parametrize("fields,named_field", [
    ({"task": "recolour"}, "config field colours: Value error, recolour needs --colours"),
    ({"task": "recolour", "colours": " , "}, "config field colours: Value error, recolour needs --colours"),
    ({"task": "recolour", "colours": "red,#12345"}, "config field colours: Value error, a hex colour is #rrggbb"),
    ({"colours": "red"}, "config field colours: Value error, colours are for --task recolour"),
    ({"task": "recolour", "colours": "red", "scale": 2}, "config field scale: Value error, recolour keeps"),
    ({"task": "recolour", "colours": "red", "strength": "auto"}, "config field strength: Value error"),
    ({"task": "recolour", "colours": "red", "mask": "m.png"}, "config field mask: Value error, masks are for"),
])
def test_recolour_flags_that_do_not_fit_fail_naming_the_field(fields, named_field):
    with pytest.raises(ConfigError, match=named_field):
        validate(BulkConfig, {"input": "s3://b/in", "output": "s3://b/out", **fields})
