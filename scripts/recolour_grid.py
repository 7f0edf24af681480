"""The recolour model card's picture grid: per held-out photo two rows, the model's variants and the
baseline's, each row starting with the source.

    .venv/bin/python scripts/recolour_grid.py --data /work/data/fashion-test --model recolour \\
        --out docs/recolour-grid.jpg [--images 0,3,5,9] [--colours Red,Navy Blue,Green,Yellow,Black,White]
"""

from card_grid import grid_parser, indices, write_grid

from prodray.enhancer.evaluation import list_images
from prodray.gan.data import pad_square_resize
from prodray.io.codec import decode_image
from prodray.recolour.baseline import lab_shift
from prodray.recolour.colours import parse_colour
from prodray.recolour.inference import load_recolourer
from prodray.recolour.segmentation import product_mask


def main() -> None:
    parser = grid_parser(__doc__, model="recolour", images="0,3,5,9")
    parser.add_argument("--colours", default="Red,Navy Blue,Green,Yellow,Black,White")
    parser.add_argument("--tile", type=int, default=160, help="each tile padded on white to this square side")
    args = parser.parse_args()
    paths, model = list_images(args.data), load_recolourer(args.model)
    targets = [parse_colour(colour)[1] for colour in args.colours.split(",")]
    rows = []
    for index in indices(args.images):
        decoded = decode_image(paths[index].read_bytes())
        mask = product_mask(decoded.rgb, decoded.alpha)
        for method in (model.recolour, lab_shift):
            tiles = [decoded.rgb] + [method(decoded.rgb, target, mask) for target in targets]
            rows.append([pad_square_resize(tile, args.tile) for tile in tiles])
    write_grid(rows, args.out, quality=90)
    print(f"wrote {args.out}: per photo, the model's row then the baseline's; columns: source, {args.colours}")


if __name__ == "__main__":
    main()
