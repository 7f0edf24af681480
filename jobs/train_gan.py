"""Ray Job: train the conditional product GAN with Ray Train (DDP) and export the generator.

    ray job submit --working-dir . -- python jobs/train_gan.py --config prodray/configs/gan_fashion_mnist.yaml [k=v ...]

The data is a prepared dataset (`prodray gan prepare fashion-mnist|fashion-products --out DIR`).
"""

from prodray.cluster.jobs import config_parser, connect_ray, run_main


def main() -> None:
    args = config_parser(__doc__).parse_args()
    from prodray.config import GanTrainConfig, dump_config, load_config
    cfg = load_config(GanTrainConfig, args.config, args.overrides).resolved()
    if args.dry_run:
        print(dump_config(cfg))
        return
    connect_ray()
    from prodray.cluster.gan_trainer import build_trainer
    result = build_trainer(cfg).fit()  # checks data.attributes against the vocabulary first
    print(f"training finished: {result.metrics}")
    print(f"export: {cfg.run.storage_path}/{cfg.run.name}/export")


if __name__ == "__main__":
    run_main(main)
