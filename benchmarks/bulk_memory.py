"""Bulk job memory against catalog size: peak RSS of the driver, and of the driver plus every Ray
process, while `prodray.cluster.bulk.run_bulk` processes catalogs of increasing size in one Ray instance.

Memory, not speed, is the question here, so the images are small (64-96 px JPEGs) and the model a
fresh 4-channel, 1-block rpsnet: the per-image work is tiny and a 10,000-image catalog takes
minutes on 2 cores. Listing, the done-key filter, Ray Data's blocks, the actor pool and the
manifest writer run exactly as in a real job. Starts its own SeaweedFS on free loopback ports.

    .venv/bin/python benchmarks/bulk_memory.py [--sizes 1000,10000]
"""

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bulk_throughput import PeakRss, start_s3

from prodray.io import storage
from prodray.local import stack as local


def small_jpeg(rng: np.random.Generator) -> bytes:
    from PIL import Image

    height, width = (int(v) for v in rng.integers(64, 97, 2))
    image = np.full((height, width, 3), 255, np.uint8)
    top, left = int(rng.integers(0, height // 3)), int(rng.integers(0, width // 3))
    image[top:top + height // 2, left:left + width // 2] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def upload(prefix: str, count: int, seed: int, chunk: int = 256) -> None:
    """Generate and PUT `count` JPEGs in 50 folders, `chunk` at a time: this runs in the driver's
    process just before a measurement, and a whole catalog held at once would raise its RSS
    (the allocator keeps freed memory) in proportion to the catalog size."""
    rng = np.random.default_rng(seed)
    with ThreadPoolExecutor(16) as pool:
        for start in range(0, count, chunk):
            payloads = [(f"{prefix}/{i % 50:02d}/item-{i:06d}.jpg", small_jpeg(rng))
                        for i in range(start, min(count, start + chunk))]
            list(pool.map(lambda item: storage.put_bytes(*item), payloads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="catalog sizes, run in this order")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    import ray

    from prodray.cluster.bulk import run_bulk
    from prodray.config import BulkConfig
    from prodray.enhancer.model import build_model
    from prodray.io.artifacts import export_model

    root = Path(tempfile.mkdtemp(prefix="bulk-memory-"))
    weed = start_s3(root)
    rows = []
    try:
        model = "s3://bench/model"
        export_model(model, "enhancer", build_model("rpsnet", scale=2, channels=4, blocks=1),
                     {"arch": "rpsnet", "scale": 2, "channels": 4, "blocks": 1, "kind": "enhancer"})
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        try:
            for index, size in enumerate(sizes):
                started = time.perf_counter()
                upload(f"s3://bench/catalog-{size}", size, seed=index)
                upload_s = time.perf_counter() - started
                options = BulkConfig(input=f"s3://bench/catalog-{size}", output=f"s3://bench/out-{size}",
                                     model=model, scale=2, format="jpeg", quality=90, actor_cpus=1.0,
                                     progress_every_s=1e9)
                with PeakRss() as memory:
                    summary = run_bulk(options, echo=lambda line: None)
                assert summary["counts"] == {"ok": size}, summary["counts"]
                rows.append((size, memory.driver_at_start, summary["wall_s"], summary["images_per_s"], memory.driver,
                             memory.tree))
                print(f"{size} images: uploaded in {upload_s:.0f}s, job {summary['wall_s']:.0f}s "
                      f"({summary['images_per_s']:.1f} images/s), driver RSS {memory.driver_at_start:.0f} MiB at "
                      f"the start, peak {memory.driver:.0f} MiB; driver + Ray processes {memory.tree:.0f} MiB",
                      flush=True)
        finally:
            ray.shutdown()
    finally:
        local.stop_group(weed.pid, grace_s=3.0)

    print(f"\n{'images':>8}{'job s':>8}{'images/s':>10}{'driver at start':>17}{'driver peak':>13}"
          f"{'tree peak':>11}  (MiB)")
    for size, start, wall, rate, driver, tree in rows:
        print(f"{size:>8}{wall:>8.0f}{rate:>10.1f}{start:>17.0f}{driver:>13.0f}{tree:>11.0f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\n{last[0] / first[0]:.0f}x the images: driver peak x{last[4] / first[4]:.2f}, "
              f"driver + Ray processes x{last[5] / first[5]:.2f}")
    print(f"nproc {os.cpu_count()}, load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
