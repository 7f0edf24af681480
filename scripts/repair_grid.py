"""The repair model card's picture grid: per row, one held-out photo under one suite mask:
the damaged input (hole in magenta), OpenCV Telea, the model, the original.

    .venv/bin/python scripts/repair_grid.py --data ../shared/data/grocery-store/val --model repair \
        --out docs/repair-grid.jpg [--images 0,7,21,40] [--kinds thick,large,text,narrow]
"""

import numpy as np
from card_grid import grid_parser, indices, write_grid

from prodray.enhancer.evaluation import list_images
from prodray.io.codec import decode_image
from prodray.io.images import imresize_uint8
from prodray.repair.evaluation import opencv_inpaint, suite_mask
from prodray.repair.inference import Repairer
from prodray.repair.training import show_mask


def main() -> None:
    parser = grid_parser(__doc__, model="repair", images="0,7,21,40")
    parser.add_argument("--kinds", default="thick,large,text,narrow", help="one suite mask kind per row")
    parser.add_argument("--scale", type=float, default=0.5, help="shrink each tile for the card")
    args = parser.parse_args()
    paths, repairer, telea = list_images(args.data), Repairer.load(args.model), opencv_inpaint("INPAINT_TELEA")
    rows = []
    for index, kind in zip(indices(args.images), args.kinds.split(",")):
        original = decode_image(paths[index].read_bytes()).rgb[:348, :348]
        mask = suite_mask(kind, index, *decode_image(paths[index].read_bytes()).rgb.shape[:2])[:348, :348]
        damaged = np.where(mask[..., None], np.uint8(0), original)
        tiles = [show_mask(original, mask), telea(damaged, mask), repairer.repair(damaged, mask), original]
        rows.append([imresize_uint8(tile, args.scale) for tile in tiles])
    write_grid(rows, args.out, quality=88)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
