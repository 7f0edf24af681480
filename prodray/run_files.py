"""The run folder and the end of a tick, shared by every Ray Train loop (enhancer, adversarial
fine-tuning, GAN): config.json, stats.jsonl, samples/, checkpoints handed to Ray Train, and the
fault-injection hook the recovery tests use."""

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from prodray.io import storage
from prodray.io.codec import encode_image
from prodray.config import dump_config


class RunFiles:
    """Rank-0 writer for the run folder: config.json, stats.jsonl, samples/ (local or s3://)."""

    def __init__(self, uri: str):
        self.uri = uri
        stats_uri = storage.join(uri, "stats.jsonl")
        self.stats_lines = storage.get_bytes(stats_uri).decode().splitlines() if storage.exists(stats_uri) else []

    def write_config(self, cfg) -> None:
        storage.put_bytes(storage.join(self.uri, "config.json"), dump_config(cfg).encode())

    def append_stats(self, record: dict) -> None:
        # S3 has no append: rewrite the (small) file whole, atomically.
        self.stats_lines.append(json.dumps(record))
        storage.put_bytes(storage.join(self.uri, "stats.jsonl"), ("\n".join(self.stats_lines) + "\n").encode())

    def save_sample(self, name: str, grid: np.ndarray) -> str:
        uri = storage.join(self.uri, "samples", name)
        storage.put_bytes(uri, encode_image(grid, fmt="png"))
        return uri


def format_metrics(metrics: dict) -> str:
    """The tick's log line: key=value, floats to 4 significant digits, wall time left out."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "time")


def end_tick(metrics: dict, files: RunFiles | None, checkpoint_due: bool, write_checkpoint, log) -> None:
    """Every rank calls this at the end of a tick. Rank 0 (the one holding `files`) appends the
    metrics to stats.jsonl, logs them and, when due, calls `write_checkpoint(folder)`; then every
    rank reports, as Ray Train requires all ranks to report together."""
    import ray.train
    from ray.train import Checkpoint

    checkpoint_dir = None
    if files:
        metrics["time"] = time.time()
        files.append_stats(metrics)
        log(format_metrics(metrics))
        if checkpoint_due:
            checkpoint_dir = tempfile.mkdtemp(prefix="prodray-ckpt-")
            write_checkpoint(Path(checkpoint_dir))
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def maybe_crash_for_test(run_name: str, images_seen: int) -> None:
    """Fault injection for the recovery test: PRODRAY_TEST_CRASH="<run name>:<images>" kills this
    worker process once (hard, like a lost node) when it passes that many images."""
    spec = os.environ.get("PRODRAY_TEST_CRASH", "")
    if not spec.startswith(f"{run_name}:"):
        return
    marker = Path(tempfile.gettempdir()) / f"prodray-crashed-{run_name}"
    if images_seen >= int(spec.rsplit(":", 1)[1]) and not marker.exists():
        marker.touch()
        os._exit(1)
