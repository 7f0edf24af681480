"""Marketplace rules for bulk outputs: a minimum longest side, padding to a pure-white square, a
byte budget met by lowering JPEG/WebP quality. Pure (numpy + codec); the bulk job records a
ConstraintFailed as `rejected`. The padding itself is io/images.pad_to_square.
"""

import numpy as np

from prodray.config import BulkConfig
from prodray.io.codec import encode_image
from prodray.io.images import pad_to_square

MIN_FIT_QUALITY = 30  # the lowest quality tried before an output counts as too big
QUALITY_STEP = 10


class ConstraintFailed(ValueError):
    """The enhanced image cannot meet a marketplace constraint; recorded as `rejected`."""


def encode_for_marketplace(rgb: np.ndarray, alpha: np.ndarray | None, config: BulkConfig, icc_profile=None,
                           dpi=None) -> tuple[bytes, str, tuple[int, int]]:
    """Apply the constraints in `config` and encode. -> (bytes, note for the manifest's reason, (H, W) out).

    Raises ConstraintFailed when the image cannot meet them."""
    longest = max(rgb.shape[:2])
    if config.min_longest_side and longest < config.min_longest_side:
        raise ConstraintFailed(f"too_small: longest side {longest} px < {config.min_longest_side} px after "
                               f"x{config.scale}")
    if config.pad_square:
        rgb, alpha = pad_to_square(rgb, alpha)
    quality = config.quality
    while True:
        data = encode_image(rgb, alpha=alpha, fmt=config.format, quality=quality, icc_profile=icc_profile, dpi=dpi)
        if not config.max_output_bytes or len(data) <= config.max_output_bytes:
            lowered = quality != config.quality
            note = f"quality lowered to {quality} to fit {config.max_output_bytes} bytes" if lowered else ""
            return data, note, rgb.shape[:2]
        if config.format == "png" or quality <= MIN_FIT_QUALITY:
            raise ConstraintFailed(f"too_many_output_bytes: {len(data)} > {config.max_output_bytes} "
                                   f"({config.format}, quality {quality})")
        quality = max(MIN_FIT_QUALITY, quality - QUALITY_STEP)
