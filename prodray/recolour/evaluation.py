"""Recolouring quality on held-out product photos: every image to each of a fixed list of target
colours, scored per method (a callable `(rgb, target_rgb, mask) -> rgb`) on the product's mask:
- de00: CIEDE2000 between the result's mean product colour and the target's reference;
- named_colour_acc: the nearest reference colour (CIEDE2000) of that mean is the one asked for;
- detail_ssim: SSIM of the luminance detail of source and result over the windows centred on the
  product's pixels, with 4 standard deviations of the source's detail as SSIM's peak (so the score
  does not depend on how much contrast the source has): texture, folds and prints kept. Detail is Y
  minus its Gaussian blur taken over the product's pixels only, and zero outside them: the
  silhouette against the background is kept by construction (the mask does not move), and its
  contrast must change with the colour, so it is not counted as detail;
- background_kept: share of the source's pure-white pixels outside the product still exactly 255;
- classifier_acc (with a `classify` callable, e.g. the shipped products classifier's baseColour
  head, see `colour_classifier`): the classifier names the colour asked for (named targets only);
and the colour scores again by source group (dark / light / chromatic, from the source's mean Lab).
Owns the protocol; methods and the product mask come in.
"""

import numpy as np
from scipy import ndimage

from prodray.metrics import ciede2000, rgb_to_y, srgb_to_lab, ssim
from prodray.recolour.colours import REFERENCE_HEX, nearest_colour_name, parse_colour
from prodray.recolour.segmentation import MIN_PRODUCT_PIXELS

# Named colours of the vocabulary that a shopper tells apart; the suite's fixed targets.
SUITE_COLOURS = ("Red", "Navy Blue", "Green", "Yellow", "Pink", "Black", "White", "Grey", "Brown", "Purple")
DARK_MAX_L, LIGHT_MIN_L, LIGHT_MAX_CHROMA = 35.0, 75.0, 15.0
DETAIL_SIGMA = 2.0


def source_group(lab_mean: np.ndarray) -> str:
    """dark (little lightness to shade with), light (near-white, little chroma) or chromatic."""
    if lab_mean[0] < DARK_MAX_L:
        return "dark"
    if lab_mean[0] > LIGHT_MIN_L and np.hypot(lab_mean[1], lab_mean[2]) < LIGHT_MAX_CHROMA:
        return "light"
    return "chromatic"


def detail(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Luminance detail inside the mask: Y minus its Gaussian blur (sigma 2 px) over the mask's pixels
    (normalised convolution), zero outside the mask."""
    inside = mask.astype(np.float64)
    blur = ndimage.gaussian_filter(y * inside, DETAIL_SIGMA, mode="constant") / np.maximum(
        ndimage.gaussian_filter(inside, DETAIL_SIGMA, mode="constant"), 1e-6)
    return (y - blur) * inside


def _detail_peak(source_detail: np.ndarray) -> float:
    return max(4.0 * float(source_detail.std()), 1.0)


def score_one(source: np.ndarray, result: np.ndarray, mask: np.ndarray, name: str, target: np.ndarray) -> dict:
    if result.shape != source.shape:
        raise AssertionError(f"result {result.shape} is not the source's shape {source.shape}")
    mean = srgb_to_lab(result[mask]).mean(axis=0)
    goal = srgb_to_lab(target[None])[0]
    rows, cols = np.nonzero(mask)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    inside = mask[box]
    source_detail, result_detail = detail(rgb_to_y(source[box]), inside), detail(rgb_to_y(result[box]), inside)
    small = min(source_detail.shape) < 11  # SSIM's window
    kept = 1.0 if small else ssim(source_detail, result_detail, peak=_detail_peak(source_detail[inside]), where=inside)
    white = (source == 255).all(axis=2) & ~mask
    return {"de00": float(ciede2000(mean, goal)),
            "named_colour_acc": float(nearest_colour_name(mean) == name),
            "detail_ssim": kept,
            "background_kept": float((result[white] == 255).all(axis=1).mean()) if white.any() else 1.0}


def colour_classifier(reference: str = "classifier-fashion-products"):
    """The shipped products classifier's baseColour head as `(H, W, 3) uint8 -> colour name`: the
    photo padded on white to a square and resized to the classifier's resolution, as it was trained."""
    from prodray.gan.classifier import load_classifier, predict
    from prodray.gan.data import pad_square_resize

    model, config = load_classifier(reference)
    names, resolution = config["attributes"]["baseColour"], int(config["resolution"])

    def classify(rgb: np.ndarray) -> str:
        index = predict(model, pad_square_resize(rgb, resolution)[None], threads=1)["baseColour"][0]
        return names[int(index)]
    return classify


def evaluate_recolour(images, methods: dict, product_mask, colours=SUITE_COLOURS, log=None, classify=None) -> dict:
    """`images`: (name, (H, W, 3) uint8, alpha or None) triples; `product_mask(rgb, alpha)` -> bool.
    -> {"images": N, "colours": [...], "<method>": {metric: mean, "by_source": {group: {...}}}}.
    A target that names the source's own colour group is still scored (a no-op recolour)."""
    targets = [parse_colour(colour) for colour in colours]
    sums = {method: {} for method in methods}
    count = 0
    for index, (name, rgb, alpha) in enumerate(images):
        mask = product_mask(rgb, alpha)
        if mask.sum() < MIN_PRODUCT_PIXELS:
            if log:
                log(f"{name}: no product found, skipped")
            continue
        count += 1
        group = source_group(srgb_to_lab(rgb[mask]).mean(axis=0))
        for method, recolour in methods.items():
            for colour_name, target in targets:
                result = recolour(rgb, target, mask)
                scores = score_one(rgb, result, mask, colour_name, target)
                if classify is not None and colour_name in REFERENCE_HEX:
                    scores["classifier_acc"] = float(classify(result) == colour_name)
                for key in (("all",), ("by_source", group)):
                    bucket = sums[method].setdefault(key, {})
                    for metric, value in scores.items():
                        if not np.isfinite(value):  # a product too thin for one SSIM window centre
                            continue
                        bucket[metric] = bucket.get(metric, 0.0) + value
                        bucket[f"n_{metric}"] = bucket.get(f"n_{metric}", 0) + 1
                    bucket["n"] = bucket.get("n", 0) + 1
        if log:
            log(f"{index + 1} {name} ({group})")
    out = {"images": count, "colours": [name for name, _ in targets]}
    for method, buckets in sums.items():
        summary = _means(buckets.get(("all",), {}))
        summary["by_source"] = {key[1]: {**_means(bucket, COLOUR_METRICS), "n": bucket["n"]}
                                for key, bucket in sorted(buckets.items()) if key[0] == "by_source"}
        out[method] = summary
    return out


COLOUR_METRICS = ("named_colour_acc", "de00", "classifier_acc")


def _means(bucket: dict, metrics=COLOUR_METRICS + ("detail_ssim", "background_kept")) -> dict:
    """Mean of each metric over the results that have it (classifier_acc: named targets, with a classifier)."""
    return {metric: round(bucket[metric] / bucket[f"n_{metric}"], 4) for metric in metrics if bucket.get(f"n_{metric}")}
