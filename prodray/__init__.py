"""prodray: product-image generation and enhancement at catalog scale on Ray.

The package is a functional core (models, losses, degradations, codec, storage, metrics)
plus a thin Ray shell (train/, bulk, serve, jobs/). Importing it does not import Ray.
"""

__version__ = "0.1.0"
