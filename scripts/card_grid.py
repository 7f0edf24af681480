"""What the model cards' picture-grid scripts share: their common arguments and writing the grid."""

import argparse
from pathlib import Path

from prodray.io.codec import encode_image
from prodray.io.images import image_grid


def grid_parser(doc: str, model: str, images: str) -> argparse.ArgumentParser:
    """--data, --model, --out, --images; each script adds what its rows are made of."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=model)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", default=images, help="indices into the sorted image list (as the model's eval)")
    return parser


def indices(text: str) -> list[int]:
    return [int(index) for index in text.split(",")]


def write_grid(rows: list[list], out: str, quality: int) -> None:
    Path(out).write_bytes(encode_image(image_grid(rows), fmt="jpeg", quality=quality))
