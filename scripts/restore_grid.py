"""The restoration model card's picture grid: per row, one held-out photo under one damage of the
catalog suite, downscaled by the model's scale as the eval does: the damaged input (enlarged by
pixel repetition), bicubic, the clean enhancer (strength 0), the restoration model at `auto`, the original.
Tiles are crops at full resolution, so JPEG blocks and noise stay visible.

    .venv/bin/python scripts/restore_grid.py --data ../shared/data/grocery-store/val --model restore-x2 \
        --out docs/restore-grid.jpg [--images 3,11,25,60] [--damages jpeg30,jpeg50,noise10,chain]
"""

import numpy as np
from card_grid import grid_parser, indices, write_grid

from prodray.enhancer.evaluation import STANDARD_SUITE, bicubic_upscale, list_images
from prodray.enhancer.inference import Enhancer
from prodray.io.codec import decode_image
from prodray.io.images import imresize_uint8


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top:top + size, left:left + size]


def main() -> None:
    parser = grid_parser(__doc__, model="restore-x2", images="3,11,25,60")
    parser.add_argument("--damages", default="jpeg30,jpeg50,noise10,chain", help="one suite damage per row")
    parser.add_argument("--crop", type=int, default=192, help="tile size in output pixels")
    args = parser.parse_args()
    paths, restore = list_images(args.data), Enhancer.load(args.model, strength="auto")
    if not restore.restores:
        parser.error(f"{args.model} has no clean partner: not a restoration model")
    scale, numbers = restore.scale, {name: number for number, name in enumerate(STANDARD_SUITE)}
    rows = []
    for index, damage in zip(indices(args.images), args.damages.split(",")):
        original = decode_image(paths[index].read_bytes()).rgb
        height, width = original.shape[0] - original.shape[0] % scale, original.shape[1] - original.shape[1] % scale
        original = original[:height, :width]
        damaged, quality = STANDARD_SUITE[damage](imresize_uint8(original, 1.0 / scale),
                                                  np.random.default_rng([0, index, numbers[damage]]))
        enlarged = np.repeat(np.repeat(damaged, scale, axis=0), scale, axis=1)
        tiles = [enlarged, bicubic_upscale(damaged, scale), restore.enhance_many([damaged], [0.0])[0],
                 restore.enhance(damaged, jpeg_quality=quality).rgb, original]
        rows.append([centre_crop(tile, args.crop) for tile in tiles])
        print(f"{paths[index].name}: {damage}, file quality {quality}, strength "
              f"{restore.strength_for(damaged, quality)}")
    write_grid(rows, args.out, quality=92)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
