"""Train, score, save and load the attribute classifier (prodray/gan/classifier_model.py).

Pure torch, no Ray: a seeded AdamW loop with light augmentation (flip, shift of up to 2 px) over
a GanSplit in memory, per-attribute accuracy, pooled features for FID/KID, and exports
(`classifier.safetensors` + `config.json`, model id `classifier-<sha>`) through checkpoint.py.
The shipped feature classifiers live in prodray/weights/classifier-<dataset>/.
"""

import contextlib
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from prodray.gan.classifier_model import AttributeClassifier, build_classifier, default_widths, to_input
from prodray.gan.data import GanSplit
from prodray.io.artifacts import SHIPPED_DIR, export_model, load_export

EXPORT_NAME = "classifier"


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with `threads` intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def classifier_config(vocab: dict[str, list[str]], resolution: int, widths=None, dropout: float = 0.2) -> dict:
    return {"arch": "attribute-classifier", "attributes": {k: list(v) for k, v in vocab.items()},
            "resolution": int(resolution), "widths": list(widths or default_widths(resolution)), "dropout": dropout}


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """(B, 3, R, R) -> same: random horizontal flip and a shift of up to `shift` px per image
    (edge pixels replicated, so black or white backgrounds stay as they are)."""
    batch, _, height, width = x.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if shift <= 0:
        return x
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (batch, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])


def train_classifier(split: GanSplit, epochs: float = 3.0, batch_size: int = 128, lr: float = 2e-3,
                     weight_decay: float = 5e-4, seed: int = 0, threads: int | None = 1, widths=None,
                     echo=None) -> AttributeClassifier:
    """A fresh classifier trained on `split` (all attributes at once, summed cross-entropy).

    Steps = ceil(epochs * N / batch_size), each epoch a new seeded permutation; linear warm-up
    then cosine decay. Same seed, data and threads -> the same weights."""
    if len(split) == 0:
        raise ValueError("cannot train a classifier on an empty split")
    resolution = split.images.shape[1]
    config = classifier_config(split.vocab, resolution, widths)
    generator = torch.Generator().manual_seed(seed)
    with torch_threads(threads), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_classifier(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        total_steps = max(1, math.ceil(epochs * len(split) / batch_size))
        warmup = min(100, total_steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
            (step + 1) / (warmup + 1) if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))))
        images = torch.from_numpy(split.images)
        labels = {name: torch.from_numpy(values) for name, values in split.attributes.items()}
        order, position, started, running = torch.randperm(len(split), generator=generator), 0, time.time(), 0.0
        for step in range(total_steps):
            if position + batch_size > len(split) and position > 0:
                order, position = torch.randperm(len(split), generator=generator), 0
            index = order[position:position + batch_size]
            position += batch_size
            x = augment(to_input(images[index]), generator)  # (B, 3, R, R) in [-1, 1]
            logits = model(x)
            loss = sum(F.cross_entropy(logits[name], labels[name][index]) for name in model.attribute_names)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            if echo and (step + 1) % 100 == 0:
                seen = (step + 1) * batch_size
                echo(f"  step {step + 1}/{total_steps} loss {running:.3f} "
                     f"({seen / (time.time() - started):.0f} img/s)")
    return model.eval()


@torch.inference_mode()
def _batched(model: AttributeClassifier, images: np.ndarray, fn, batch_size: int, threads: int | None):
    model.eval()
    device = next(model.parameters()).device
    with torch_threads(threads):
        return [fn(to_input(images[i:i + batch_size]).to(device)) for i in range(0, len(images), batch_size)]


def predict(model: AttributeClassifier, images: np.ndarray, batch_size: int = 500,
            threads: int | None = None) -> dict[str, np.ndarray]:
    """uint8 (N, R, R, 3) -> {attribute: (N,) int64 predicted index}."""
    parts = _batched(model, images, lambda x: {k: v.argmax(1).cpu() for k, v in model(x).items()},
                     batch_size, threads)
    return {name: torch.cat([p[name] for p in parts]).numpy().astype(np.int64) for name in model.attribute_names}


def extract_features(model: AttributeClassifier, images: np.ndarray, batch_size: int = 500,
                     threads: int | None = None) -> np.ndarray:
    """uint8 (N, R, R, 3) -> float64 (N, D) pooled penultimate features."""
    parts = _batched(model, images, lambda x: model.features(x).cpu(), batch_size, threads)
    return torch.cat(parts).double().numpy()


def accuracy(model: AttributeClassifier, split: GanSplit, threads: int | None = None) -> dict[str, float]:
    """Share of `split` whose predicted value equals the label, per attribute."""
    predicted = predict(model, split.images, threads=threads)
    return {name: float(np.mean(predicted[name] == split.attributes[name])) for name in model.attribute_names}


def save_classifier(out: str, model: AttributeClassifier, vocab: dict, **extra) -> str:
    """Export to `<out>/classifier.safetensors` + `<out>/config.json`; returns the model id."""
    config = classifier_config(vocab, model.resolution, model.widths, model.dropout.p)
    return export_model(out, EXPORT_NAME, model, {**config, **extra})


def load_classifier(reference: str, device: str = "cpu") -> tuple[AttributeClassifier, dict]:
    """A shipped name (e.g. 'classifier-fashion-mnist'), an export folder or s3:// URI -> (model, config)."""
    model, config = load_export(reference, build_classifier)
    if config.get("arch") != "attribute-classifier":
        raise ValueError(f"{reference} is not an attribute classifier export (arch {config.get('arch')!r})")
    return model.to(device).eval(), config


def shipped_classifier_for(vocab: dict[str, list[str]], resolution: int) -> str:
    """The shipped classifier whose attributes and resolution match a prepared dataset's."""
    candidates = sorted(SHIPPED_DIR.glob("classifier-*/config.json")) if SHIPPED_DIR.is_dir() else []
    for path in candidates:
        config = json.loads(path.read_text())
        if config.get("attributes") == vocab and int(config.get("resolution", 0)) == int(resolution):
            return path.parent.name
    raise FileNotFoundError(f"no shipped classifier matches attributes {list(vocab)} at {resolution} px "
                            f"(have {[p.parent.name for p in candidates]}); train one with "
                            f"`prodray gan train-classifier` and pass --classifier")


def train_and_export(data: str, out: str, epochs: float = 3.0, limit: int | None = None, seed: int = 0,
                     threads: int | None = 1, batch_size: int = 128, widths=None, command: str | None = None,
                     echo=print) -> dict:
    """Train on the `train` split of a prepared dataset, score on `test`, export; returns the config."""
    from prodray.gan.data import load_split, read_vocab
    meta = read_vocab(data)
    started = time.time()
    train = load_split(data, "train", limit=limit, seed=seed)
    test = load_split(data, "test")
    echo(f"classifier on {data}: {len(train)} train / {len(test)} test images at {meta['resolution']} px, "
         f"attributes {', '.join(f'{k} ({len(v)})' for k, v in train.vocab.items())}")
    loaded = time.time()
    model = train_classifier(train, epochs=epochs, batch_size=batch_size, seed=seed, threads=threads, widths=widths,
                             echo=echo)
    trained = time.time()
    test_accuracy = accuracy(model, test, threads=threads)
    echo("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in test_accuracy.items()))
    extra = {"test_accuracy": test_accuracy,
             "data": {"prepared": data, "source": meta.get("source"), "train_images": len(train),
                      "test_images": len(test)},
             "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed, "threads": threads, "limit": limit,
                       "train_seconds": round(trained - loaded, 1), "load_seconds": round(loaded - started, 1)},
             "command": command}
    model_id = save_classifier(out, model, train.vocab, **extra)
    echo(f"exported {model_id} to {out}")
    return {**extra, "model_id": model_id, "out": out}
