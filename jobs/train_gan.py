"""Ray Job: jobs/train.py for GAN configs written without a `kind` (kept for existing commands).

    ray job submit --working-dir . -- python jobs/train_gan.py --config prodray/configs/gan_fashion_mnist.yaml [k=v ...]
"""

from prodray.cluster.jobs import run_main, train_job

if __name__ == "__main__":
    run_main(lambda: train_job(__doc__, default_kind="gan"))
