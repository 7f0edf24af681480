"""Ray Job: jobs/train.py for enhancer configs written without a `kind` (kept for existing commands).

    ray job submit --working-dir . -- python jobs/train_enhancer.py \\
        --config prodray/configs/enhancer_demo.yaml [k=v ...]
"""

from prodray.cluster.jobs import run_main, train_job

if __name__ == "__main__":
    run_main(lambda: train_job(__doc__, default_kind="enhancer"))
