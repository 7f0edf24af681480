"""How well the recolour product mask (recolour/segmentation.py: the near-white background connected
to the border) finds a product whose true outline is known: photos cut out with seeded region
shapes (blobs, rectangles, large shapes), put on pure white, saved as JPEG (as suppliers send
them), then segmented. Prints the mean IoU, precision and recall of the found mask against the
true one, and the share of images under an IoU of 0.9.

    .venv/bin/python scripts/recolour_mask_quality.py --data ../shared/data/grocery-store/val --limit 296
"""

import argparse

import numpy as np

from prodray.enhancer.evaluation import list_images
from prodray.gan.data import pad_square_resize
from prodray.io.codec import decode_image, encode_image
from prodray.recolour.segmentation import product_mask
from prodray.recolour.training import product_region

SIDE, CROP = 128, 96


def cut_out(rgb: np.ndarray, rng: np.random.Generator, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (the photo's centre inside a region, on white, through JPEG; the region)."""
    margin = (SIDE - CROP) // 2
    crop = pad_square_resize(rgb, SIDE)[margin:margin + CROP, margin:margin + CROP]
    region = product_region(CROP, rng, ("blobs", "rect", "large"))
    composite = np.where(region[..., None], crop, np.uint8(255))
    return decode_image(encode_image(composite, fmt="jpeg", quality=quality)).rgb, region


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=296)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the cut-outs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    scores = []
    for path in list_images(args.data)[:args.limit]:
        image, truth = cut_out(decode_image(path.read_bytes()).rgb, rng, args.quality)
        found = product_mask(image)
        overlap = (found & truth).sum()
        scores.append((overlap / max((found | truth).sum(), 1), overlap / max(found.sum(), 1),
                       overlap / max(truth.sum(), 1)))
    iou, precision, recall = np.array(scores).T
    print(f"{len(scores)} cut-outs (JPEG q{args.quality}): IoU {iou.mean():.3f}, precision {precision.mean():.3f}, "
          f"recall {recall.mean():.3f}; IoU under 0.9: {(iou < 0.9).mean():.1%}")


if __name__ == "__main__":
    main()
