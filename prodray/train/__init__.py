"""Training: pure-torch loop pieces (loop.py) and the Ray Train shells (enhancer.py, gan.py)."""
