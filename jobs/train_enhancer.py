"""Ray Job: train the enhancer with Ray Train (DDP) and export it.

    ray job submit --working-dir . -- python jobs/train_enhancer.py --config prodray/configs/enhancer_demo.yaml [k=v ...]
"""

from prodray.cluster.jobs import config_parser, connect_ray, run_main


def main() -> None:
    args = config_parser(__doc__).parse_args()
    from prodray.config import EnhancerTrainConfig, dump_config, load_config
    cfg = load_config(EnhancerTrainConfig, args.config, args.overrides).resolved()
    if args.dry_run:
        print(dump_config(cfg))
        return
    connect_ray()
    from prodray.enhancer.training import build_trainer, run_uri
    result = build_trainer(cfg).fit()
    print(f"training finished: {result.metrics}")
    print(f"export: {run_uri(cfg)}/export")


if __name__ == "__main__":
    run_main(main)
