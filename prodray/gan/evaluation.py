"""GAN evaluation against real data: FID/KID with a floor, CAS against real_acc, attribute accuracy.

`evaluate_gan` takes any `sample_fn(attributes, seed) -> uint8 (N, R, R, 3)` (a trained generator,
real images, noise), so the protocol can be checked without a GAN. Features come from the
project's attribute classifier (prodray/classifier.py) or, when a weights file is given, from
torchvision's Inception-v3 (nothing is downloaded). No Ray.

Protocol (n = min(n, test split size), all draws seeded):
- fid / kid: generated vs a random subset of n real test images, the generator asked for exactly
  those images' attributes (so class mix does not count as a quality gap);
  fid_floor / kid_floor: a random subset of n real train images vs the same test subset.
- attr_acc: share of those generated images whose classifier prediction equals the request;
  classifier_acc: the classifier's accuracy on the real test subset, for scale.
- cas: a fresh classifier (the shipped recipe) trained only on n generated images, balanced over
  the primary (first) attribute, the other attributes drawn from train rows of that value (the
  train joint distribution), scored on the real test subset; real_acc: the same recipe on the
  real train images of those very rows. `*_by_attr` give every attribute; cas/real_acc the primary.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from prodray.gan.classifier import accuracy, extract_features, load_classifier, predict, torch_threads, train_classifier
from prodray.gan.classifier_model import AttributeClassifier
from prodray.gan.data import GanSplit, decode_small, encode_attributes, load_split, read_manifest, read_vocab
from prodray.io import storage
from prodray.metrics import fid_from_features, kid_from_features

SampleFn = Callable[[dict[str, np.ndarray], int], np.ndarray]


class InceptionFeatures:
    """2048-d pool features of torchvision's Inception-v3 from a local state-dict file.

    Inputs are resized to 299x299 (bilinear) and scaled to [-1, 1], which is what the network's
    own `transform_input` produces from ImageNet-normalised input."""

    def __init__(self, weights_file: str, device: str = "cpu", batch_size: int = 50):
        from torchvision.models import inception_v3
        state = _read_state_dict(weights_file)
        aux = any(key.startswith("AuxLogits.") for key in state)
        model = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
        model.load_state_dict(state, strict=True)
        model.fc = torch.nn.Identity()
        self.model = model.to(device).eval()
        self.device, self.batch_size, self.name = torch.device(device), batch_size, f"inception:{weights_file}"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from prodray.gan.classifier_model import to_input
        parts = []
        for start in range(0, len(images), self.batch_size):
            x = to_input(images[start:start + self.batch_size]).to(self.device)  # (B, 3, R, R) in [-1, 1]
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            parts.append(self.model(x).double().cpu())
        return torch.cat(parts).numpy()


def _read_state_dict(path: str) -> dict:
    data = storage.get_bytes(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load
        return load(data)
    import io
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load_rows(prepared: str, table, rows: np.ndarray, resolution: int, threads: int = 8) -> np.ndarray:
    """uint8 (len(rows), R, R, 3) images of the given manifest rows."""
    uris = [storage.join(prepared, table["uri"][int(i)].as_py()) for i in rows]
    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(lambda u: decode_small(storage.get_bytes(u), resolution), uris)))


def balanced_rows(primary: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n rows, as even as possible over the values of `primary` (each value's rows drawn
    without replacement while it has enough), in a shuffled order."""
    values = np.unique(primary)
    counts = np.full(len(values), n // len(values))
    counts[rng.permutation(len(values))[: n % len(values)]] += 1
    chosen = []
    for value, count in zip(values, counts):
        pool = np.flatnonzero(primary == value)
        chosen.append(rng.choice(pool, count, replace=count > len(pool)))
    return rng.permutation(np.concatenate(chosen))


def _check_images(images: np.ndarray, count: int, resolution: int, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape != (count, resolution, resolution, 3):
        raise ValueError(f"{what}: sample_fn must return uint8 ({count}, {resolution}, {resolution}, 3), "
                         f"got {images.dtype} {images.shape}")
    return images


def evaluate_gan(sample_fn: SampleFn, prepared: str, classifier: str | AttributeClassifier, n: int = 2000,
                 seed: int = 0, inception_weights: str | None = None, cas_epochs: float = 10.0,
                 cas_batch_size: int = 64, threads: int | None = 1, kid_subsets: int = 100, echo=None) -> dict:
    """The metrics above for `sample_fn` on the prepared dataset `prepared` (see the module doc)."""
    say = echo or (lambda message: None)
    started = time.time()
    meta = read_vocab(prepared)
    vocab, resolution = meta["attributes"], int(meta["resolution"])
    primary = next(iter(vocab))
    classifier_id = None
    if not isinstance(classifier, AttributeClassifier):
        classifier, classifier_config = load_classifier(classifier)
        classifier_id = classifier_config.get("model_id")
    if classifier.resolution != resolution or list(classifier.attribute_names) != list(vocab) or any(
            classifier.heads[name].out_features != len(values) for name, values in vocab.items()):
        raise ValueError(f"classifier ({classifier.attribute_names} at {classifier.resolution} px) does not match "
                         f"{prepared} ({list(vocab)} at {resolution} px)")

    # Real sets: a test subset, and a train subset of the same size for the floor.
    test = load_split(prepared, "test", limit=n, seed=seed)
    n = len(test)
    floor_train = load_split(prepared, "train", limit=n, seed=seed + 1)
    say(f"real: {n} test and {len(floor_train)} train images from {prepared}")

    # Generated for FID/KID and attr_acc: the test subset's own attributes.
    requested = {name: values.copy() for name, values in test.attributes.items()}
    generated = _check_images(sample_fn(requested, seed), n, resolution, "fid set")
    say(f"generated {n} images for FID/KID")

    inception = InceptionFeatures(inception_weights) if inception_weights else None
    with torch_threads(threads):
        embed = inception or (lambda images: extract_features(classifier, images))
        f_test, f_gen, f_train = embed(test.images), embed(generated), embed(floor_train.images)
    fid, fid_floor = fid_from_features(f_gen, f_test), fid_from_features(f_train, f_test)
    kid, kid_std = kid_from_features(f_gen, f_test, subsets=kid_subsets, seed=seed)
    kid_floor, _ = kid_from_features(f_train, f_test, subsets=kid_subsets, seed=seed)
    predicted = predict(classifier, generated, threads=threads)
    attr_acc = {name: float(np.mean(predicted[name] == requested[name])) for name in vocab}
    classifier_acc = accuracy(classifier, test, threads=threads)
    say(f"fid {fid:.3f} (floor {fid_floor:.3f}), kid {kid:.5f}, attr_acc {attr_acc}")

    # CAS: balanced over the primary attribute, the others as they occur with it in train.
    train_table = read_manifest(prepared, "train")
    train_attributes = encode_attributes(train_table, vocab)
    rows = balanced_rows(train_attributes[primary], n, np.random.default_rng(seed + 2))
    cas_attributes = {name: values[rows] for name, values in train_attributes.items()}
    cas_generated = _check_images(sample_fn({k: v.copy() for k, v in cas_attributes.items()}, seed + 1),
                                  len(rows), resolution, "cas set")
    cas_predicted = predict(classifier, cas_generated, threads=threads)
    attr_acc_balanced = {name: float(np.mean(cas_predicted[name] == cas_attributes[name])) for name in vocab}
    real_images = _load_rows(prepared, train_table, rows, resolution)
    widths = classifier.widths
    say(f"training CAS classifiers on {len(rows)} generated / real images ({cas_epochs:g} epochs each)")
    cas_model = train_classifier(GanSplit(cas_generated, cas_attributes, vocab), epochs=cas_epochs, seed=seed,
                                 batch_size=cas_batch_size, threads=threads, widths=widths)
    cas_by_attr = accuracy(cas_model, test, threads=threads)
    real_model = train_classifier(GanSplit(real_images, cas_attributes, vocab), epochs=cas_epochs, seed=seed,
                                  batch_size=cas_batch_size, threads=threads, widths=widths)
    real_acc_by_attr = accuracy(real_model, test, threads=threads)
    say(f"cas {cas_by_attr}, real_acc {real_acc_by_attr}")

    return {
        "fid": fid, "kid": kid, "kid_std": kid_std, "fid_floor": fid_floor, "kid_floor": kid_floor,
        "cas": cas_by_attr[primary], "real_acc": real_acc_by_attr[primary],
        "cas_by_attr": cas_by_attr, "real_acc_by_attr": real_acc_by_attr,
        "attr_acc": attr_acc, "attr_acc_balanced": attr_acc_balanced, "classifier_acc": classifier_acc,
        "primary": primary, "n": n, "n_cas": int(len(rows)), "cas_epochs": cas_epochs,
        "cas_batch_size": cas_batch_size, "seed": seed,
        "features": inception.name if inception else f"classifier:{classifier_id or 'given'}",
        "classifier": classifier_id, "data": prepared, "seconds": round(time.time() - started, 1),
    }


def generator_sample_fn(generator, vocab: dict[str, list[str]], truncation: float | None = None) -> SampleFn:
    """Adapt a ProductGenerator (`.vocab`, `.generate_indices`) to a dataset's vocabulary: the
    dataset's value indices are translated to the generator's by value name. `truncation` is
    passed on (see prodray/generate.py)."""
    missing = {name: sorted(set(values) - set(generator.vocab.get(name, [])))
               for name, values in vocab.items() if set(values) - set(generator.vocab.get(name, []))}
    if missing:
        raise ValueError(f"generator {getattr(generator, 'model_id', '')} cannot produce attribute values "
                         f"of the dataset: {missing}")
    translate = {name: np.array([generator.vocab[name].index(v) for v in values], dtype=np.int64)
                 for name, values in vocab.items()}

    def sample(attributes: dict[str, np.ndarray], seed: int) -> np.ndarray:
        return generator.generate_indices(
            {name: translate[name][np.asarray(attributes[name], dtype=np.int64)] for name in vocab}, seed=seed,
            truncation=truncation)
    return sample
