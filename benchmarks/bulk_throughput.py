"""Bulk catalog throughput: the Ray Data pipeline (prodray.cluster.bulk.run_bulk) against (a) the plain
sequential loop a user would write and (b) the compute bound, side by side in one run.

Starts its own SeaweedFS on free loopback ports, generates a catalog of JPEGs (256-512 px a side,
product-like: an object on white), exports one enhancer, and measures, all with the same model
and the same torch threads:
  pipeline     run_bulk end to end (listing, Ray Data start, actor start-up, fetch/decode tasks,
               enhance + encode + create-only PUT in the actor pool, manifest, _SUCCESS);
  plain loop   for each key: get -> decode -> enhance -> encode -> put, one after another;
  compute      Enhancer.enhance_many (tiling + forward) on pre-decoded batches, nothing else.
It also samples peak RSS (driver, and driver + all its descendant processes: Ray's raylet, GCS
and workers) during the pipeline at two catalog sizes (images/3 first, then images).

Threads: the pipeline runs `--actors` enhancer actors with `--threads` torch threads each (Ray
sets OMP_NUM_THREADS from the actor's CPUs; where actors x threads would take every CPU, each
actor reserves a fraction so Ray Data's read and decode tasks can run, see actor_cpus); the plain loop and
the compute bound use actors x threads torch threads. Ray gets all `nproc` CPUs.

    .venv/bin/python benchmarks/bulk_throughput.py [--images 150] [--channels 16] [--blocks 2] [--model REF]
"""

import argparse
import io
import os
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from prodray.io import storage
from prodray.local import stack as local

# ---------------------------------------------------------------- the embedded S3

def free_seaweed_ports() -> local.Ports:
    """Four free ports whose port+10000 (SeaweedFS's gRPC listener) is free too."""
    chosen: list[int] = []
    while len(chosen) < 4:
        port = 20000 + secrets.randbelow(20000)
        if port not in chosen and local.port_free(port) and local.port_free(port + 10000):
            chosen.append(port)
    s3, master, volume, filer = chosen
    return local.Ports(s3=s3, master=master, volume=volume, filer=filer)


def start_s3(root: Path):
    ports = free_seaweed_ports()
    access_key, secret_key = "bench" + secrets.token_hex(4), secrets.token_hex(20)
    proc = local.start_seaweedfs(root / "data", ports, access_key, secret_key, root / "weed.log")
    endpoint = f"http://{local.HOST}:{ports.s3}"
    local.wait_for_s3(endpoint, access_key, secret_key, timeout_s=120, process=proc)
    # Set before ray.init so the Ray workers inherit them.
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key,
                      AWS_REGION="us-east-1")
    local.create_bucket(endpoint, access_key, secret_key, "bench")
    return proc


# ---------------------------------------------------------------- catalog

def product_jpeg(rng: np.random.Generator) -> bytes:
    """A JPEG of 256-512 px a side: a textured coloured object on a pure white background."""
    from PIL import Image

    height, width = (int(v) for v in rng.integers(256, 513, 2))
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    ry, rx = height * rng.uniform(0.2, 0.4), width * rng.uniform(0.2, 0.4)
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    colour = rng.integers(30, 220, 3)
    texture = rng.normal(0, 12, (height, width, 1)) + 20 * np.sin(x / rng.uniform(3, 12))[..., None]
    image = np.full((height, width, 3), 255.0)
    image[inside] = np.clip(colour + texture, 0, 255)[inside]
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def upload_catalog(prefix: str, count: int, seed: int = 0) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(seed)
    items = {f"{prefix}/item-{i:06d}.jpg": product_jpeg(rng) for i in range(count)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: storage.put_bytes(*kv), items.items()))
    return sorted(items)


# ---------------------------------------------------------------- memory

def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class PeakRss:
    """Samples RSS (MiB) of this process and of it plus all its descendants every `every_s`;
    `driver_at_start` is this process's RSS when sampling began (what it held before the job)."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.driver, self.tree = every_s, 0.0, 0.0
        self.driver_at_start = _rss_kib(os.getpid()) / 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            driver = _rss_kib(me)
            tree = driver + sum(_rss_kib(pid) for pid in _descendants(me))
            self.driver, self.tree = max(self.driver, driver / 1024), max(self.tree, tree / 1024)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the three measurements

def run_pipeline(source: str, output: str, model: str, args) -> tuple[float, float, PeakRss]:
    from prodray.cluster.bulk import run_bulk
    from prodray.config import BulkConfig

    options = BulkConfig(input=source, output=output, model=model, scale=2, format="jpeg", quality=90,
                         batch_size=args.batch_size, actors=args.actors, actor_cpus=actor_cpus(args),
                         progress_every_s=1e9)
    with PeakRss() as memory:
        started = time.perf_counter()
        summary = run_bulk(options, echo=lambda line: None)
        wall = time.perf_counter() - started
    assert summary["counts"] == {"ok": summary["processed"]}, summary["counts"]
    return summary["processed"] / wall, wall, memory


def run_plain_loop(keys: list[str], source_root: str, output: str, model: str, threads: int) -> tuple[float, float]:
    import torch

    from prodray.enhancer.inference import Enhancer
    from prodray.io.codec import decode_image, encode_image

    torch.set_num_threads(threads)
    enhancer = Enhancer.load(model)
    started = time.perf_counter()
    for key in keys:
        decoded = decode_image(storage.get_bytes(key))
        result = enhancer.enhance_many([decoded.rgb])[0]
        data = encode_image(result, fmt="jpeg", quality=90, icc_profile=decoded.icc_profile, dpi=decoded.dpi)
        storage.put_if_absent(storage.join(output, key[len(source_root):]), data)
    wall = time.perf_counter() - started
    return len(keys) / wall, wall


def run_compute_bound(keys: list[str], model: str, threads: int, batch_size: int) -> tuple[float, float]:
    import torch

    from prodray.enhancer.inference import Enhancer
    from prodray.io.codec import decode_image

    torch.set_num_threads(threads)
    enhancer = Enhancer.load(model, max_batch=batch_size)
    images = [decode_image(storage.get_bytes(key)).rgb for key in keys]  # not timed
    enhancer.enhance_many(images[:1])  # warm-up, not timed
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        enhancer.enhance_many(images[start:start + batch_size])
    wall = time.perf_counter() - started
    return len(images) / wall, wall


def actor_cpus(args) -> float:
    """CPUs each enhancer actor reserves: `threads`, unless the actors would then leave less than
    the 1 CPU Ray Data's read tasks need (prodray.cluster.bulk.check_reservations); then a share that leaves 1
    CPU free. Ray sets OMP_NUM_THREADS from it (1 for a fraction); actor_torch_threads() shows
    what torch gets."""
    cpus = os.cpu_count() or 1
    if args.actors * args.threads <= cpus - 1:
        return float(args.threads)
    return min(float(args.threads), (cpus - 1) / args.actors)


def actor_torch_threads(cpus: float) -> int:
    """torch's thread count inside a Ray actor that asks for `cpus` CPUs (what the pipeline gets)."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Probe:
        def threads(self):
            import torch
            return torch.get_num_threads()

    probe = Probe.remote()
    value = ray.get(probe.threads.remote())
    ray.kill(probe)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150, help="catalog size for the throughput figures")
    parser.add_argument("--model", help="model reference (e.g. enhancer-x2); "
                        "default: a fresh rpsnet of --channels/--blocks")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPUs) per enhancer actor")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import ray

    from prodray.enhancer.model import build_model
    from prodray.io.artifacts import export_model

    root = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    weed = start_s3(root)
    try:
        if args.model:
            model = args.model
        else:
            model = "s3://bench/model"
            export_model(model, "enhancer", build_model("rpsnet", scale=2, channels=args.channels, blocks=args.blocks),
                         {"arch": "rpsnet", "scale": 2, "channels": args.channels, "blocks": args.blocks,
                          "kind": "enhancer"})
        small = max(1, args.images // 3)
        started = time.perf_counter()
        upload_catalog("s3://bench/catalog-small", small, seed=1)
        keys = upload_catalog("s3://bench/catalog", args.images, seed=0)
        sizes = [storage.info(k)["size"] for k in keys]
        print(f"catalog: {args.images} + {small} JPEGs uploaded in {time.perf_counter() - started:.1f}s "
              f"(mean {statistics.mean(sizes) / 1024:.0f} KiB); model {model}; nproc {os.cpu_count()}; "
              f"load {os.getloadavg()}")

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        try:
            print(f"{args.actors} enhancer actor(s) with {actor_cpus(args):g} CPU(s) each; torch threads in such an "
                  f"actor: {actor_torch_threads(actor_cpus(args))}")
            rate_small, wall_small, memory_small = run_pipeline("s3://bench/catalog-small", "s3://bench/out-small",
                                                                model, args)
            rate_pipe, wall_pipe, memory = run_pipeline("s3://bench/catalog", "s3://bench/out-pipeline", model, args)
        finally:
            ray.shutdown()
        torch_threads = args.actors * args.threads
        rate_plain, wall_plain = run_plain_loop(keys, "s3://bench/catalog", "s3://bench/out-plain", model,
                                                torch_threads)
        rate_compute, wall_compute = run_compute_bound(keys, model, torch_threads, args.batch_size)
    finally:
        local.stop_group(weed.pid, grace_s=3.0)

    print(f"\n{'measurement':<34}{'images':>8}{'wall s':>9}{'images/s':>10}")
    for name, count, wall, rate in (
            (f"pipeline ({args.actors} actor(s) x {args.threads} thr)", args.images, wall_pipe, rate_pipe),
            ("pipeline, small catalog", small, wall_small, rate_small),
            (f"plain loop ({torch_threads} torch threads)", args.images, wall_plain, rate_plain),
            (f"compute bound ({torch_threads} torch threads)", args.images, wall_compute, rate_compute)):
        print(f"{name:<34}{count:>8}{wall:>9.1f}{rate:>10.2f}")
    print(f"\npipeline / compute bound: {rate_pipe / rate_compute:.2f}  (goal >= 0.85)")
    print(f"pipeline / plain loop:    {rate_pipe / rate_plain:.2f}  (goal >= 1.5)")
    print(f"peak RSS, {small} images:  driver {memory_small.driver:.0f} MiB, driver + Ray processes "
          f"{memory_small.tree:.0f} MiB")
    print(f"peak RSS, {args.images} images: driver {memory.driver:.0f} MiB, driver + Ray processes "
          f"{memory.tree:.0f} MiB")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
