"""Serve load: a closed-loop HTTP load generator against /v1/enhance, beside the compute bound.

One run, one machine, side by side (machines are noisy, so only ratios measured together count):

- compute bound: the enhancer's batched forward pass alone (`Enhancer.enhance_many` on a batch of
  `--clients` images, the batch Serve forms at saturation), in this process, with the same torch
  threads as the Serve replica; measured before and after the Serve phases to show drift;
- Serve at saturation, batching on: `--clients` closed-loop clients (each sends its next request
  when the previous answer arrives) for `--duration` s: images/s, p50, p99;
- the same with batching off (`max_batch_size` 1, set through `user_config` on the live replica);
- Serve's added latency at low load: one client, alternating one HTTP request and one direct
  single-image forward pass, so drift hits both alike; added = latency - forward (medians of the
  pairs), at `--size` and at a tiny `--tiny` image where the forward is only milliseconds.

Serve runs on a fresh local Ray (`address="local"`) bound to 127.0.0.1 with one enhancer replica
(`--threads` CPUs, OMP_NUM_THREADS the same) and one ingress replica; clients are threads with
keep-alive connections on loopback. Images are real photos (scikit-image) cut to size x size PNGs.

    .venv/bin/python benchmarks/serve_load.py [--clients 4] [--duration 60] [--size 256] [--threads 2]
"""

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import threading
import time

import numpy as np
from PIL import Image

GOAL_COMPUTE, GOAL_BATCHING, GOAL_ADDED_MS = 0.7, 1.5, 10.0


def photos(size: int, count: int) -> list[bytes]:
    """`count` distinct size x size PNGs: centre crops of scikit-image's bundled photos."""
    from skimage import data
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    out = []
    for index in range(count):
        im = Image.fromarray(sources[index % len(sources)]).convert("RGB")
        side = min(im.size) - 16 * (index // len(sources))  # a tighter crop when photos repeat
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class Client:
    """One keep-alive connection posting PNGs to /v1/enhance."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post(self, png: bytes, expect_side: int | None = None) -> tuple[float, dict]:
        start = time.perf_counter()
        self.conn.request("POST", "/v1/enhance", body=png, headers={"content-type": "image/png"})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        if expect_side is not None and Image.open(io.BytesIO(body)).size != (expect_side, expect_side):
            raise RuntimeError("wrong output size")
        return elapsed, {k: float(resp.headers[k]) for k in ("x-decode-ms", "x-enhance-ms", "x-encode-ms")}

    def close(self):
        self.conn.close()


def closed_loop(port: int, pngs: list[bytes], clients: int, duration: float, out_side: int) -> dict:
    """`clients` threads, each posting back-to-back until `duration` s have passed.

    No new request starts after the deadline; requests in flight then are finished and counted,
    and throughput is all completed images over the time to the last answer. So nothing is cut in
    the middle of a batch (several seconds long on a CPU), which a fixed counting window would do."""
    latencies, errors, lock = [], [], threading.Lock()
    start = time.perf_counter()
    deadline = start + duration
    last = [start]

    def run(index: int):
        client = Client(port)
        try:
            turn = index
            while time.perf_counter() < deadline:
                png = pngs[turn % len(pngs)]
                turn += clients
                try:
                    elapsed, _ = client.post(png, out_side)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(repr(exc))
                    client.close()
                    client = Client(port)
                    continue
                with lock:
                    latencies.append(elapsed)
                    last[0] = max(last[0], time.perf_counter())
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = last[0] - start
    return {"clients": clients, "completed": len(latencies), "errors": len(errors),
            "error_examples": errors[:3], "wall_s": wall,
            "images_per_s": len(latencies) / wall if latencies else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def compute_bound(enhancer, arrays: list[np.ndarray], batch: int, seconds: float) -> dict:
    """images/s of enhance_many on batches of `batch` images, repeated for about `seconds`."""
    done, start, turn = 0, time.perf_counter(), 0
    while done == 0 or time.perf_counter() - start < seconds:
        chunk = [arrays[(turn + i) % len(arrays)] for i in range(batch)]
        turn += batch
        enhancer.enhance_many(chunk)
        done += batch
    wall = time.perf_counter() - start
    return {"batch": batch, "images": done, "wall_s": wall, "images_per_s": done / wall}


def low_load_pairs(port: int, enhancer, png: bytes, pairs: int, out_side: int) -> dict:
    """One client alone: alternately one HTTP request and one direct single-image forward."""
    client, array = Client(port), decode(png)
    latency, forward, parts = [], [], []
    try:
        for _ in range(pairs):
            elapsed, headers = client.post(png, out_side)
            latency.append(elapsed)
            parts.append(headers)
            start = time.perf_counter()
            enhancer.enhance_many([array])
            forward.append(time.perf_counter() - start)
    finally:
        client.close()
    diffs = [lat - fwd for lat, fwd in zip(latency, forward)]
    return {"pairs": pairs, "latency_p50_ms": statistics.median(latency) * 1000,
            "forward_p50_ms": statistics.median(forward) * 1000,
            "added_p50_ms": statistics.median(diffs) * 1000,
            "decode_p50_ms": statistics.median(p["x-decode-ms"] for p in parts),
            "enhance_call_p50_ms": statistics.median(p["x-enhance-ms"] for p in parts),
            "encode_p50_ms": statistics.median(p["x-encode-ms"] for p in parts)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="enhancer-x2", help="shipped name, export folder or s3:// URI")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients at saturation")
    parser.add_argument("--duration", type=float, default=60, help="seconds per saturation phase")
    parser.add_argument("--size", type=int, default=256, help="input images are size x size")
    parser.add_argument("--tiny", type=int, default=16, help="image side for the fixed-overhead pairs")
    parser.add_argument("--pairs", type=int, default=6, help="low-load request/forward pairs at --size")
    parser.add_argument("--tiny-pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (replica CPUs)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="Serve's batch size when batching")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from prodray.enhance import Enhancer
    from prodray.serve import build_app

    torch.set_num_threads(args.threads)
    enhancer = Enhancer.load(args.model, "cpu")
    scale = enhancer.scale
    pngs = photos(args.size, max(8, args.clients))
    arrays = [decode(p) for p in pngs]
    tiny = photos(args.tiny, 1)[0]
    out_side, tiny_side = args.size * scale, args.tiny * scale

    ray.init(address="local", num_cpus=max(args.threads, os.cpu_count() or 1), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def deploy(max_batch_size: int):
        serve.run(build_app(args.model, enhancer_options={
            "user_config": {"max_batch_size": max_batch_size},
            "ray_actor_options": {"num_cpus": args.threads,
                                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(args.threads)}}},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
        }, ingress_options={"ray_actor_options": {"num_cpus": 0},
                            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}),
            name="prodray", route_prefix="/")

    results: dict = {"args": vars(args), "nproc": os.cpu_count(), "loadavg_start": os.getloadavg()}
    try:
        t0 = time.perf_counter()
        deploy(args.max_batch_size)
        warm = Client(port)
        for png, side in ((pngs[0], out_side), (tiny, tiny_side), (pngs[1], out_side)):
            warm.post(png, side)
        warm.close()
        enhancer.enhance_many([arrays[0]])  # warm this process's copy too
        print(f"serve up and warm in {time.perf_counter() - t0:.0f} s; measuring...", flush=True)

        batch = min(args.clients, args.max_batch_size)
        results["compute_before"] = compute_bound(enhancer, arrays, batch, args.duration / 3)
        print("compute bound:", results["compute_before"], flush=True)
        results["low_load"] = low_load_pairs(port, enhancer, pngs[2], args.pairs, out_side)
        print("low load:", results["low_load"], flush=True)
        results["low_load_tiny"] = low_load_pairs(port, enhancer, tiny, args.tiny_pairs, tiny_side)
        print("low load (tiny):", results["low_load_tiny"], flush=True)
        results["batched"] = closed_loop(port, pngs, args.clients, args.duration, out_side)
        print("serve batched:", results["batched"], flush=True)
        deploy(1)  # batching off: same app, user_config max_batch_size 1
        results["unbatched"] = closed_loop(port, pngs, args.clients, args.duration, out_side)
        print("serve unbatched:", results["unbatched"], flush=True)
        results["compute_after"] = compute_bound(enhancer, arrays, batch, args.duration / 3)
        print("compute bound again:", results["compute_after"], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    results["loadavg_end"] = os.getloadavg()
    report(results)


def report(r: dict) -> None:
    a = r["args"]
    bound = (r["compute_before"]["images_per_s"] + r["compute_after"]["images_per_s"]) / 2
    single_ips = 1000 / r["low_load"]["forward_p50_ms"]
    b, u, low, tiny = r["batched"], r["unbatched"], r["low_load"], r["low_load_tiny"]
    print()
    print(f"{a['size']}x{a['size']} PNG -> x2, model {a['model']}, {a['clients']} clients, "
          f"{a['duration']:.0f} s per phase, {a['threads']} torch threads, nproc {r['nproc']}, "
          f"loadavg {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}")
    rows = [
        ("compute bound (batch %d, forward alone)" % r["compute_before"]["batch"], bound, None, None,
         "before %.3f / after %.3f" % (r["compute_before"]["images_per_s"], r["compute_after"]["images_per_s"])),
        ("single-image forward alone", single_ips, low["forward_p50_ms"], None, ""),
        ("Serve, batching on", b["images_per_s"], b["p50_ms"], b["p99_ms"],
         "%d done, %d errors" % (b["completed"], b["errors"])),
        ("Serve, batching off (max_batch_size 1)", u["images_per_s"], u["p50_ms"], u["p99_ms"],
         "%d done, %d errors" % (u["completed"], u["errors"])),
    ]
    print(f"{'':42} {'images/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for name, ips, p50, p99, note in rows:
        fmt = lambda v: f"{v:9.1f}" if v is not None else " " * 9  # noqa: E731
        print(f"{name:42} {ips:9.3f} {fmt(p50)} {fmt(p99)}  {note}")
    ratios = {
        "serve_batched / compute_bound": b["images_per_s"] / bound,
        "serve_batched / serve_unbatched": b["images_per_s"] / u["images_per_s"] if u["images_per_s"] else float("nan"),
        "compute batch / single forward": bound / single_ips,
    }
    print()
    for name, value in ratios.items():
        print(f"{name:42} {value:9.2f}x")
    print()
    for label, x in ((f"{a['size']}x{a['size']}", low), (f"{a['tiny']}x{a['tiny']}", tiny)):
        print(f"1 client {label:9}: latency p50 {x['latency_p50_ms']:.1f} ms, forward p50 {x['forward_p50_ms']:.1f} ms, "
              f"added p50 {x['added_p50_ms']:.1f} ms (decode {x['decode_p50_ms']:.1f}, handle call "
              f"{x['enhance_call_p50_ms']:.1f}, encode {x['encode_p50_ms']:.1f} ms; {x['pairs']} pairs)")
    print()
    goals = [
        (f"Serve >= {GOAL_COMPUTE}x compute bound at saturation", ratios["serve_batched / compute_bound"] >= GOAL_COMPUTE),
        (f"batching >= {GOAL_BATCHING}x unbatched", ratios["serve_batched / serve_unbatched"] >= GOAL_BATCHING),
        (f"added latency <= {GOAL_ADDED_MS:.0f} ms at low load ({a['size']}px pairs)", low["added_p50_ms"] <= GOAL_ADDED_MS),
        (f"added latency <= {GOAL_ADDED_MS:.0f} ms at low load ({a['tiny']}px pairs)", tiny["added_p50_ms"] <= GOAL_ADDED_MS),
    ]
    for name, ok in goals:
        print(f"goal {name}: {'met' if ok else 'NOT met'}")
    print()
    print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
