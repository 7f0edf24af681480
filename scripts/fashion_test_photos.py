"""Copy the held-out (test split) photos of Fashion Product Images (small) out of its archive into a
folder, as they are stored (60x80 JPEG on white), for `prodray eval recolour --data` and for the
recolour model's validation. The split is the one `prodray gan prepare fashion-products` uses.

    python scripts/fashion_test_photos.py /work/data/fashion-test --limit 400
"""

import argparse
import tarfile
from pathlib import Path

from prodray.gan.data import FASHION_PRODUCTS_DIR, is_held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--source", default=str(FASHION_PRODUCTS_DIR))
    parser.add_argument("--limit", type=int, default=400, help="the first N held-out photos in the archive's order")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archive = next(iter(sorted(Path(args.source).glob("*.tar.gz"))))
    written = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = Path(member.name)
            if member.isfile() and name.suffix == ".jpg" and is_held_out(name.stem):
                (out / name.name).write_bytes(tar.extractfile(member).read())
                written += 1
                if written >= args.limit:
                    break
    print(f"{written} held-out photos -> {out}")


if __name__ == "__main__":
    main()
