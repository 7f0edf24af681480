"""The run folder every runner writes (local path or s3:// prefix): config.json, stats.jsonl and
samples/. Checkpoints are the runner's: Ray Train's own storage, or local/runner.py's checkpoint/."""

import json

import numpy as np

from prodray.config import dump_config
from prodray.io import storage
from prodray.io.codec import encode_image


class RunFiles:
    """Rank-0 writer for the run folder."""

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


def run_uri(cfg) -> str:
    return storage.join(cfg.run.storage_path, cfg.run.name)
