"""The GAN evaluation protocol (prodray.gan.evaluation) and the attribute classifier, without a trained GAN.

A small synthetic prepared dataset (shape x colour on white, 32 px) stands in for the real ones:
real images of the requested attributes must score like real data (fid near fid_floor, attr_acc
near the classifier's accuracy, cas near real_acc); noise must score far worse.
"""

import json

import numpy as np
import pytest
import torch

from prodray.gan.classifier import (
    accuracy,
    extract_features,
    load_classifier,
    predict,
    save_classifier,
    shipped_classifier_for,
    train_classifier,
)
from prodray.gan.data import _write_prepared, load_split
from prodray.gan.evaluation import balanced_rows, evaluate_gan, generator_sample_fn

SHAPES = ["square", "disc", "bar", "cross"]
COLOURS = ["red", "green", "blue"]
RGB = {"red": (200, 30, 30), "green": (30, 160, 40), "blue": (30, 50, 200)}
SMALL = (8, 16, 32)  # classifier widths for tests: the recipe, at a fraction of the compute


def synthetic_image(shape: str, colour: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    image = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(12, 20, 2)
    r = int(rng.integers(5, 9))
    mask = {"square": (abs(yy - cy) <= r) & (abs(xx - cx) <= r),
            "disc": (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
            "bar": (abs(yy - cy) <= r) & (abs(xx - cx) <= 2),
            "cross": ((abs(yy - cy) <= r) & (abs(xx - cx) <= 1)) | ((abs(xx - cx) <= r) & (abs(yy - cy) <= 1))}[shape]
    tint = np.clip(np.array(RGB[colour]) + rng.integers(-25, 26, 3), 0, 255)
    image[mask] = tint
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic-prepared"))
    rng = np.random.default_rng(0)
    records, images = [], []
    for split, count in (("train", 720), ("test", 240)):
        for i in range(count):
            shape, colour = SHAPES[i % 4], COLOURS[(i // 4) % 3]
            records.append({"id": f"{split}-{i:04d}", "split": split, "shape": shape, "colour": colour})
            images.append(synthetic_image(shape, colour, rng))
    _write_prepared(out, records, images, {"shape": SHAPES, "colour": COLOURS}, 32, "synthetic", echo=lambda m: None)
    return out


@pytest.fixture(scope="module")
def classifier(prepared):
    model = train_classifier(load_split(prepared, "train"), epochs=4, batch_size=32, widths=SMALL, seed=0)
    return model


def real_sampler(prepared):
    """sample_fn drawing real *train* images with the requested attributes (never the test images)."""
    train = load_split(prepared, "train")

    def sample(attributes, seed):
        rng = np.random.default_rng(seed)
        out = []
        for shape, colour in zip(attributes["shape"], attributes["colour"]):
            pool = np.flatnonzero((train.attributes["shape"] == shape) & (train.attributes["colour"] == colour))
            out.append(train.images[rng.choice(pool)])
        return np.stack(out)
    return sample


def noise_sampler(attributes, seed):
    count = len(attributes["shape"])
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_classifier_learns_and_round_trips(prepared, classifier, tmp_path):
    test = load_split(prepared, "test")
    scores = accuracy(classifier, test)
    assert scores["shape"] > 0.9 and scores["colour"] > 0.9, scores
    model_id = save_classifier(str(tmp_path / "export"), classifier, test.vocab, test_accuracy=scores)
    assert model_id.startswith("classifier-")
    loaded, config = load_classifier(str(tmp_path / "export"))
    assert config["test_accuracy"] == scores and config["widths"] == list(SMALL) and config["model_id"] == model_id
    for name, values in predict(classifier, test.images).items():
        np.testing.assert_array_equal(predict(loaded, test.images)[name], values)
    features = extract_features(loaded, test.images[:10])
    assert features.shape == (10, SMALL[-1]) and features.dtype == np.float64


def test_training_is_seeded(prepared):
    split = load_split(prepared, "train", limit=128)
    a, b, c = (train_classifier(split, epochs=1, batch_size=32, widths=(4, 8), seed=s) for s in (1, 1, 2))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_balanced_rows():
    primary = np.array([0] * 50 + [1] * 30 + [2] * 20)
    rows = balanced_rows(primary, 31, np.random.default_rng(0))
    counts = np.bincount(primary[rows], minlength=3)
    assert counts.sum() == 31 and counts.max() - counts.min() <= 1
    assert len(set(rows.tolist())) == 31  # no repeats while each value has enough rows


@pytest.fixture(scope="module")
def real_result(prepared, classifier):
    return evaluate_gan(real_sampler(prepared), prepared, classifier, n=240, seed=0, cas_epochs=8, cas_batch_size=16)


def test_real_images_score_like_real_data(real_result):
    result = real_result
    assert result["n"] == 240 and result["n_cas"] == 240 and result["primary"] == "shape"
    # Real train images for the requested attributes: the same distance as the floor, up to noise.
    assert result["fid"] < 1.5 * result["fid_floor"] + 1e-3, result
    assert abs(result["kid"] - result["kid_floor"]) < 0.05 + 0.5 * abs(result["kid_floor"]), result
    for name in ("shape", "colour"):
        assert abs(result["attr_acc"][name] - result["classifier_acc"][name]) < 0.08, result
        assert result["attr_acc_balanced"][name] > 0.85, result
    # Trained on real images either way: CAS and real_acc agree (only the sampled train images differ).
    assert result["cas"] > 0.8 and abs(result["cas"] - result["real_acc"]) < 0.15, result
    assert set(result["cas_by_attr"]) == set(result["real_acc_by_attr"]) == {"shape", "colour"}
    json.dumps(result)  # the CLI prints it


def test_noise_scores_far_worse(prepared, classifier, real_result):
    noise = evaluate_gan(noise_sampler, prepared, classifier, n=240, seed=0, cas_epochs=4, cas_batch_size=16)
    assert noise["fid_floor"] == pytest.approx(real_result["fid_floor"])  # same real subsets
    assert noise["fid"] > 10 * max(noise["fid_floor"], real_result["fid"]), (noise, real_result)
    assert noise["kid"] > 10 * max(real_result["kid"], 1e-3)
    chance = {"shape": 1 / 4, "colour": 1 / 3}
    for name, level in chance.items():
        assert noise["attr_acc"][name] < level + 0.2, noise
        assert noise["cas_by_attr"][name] < level + 0.2, noise
    assert noise["real_acc"] > 0.7  # the real-data recipe is unaffected by what the generator does


def test_sample_fn_shape_is_checked(prepared, classifier):
    with pytest.raises(ValueError, match="sample_fn must return uint8"):
        evaluate_gan(lambda a, s: np.zeros((len(a["shape"]), 16, 16, 3), np.uint8), prepared, classifier, n=20)


def test_inception_features_from_a_weights_file(prepared, classifier, tmp_path):
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    weights = tmp_path / "inception.pt"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    result = evaluate_gan(real_sampler(prepared), prepared, classifier, n=6, seed=0, cas_epochs=1,
                          cas_batch_size=6, kid_subsets=2, inception_weights=str(weights))
    assert result["features"] == f"inception:{weights}"
    assert np.isfinite(result["fid"]) and np.isfinite(result["fid_floor"]) and result["fid_floor"] > 0


class FakeGenerator:
    """The ProductGenerator surface that evaluation uses, with a vocabulary in another order."""
    model_id, resolution = "fake", 32
    vocab = {"shape": SHAPES[::-1], "colour": COLOURS[::-1]}

    def __init__(self):
        self.calls = []

    def generate_indices(self, attributes, seed, truncation=None):
        self.calls.append((len(attributes["shape"]), seed, truncation))
        # Encode the requested (generator) indices into pixel values so the test can read them back.
        out = np.zeros((len(attributes["shape"]), 32, 32, 3), np.uint8)
        out[:, 0, 0, 0] = attributes["shape"]
        out[:, 0, 0, 1] = attributes["colour"]
        return out


def test_generator_sample_fn_translates_vocabularies():
    generator = FakeGenerator()
    sample = generator_sample_fn(generator, {"shape": SHAPES, "colour": COLOURS})
    shape, colour = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    images = sample({"shape": shape, "colour": colour}, seed=7)
    assert images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(images[:, 0, 0, 0], 3 - shape)  # reversed vocabulary
    np.testing.assert_array_equal(images[:, 0, 0, 1], 2 - colour)
    assert generator.calls == [(10, 7, None)]
    generator_sample_fn(generator, {"shape": SHAPES, "colour": COLOURS}, truncation=0.7)({"shape": shape,
                                                                                        "colour": colour}, seed=8)
    assert generator.calls[-1] == (10, 8, 0.7)  # passed on to the generator
    with pytest.raises(ValueError, match="cannot produce"):
        generator_sample_fn(generator, {"shape": SHAPES + ["star"], "colour": COLOURS})


def test_cli_train_classifier(prepared, tmp_path):
    from prodray.cli import build_parser
    out = tmp_path / "cli-export"
    args = build_parser().parse_args(["gan", "train-classifier", "--data", prepared, "--out", str(out),
                                      "--epochs", "0.2", "--limit", "100", "--widths", "4,8"])
    args.func(args)
    config = json.loads((out / "config.json").read_text())
    assert set(config["test_accuracy"]) == {"shape", "colour"}
    assert config["data"]["train_images"] == 100 and config["command"].startswith("prodray gan train-classifier")
    assert (out / "classifier.safetensors").is_file() and config["widths"] == [4, 8]


@pytest.mark.parametrize("name,attributes,resolution", [
    ("classifier-fashion-mnist", ["category"], 32),
    ("classifier-fashion-products", ["articleType", "baseColour"], 64)])
def test_shipped_classifiers(name, attributes, resolution):
    from prodray.io.artifacts import SHIPPED_DIR
    folder = SHIPPED_DIR / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"{name} not shipped yet")
    assert (folder / "classifier.safetensors").stat().st_size < 5_000_000
    model, config = load_classifier(name)
    assert list(config["attributes"]) == attributes and config["resolution"] == resolution
    assert set(config["test_accuracy"]) == set(attributes) and config["command"]
    assert shipped_classifier_for(config["attributes"], resolution) == name
    x = np.zeros((2, resolution, resolution, 3), np.uint8)
    assert set(predict(model, x)) == set(attributes)


def test_cli_eval_gan_with_a_stand_in_generator(prepared, classifier, tmp_path, monkeypatch, capsys):
    """`prodray eval gan` end to end, ProductGenerator replaced by real images (so no GAN is needed)."""
    import sys
    import types

    from prodray.cli import build_parser
    sample, truncations = real_sampler(prepared), set()

    class StandIn:
        model_id, resolution = "stand-in-real", 32
        vocab = {"shape": SHAPES, "colour": COLOURS}

        @classmethod
        def load(cls, reference, device="cpu", precision="auto"):
            assert reference == "my-gan"
            return cls()

        def generate_indices(self, attributes, seed, truncation=None):
            truncations.add(truncation)
            return sample(attributes, seed)

    monkeypatch.setitem(sys.modules, "prodray.gan.inference", types.SimpleNamespace(ProductGenerator=StandIn))
    export = str(tmp_path / "classifier")
    save_classifier(export, classifier, {"shape": SHAPES, "colour": COLOURS})
    args = build_parser().parse_args(["eval", "gan", "--model", "my-gan", "--data", prepared, "--classifier", export,
                                      "--n", "60", "--cas-epochs", "1", "--truncation", "0.5", "--json"])
    args.func(args)
    result = json.loads(capsys.readouterr().out)
    assert result["model_id"] == "stand-in-real" and result["n"] == 60
    assert result["truncation"] == 0.5 and truncations == {0.5}
    assert {"fid", "kid", "fid_floor", "cas", "real_acc", "attr_acc"} <= set(result)
    assert result["classifier"].startswith("classifier-")
