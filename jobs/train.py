"""Ray Job: train any model family with Ray Train (DDP) and export it. The config's `kind`
(enhancer, enhancer-adversarial, gan) picks the family.

    ray job submit --working-dir . -- python jobs/train.py --config prodray/configs/enhancer_demo.yaml [k=v ...]
    ray job submit --working-dir . -- python jobs/train.py --config prodray/configs/gan_fashion_mnist.yaml --dry-run

The GAN's data is a prepared dataset (`prodray gan prepare fashion-mnist|fashion-products --out DIR`).
"""

from prodray.cluster.jobs import run_main, train_job

if __name__ == "__main__":
    run_main(lambda: train_job(__doc__))
