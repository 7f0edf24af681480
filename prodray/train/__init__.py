"""Training: pure-torch pieces (loop.py; gan_core.py, the GAN's step; gan_local.py, that step in one
process without Ray) and the Ray Train shells (enhancer.py, finetune.py, gan.py)."""
