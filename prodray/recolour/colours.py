"""Target colours for recolouring: the products vocabulary's colour names with one reference sRGB
value each, any `#rrggbb`, and the nearest named colour of a Lab value. Pure numpy; owns colour
naming, not images or masks (sRGB <-> Lab is prodray/metrics.py's, imported where it is needed, so
that the HTTP ingress parses colours without importing torch).
"""

import numpy as np

# One reference per baseColour of the products vocabulary (prodray/weights/gan-fashion-products),
# "other" left out: a catalogue swatch of each, not a measured mean of the photos.
REFERENCE_HEX = {
    "Black": "#1c1c1e", "White": "#f4f4f2", "Blue": "#2f6fd0", "Brown": "#6b4226", "Grey": "#8a8a8c",
    "Red": "#c8102e", "Green": "#2e8b57", "Pink": "#f4a7b9", "Navy Blue": "#1f2a4d", "Purple": "#6a3d9a",
    "Silver": "#c0c0c4", "Yellow": "#f2c500", "Beige": "#d9c3a0", "Gold": "#c9a227", "Maroon": "#7b1e2b",
}


# Short names people type for a vocabulary colour (its own names match in any case).
ALIASES = {"navy": "Navy Blue", "gray": "Grey"}


def hex_to_rgb(text: str) -> np.ndarray:
    digits = text.strip().lstrip("#")
    if len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"a hex colour is #rrggbb, got {text!r}")
    return np.array([int(digits[i:i + 2], 16) for i in (0, 2, 4)], np.uint8)


def parse_colour(text: str) -> tuple[str, np.ndarray]:
    """A colour name of the vocabulary or an alias (any case) or `#rrggbb` -> (name or the hex,
    (3,) uint8 sRGB)."""
    wanted = ALIASES.get(text.strip().lower(), text.strip()).lower()
    for name, value in REFERENCE_HEX.items():
        if wanted == name.lower():
            return name, hex_to_rgb(value)
    if text.strip().startswith("#"):
        return text.strip().lower(), hex_to_rgb(text)
    raise ValueError(f"unknown colour {text!r}: use #rrggbb or one of {', '.join(REFERENCE_HEX)}")


def reference_lab() -> tuple[list[str], np.ndarray]:
    """(names, (K, 3) Lab) of the vocabulary's reference colours."""
    from prodray.metrics import srgb_to_lab

    names = list(REFERENCE_HEX)
    return names, srgb_to_lab(np.stack([hex_to_rgb(REFERENCE_HEX[n]) for n in names]))


def nearest_colour_name(lab: np.ndarray) -> str:
    """The vocabulary name whose reference is nearest to one (3,) Lab value (CIEDE2000)."""
    from prodray.metrics import ciede2000

    names, references = reference_lab()
    return names[int(np.argmin(ciede2000(np.broadcast_to(lab, references.shape), references)))]
