"""Serve load: a closed-loop HTTP load generator against /v1/enhance, beside the compute bound.

One run, one machine, side by side (machines are noisy, so only ratios measured together count):

- compute bound: the enhancer's batched forward pass alone (`Enhancer.enhance_many` on a batch of
  `--clients` images, the batch Serve forms at saturation), in this process, with the same torch
  threads as the Serve replica;
- Serve at saturation, batching on: `--clients` closed-loop clients (each sends its next request
  when the previous answer arrives) for `--duration` s: images/s, p50, p99;
- the same against a second app whose enhancer has batching off (`max_batch_size` 1);
- Serve's added latency at low load: one client, alternately one HTTP request and one direct
  single-image forward pass, so drift hits both alike; added = median(latency - forward), at
  `--size` and at a tiny `--tiny` image whose forward pass is only milliseconds, against both apps
  (the batched one waits up to batch_wait_timeout_s for company; the unbatched one does not).

The three saturation phases run in `--rounds` interleaved rounds (compute, batched, unbatched,
compute, ...), so load from elsewhere on a shared machine hits all three alike; the table sums the
rounds and shows each round's ratios. Serve runs on a fresh local Ray (`address="local"`) bound to
127.0.0.1: two apps, each one ingress and one enhancer replica (`--threads` CPUs, OMP_NUM_THREADS
the same); only one is busy at a time. Clients are threads with keep-alive connections on
loopback; images are real photos (scikit-image) cut to size x size PNGs.

    .venv/bin/python benchmarks/serve_load.py [--clients 4] [--duration 40] [--rounds 2] [--size 256]
"""

import argparse
import http.client
import io
import json
import os
import statistics
import threading
import time

import numpy as np
from PIL import Image

from prodray.local.stack import free_port

GOAL_COMPUTE, GOAL_BATCHING, GOAL_ADDED_MS = 0.7, 1.5, 10.0
PAUSE_S = 0.25  # between the halves of a low-load pair
APPS = {"batched": "", "unbatched": "/unbatched"}  # app name -> route prefix


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
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).copy()


class Client:
    """One keep-alive connection posting PNGs to <prefix>/v1/enhance."""

    def __init__(self, port: int, prefix: str = ""):
        self.port, self.path = port, prefix + "/v1/enhance"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post(self, png: bytes, expect_side: int | None = None) -> tuple[float, dict]:
        start = time.perf_counter()
        self.conn.request("POST", self.path, body=png, headers={"content-type": "image/png"})
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


def closed_loop(port: int, prefix: str, pngs: list[bytes], clients: int, duration: float,
                out_side: int) -> dict:
    """`clients` threads, each posting back-to-back until `duration` s have passed.

    No new request starts after the deadline; requests in flight then are finished and counted,
    and throughput is all completed images over the time to the last answer. So nothing is cut in
    the middle of a batch (seconds long on a CPU), which a fixed counting window would do."""
    latencies, errors, lock = [], [], threading.Lock()
    start = time.perf_counter()
    deadline = start + duration
    last = [start]

    def run(index: int):
        client = Client(port, prefix)
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
                    client = Client(port, prefix)
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
    return {"completed": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "wall_s": last[0] - start, "latencies_s": latencies}


def compute_bound(enhancer, arrays: list[np.ndarray], batch: int, seconds: float) -> dict:
    """enhance_many on batches of `batch` images, repeated for at least `seconds` (>= 1 batch)."""
    done, start, turn = 0, time.perf_counter(), 0
    while done == 0 or time.perf_counter() - start < seconds:
        enhancer.enhance_many([arrays[(turn + i) % len(arrays)] for i in range(batch)])
        turn += batch
        done += batch
    return {"completed": done, "wall_s": time.perf_counter() - start}


def low_load_pairs(port: int, prefix: str, enhancer, png: bytes, pairs: int, out_side: int) -> dict:
    """One client alone: alternately one HTTP request and one direct single-image forward.

    A pause before each half lets the other side's OpenMP threads stop spinning (they busy-wait
    a while after a parallel region), which would otherwise slow the half that follows."""
    client, array = Client(port, prefix), decode(png)
    latency, forward, parts = [], [], []
    try:
        for _ in range(pairs):
            time.sleep(PAUSE_S)
            elapsed, headers = client.post(png, out_side)
            latency.append(elapsed)
            parts.append(headers)
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            enhancer.enhance_many([array])
            forward.append(time.perf_counter() - start)
    finally:
        client.close()
    return {"pairs": pairs, "latency_p50_ms": statistics.median(latency) * 1000,
            "forward_p50_ms": statistics.median(forward) * 1000,
            "added_p50_ms": statistics.median(lat - fwd for lat, fwd in zip(latency, forward)) * 1000,
            "decode_p50_ms": statistics.median(p["x-decode-ms"] for p in parts),
            "enhance_call_p50_ms": statistics.median(p["x-enhance-ms"] for p in parts),
            "encode_p50_ms": statistics.median(p["x-encode-ms"] for p in parts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="enhancer-x2", help="shipped name, export folder or s3:// URI")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients at saturation")
    parser.add_argument("--duration", type=float, default=40, help="seconds per saturation phase per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="input images are size x size")
    parser.add_argument("--tiny", type=int, default=16, help="image side for the fixed-overhead pairs")
    parser.add_argument("--pairs", type=int, default=4, help="low-load request/forward pairs at --size")
    parser.add_argument("--tiny-pairs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (replica CPUs)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="Serve's batch size when batching")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from prodray.cluster.serve import build_app
    from prodray.config import ServeConfig
    from prodray.enhancer.inference import Enhancer

    torch.set_num_threads(args.threads)
    enhancer = Enhancer.load(args.model, "cpu")
    pngs = photos(args.size, max(8, args.clients))
    arrays = [decode(p) for p in pngs]
    tiny = photos(args.tiny, 1)[0]
    out_side, tiny_side = args.size * enhancer.scale, args.tiny * enhancer.scale
    batch = min(args.clients, args.max_batch_size)

    # Logical CPUs for both enhancer replicas; only one of them computes at a time.
    # OMP_NUM_THREADS reaches every replica through the job's runtime env.
    ray.init(address="local", num_cpus=2 * args.threads, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict = {"args": vars(args), "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(),
                     "scale": enhancer.scale, "rounds": []}
    try:
        t0 = time.perf_counter()
        for name, max_batch_size in (("batched", args.max_batch_size), ("unbatched", 1)):
            one = {"min_replicas": 1, "max_replicas": 1}
            config = ServeConfig(model=args.model, generator="none", ingress_replicas={"num_cpus": 0, **one},
                                 enhancer_replicas={"num_cpus": args.threads, "max_batch_size": max_batch_size, **one})
            serve.run(build_app(config), name=name, route_prefix=APPS[name] or "/")
            warm = Client(port, APPS[name])
            for png, side in ((pngs[0], out_side), (tiny, tiny_side)):
                warm.post(png, side)
            warm.close()
        enhancer.enhance_many([arrays[0]])
        enhancer.enhance_many(arrays[:batch])  # warm this process's copy too
        print(f"serve up and warm in {time.perf_counter() - t0:.0f} s; measuring...", flush=True)

        for name in APPS:
            results[f"low_load_{name}"] = low_load_pairs(port, APPS[name], enhancer, pngs[2], args.pairs, out_side)
            results[f"low_load_tiny_{name}"] = low_load_pairs(port, APPS[name], enhancer, tiny, args.tiny_pairs,
                                                              tiny_side)
            print(f"low load {name}:", results[f"low_load_{name}"], results[f"low_load_tiny_{name}"], flush=True)
        for index in range(args.rounds):
            entry = {"compute": compute_bound(enhancer, arrays, batch, args.duration / 2)}
            for name in APPS:
                entry[name] = closed_loop(port, APPS[name], pngs, args.clients, args.duration, out_side)
            entry["loadavg"] = os.getloadavg()[0]
            results["rounds"].append(entry)
            print(f"round {index + 1}:", {k: (v if not isinstance(v, dict) else
                                              {kk: vv for kk, vv in v.items() if kk != "latencies_s"})
                                          for k, v in entry.items()}, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    results["loadavg_end"] = os.getloadavg()
    report(results)


def rate(parts: list[dict]) -> float:
    return sum(p["completed"] for p in parts) / sum(p["wall_s"] for p in parts)


def report(r: dict) -> None:
    a, rounds = r["args"], r["rounds"]
    pct = lambda xs, q: float(np.percentile(xs, q)) * 1000  # noqa: E731
    bound = rate([x["compute"] for x in rounds])
    lat = {name: [v for x in rounds for v in x[name]["latencies_s"]] for name in APPS}
    ips = {name: rate([x[name] for x in rounds]) for name in APPS}
    errors = {name: sum(x[name]["errors"] for x in rounds) for name in APPS}
    low = r["low_load_batched"]
    single_ips = 1000 / low["forward_p50_ms"]
    print()
    print(f"{a['size']}x{a['size']} PNG in, x{r['scale']} PNG out, model {a['model']}, {a['clients']} clients, "
          f"{a['rounds']} rounds x {a['duration']:.0f} s per Serve phase, {a['threads']} torch threads, "
          f"nproc {r['nproc']}, loadavg {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}")
    print(f"{'':44} {'images/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"{'compute bound (batch %d, forward alone)' % min(a['clients'], a['max_batch_size']):44} {bound:9.3f}"
          f"{'':20}  {sum(x['compute']['completed'] for x in rounds)} images")
    print(f"{'single-image forward alone (low-load pairs)':44} {single_ips:9.3f} {low['forward_p50_ms']:9.1f}")
    for name, label in (("batched", f"Serve, batching on (max {a['max_batch_size']})"),
                        ("unbatched", "Serve, batching off (max_batch_size 1)")):
        print(f"{label:44} {ips[name]:9.3f} {pct(lat[name], 50):9.1f} {pct(lat[name], 99):9.1f}  "
              f"{len(lat[name])} done, {errors[name]} errors")
    ratios = {"Serve batched / compute bound": ips["batched"] / bound,
              "Serve batched / Serve unbatched": ips["batched"] / ips["unbatched"],
              "compute batch / single forward": bound / single_ips}
    print()
    for name, value in ratios.items():
        per_round = []
        for x in rounds:
            c, b, u = (x[k]["completed"] / x[k]["wall_s"] for k in ("compute", "batched", "unbatched"))
            per_round.append({"Serve batched / compute bound": b / c, "Serve batched / Serve unbatched": b / u,
                              "compute batch / single forward": c / single_ips}[name])
        print(f"{name:44} {value:9.2f}x   per round: " + ", ".join(f"{v:.2f}x" for v in per_round))
    print()
    for name in APPS:
        for label, x in ((f"{a['size']}px", r[f"low_load_{name}"]), (f"{a['tiny']}px", r[f"low_load_tiny_{name}"])):
            print(f"1 client, {name:9} {label:6}: latency p50 {x['latency_p50_ms']:8.1f} ms, forward p50 "
                  f"{x['forward_p50_ms']:7.1f} ms, added p50 {x['added_p50_ms']:6.1f} ms (decode "
                  f"{x['decode_p50_ms']:.1f}, handle call {x['enhance_call_p50_ms']:.1f}, encode "
                  f"{x['encode_p50_ms']:.1f} ms; {x['pairs']} pairs)")
    print()
    goals = [(f"Serve >= {GOAL_COMPUTE}x compute bound at saturation",
              ratios["Serve batched / compute bound"] >= GOAL_COMPUTE),
             (f"batching >= {GOAL_BATCHING}x unbatched", ratios["Serve batched / Serve unbatched"] >= GOAL_BATCHING)]
    goals += [(f"added latency <= {GOAL_ADDED_MS:.0f} ms at low load ({key})", r[key]["added_p50_ms"] <= GOAL_ADDED_MS)
              for key in ("low_load_batched", "low_load_tiny_batched")]
    for name, ok in goals:
        print(f"goal {name}: {'met' if ok else 'NOT met'}")
    print()
    for x in rounds:  # raw latencies stay out of the JSON line
        for name in APPS:
            x[name].pop("latencies_s")
    print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
