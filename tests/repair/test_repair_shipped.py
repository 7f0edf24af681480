"""The shipped repair model on real photos it never trained on (scikit-image's, CC0), under the
eval's own seeded mask suite: it beats OpenCV's Telea and the push-pull blur fill in masked PSNR on
every mask kind, and leaves every pixel outside the mask as it was (the eval checks that)."""

import numpy as np
import pytest

from prodray.io.codec import encode_image
from prodray.io.images import imresize_uint8
from prodray.repair.evaluation import blur_fill, evaluate_repair, opencv_inpaint
from prodray.repair.inference import Repairer

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
MARGIN_DB = 0.3


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        image = getattr(skimage_data, name)()
        image = np.ascontiguousarray(imresize_uint8(image, 348 / max(image.shape[:2])))  # GroceryStore's size
        path = folder / f"{name}.png"
        path.write_bytes(encode_image(image, fmt="png"))
        paths.append(path)
    return paths


def test_shipped_repair_beats_telea_and_the_blur_fill_on_every_mask_kind(photo_paths):
    repairer = Repairer.load("repair", precision="fp32")
    scores = evaluate_repair(photo_paths, {"model": repairer.repair, "telea": opencv_inpaint("INPAINT_TELEA"),
                                           "blur": blur_fill}, seed=0)
    for kind in scores["masks"]:
        model = scores["model"][kind]["psnr_masked"]
        for baseline in ("telea", "blur"):
            assert model > scores[baseline][kind]["psnr_masked"] + MARGIN_DB, (kind, baseline, scores)
