"""Serve latency: where the time of one small /v1/enhance request goes, per variant, side by side.

One local Ray (`address="local"`, Serve on 127.0.0.1), several apps built like
`prodray.cluster.serve.build_app` (one ingress and one enhancer replica each), one per variant:

- `always-batched`: every request through @serve.batch (max 8, batch_wait_timeout_s 0.01): what
  Serve did before a request that finds the model idle skipped the batch wait;
- `default`: ServeConfig's defaults (a request that finds the model idle, after a forward of one
  request, runs at once);
- `unbatched`: max_batch_size 1;
- `in-ingress`: ServeConfig's defaults with `enhancer_in_ingress`: the ingress replica holds the
  enhancer itself (no handle call, no model replica).

One client sends `--requests` sequential PNGs of `--size` px (after `--warmup`), rotating through the
variants so drift hits all alike, with a short pause between requests. Each answer's headers give
decode, the model call, encode (ingress) and the wait and forward (model replica); Serve's access
logs of the two replicas (joined on x-request-id) give each replica's own total, so: proxy + HTTP =
client time - ingress replica; ingress other = ingress replica - decode - model call - encode (the
body fetched back from the proxy, FastAPI, the response); handle call = model call - model replica;
replica other = model replica - wait - forward; model call other = model call - wait - forward (the
two before together, or the in-process call's own cost); added = client time - forward. Medians are per
part, so they need not add up to the median total.

`--direct-ingress` starts its Ray with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 (Ray Serve's experimental
direct ingress, a cluster-wide flag read when each process imports Serve): each app's ingress replica
then also serves HTTP itself on a port of its own (30000-31000, bound to Serve's http host, 127.0.0.1
here), while the proxy still runs. Each variant is then measured both ways, interleaved: `NAME` through
the proxy and `NAME DI` straight to the ingress replica's port.

`--clients N` (> 1) then runs N closed-loop clients for `--duration` s per variant (images/s), and
`--compute` times the forward alone in this process: batches of 1, 4 and 8 at `--size` and 256 px,
to tell whether batching pays on this machine.

    .venv/bin/python benchmarks/serve_latency.py [--requests 150] [--size 16] [--clients 4] [--compute]
        [--direct-ingress] [--variants default,unbatched]
"""

import argparse
import http.client
import io
import json
import os
import re
import socket
import statistics
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from prodray.local.stack import free_port

PAUSE_S = 0.05  # between sequential requests: lets the replicas' OpenMP threads go idle
LOG_LINE = re.compile(r" ([0-9a-f-]{36}) -- (?:POST \S+ \d+|CALL enhance OK) ([\d.]+)ms")
PARTS = ["total", "proxy + HTTP", "ingress other", "decode", "encode", "handle call",
         "replica other", "model call other", "wait", "forward", "added"]


def png(size: int, seed: int) -> bytes:
    """A size x size PNG of a smooth random picture (a photo-like input, not noise)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((size, size), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, dict]:
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers={"content-type": "image/png"})
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - start
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return elapsed * 1000, {k.lower(): v for k, v in resp.headers.items()}


def variants(model: str, threads: int) -> dict:
    """Variant name -> bound app."""
    from prodray.cluster.serve import Ingress, _ingress, _model_deployment, deployment_options
    from prodray.cluster.serve_models import EnhancerDeployment
    from prodray.config import ServeConfig

    one = {"min_replicas": 1, "max_replicas": 1}

    def config(held: bool = False, **enhancer):
        return ServeConfig(model=model, generator="none", repair="none", recolour="none",
                           enhancer_in_ingress=held, ingress_replicas={"num_cpus": 0, **one},
                           enhancer_replicas={"num_cpus": 0, **one, **enhancer})

    class AlwaysBatched(EnhancerDeployment.func_or_class):
        run_alone_when_idle = False

    def app(deployment, cfg):
        enhancer = _model_deployment(deployment, cfg.model, cfg.enhancer_replicas, cfg)
        return Ingress.options(**deployment_options(cfg.ingress_replicas)).bind(enhancer, None)

    def in_ingress(cfg):
        ingress, _, held = _ingress(cfg)
        return ingress.bind(None, None, held_enhancer=held)

    always = EnhancerDeployment.options(name="AlwaysBatched", func_or_class=AlwaysBatched)
    return {"always-batched": app(always, config(max_batch_size=8, batch_wait_timeout_s=0.01)),
            "default": app(EnhancerDeployment, config()),
            "unbatched": app(EnhancerDeployment, config(max_batch_size=1)),
            "in-ingress": in_ingress(config(held=True))}


def sequential(routes: dict, body: bytes, requests: int, warmup: int) -> dict:
    """label -> [(client ms, response headers)] of `requests` rotated single requests; routes: label ->
    (port, path prefix)."""
    names = list(routes)
    conns = {name: http.client.HTTPConnection("127.0.0.1", routes[name][0], timeout=120) for name in names}
    out = {name: [] for name in names}
    for index in range(warmup + requests):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            time.sleep(PAUSE_S)
            result = post(conns[name], f"{routes[name][1]}/v1/enhance", body)
            if index >= warmup:
                out[name].append(result)
    for conn in conns.values():
        conn.close()
    return out


def serve_logs(session: Path) -> dict:
    """request id -> {"ingress": ms, "model": ms}: the replicas' own times, from Serve's access logs."""
    found: dict = {}
    for path in (session / "logs" / "serve").glob("replica_*.log"):
        kind = "ingress" if "_Ingress_" in path.name else "model"
        if kind is None:
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_LINE.search(line)
            if match:
                found.setdefault(match.group(1), {})[kind] = float(match.group(2))
    return found


def breakdown(total: float, headers: dict, logged: dict) -> dict:
    """One request's parts in ms (None where a log line is missing)."""
    h = {k: float(headers[f"x-{k}-ms"]) for k in ("decode", "enhance", "encode", "wait", "forward")}
    ingress, model = logged.get("ingress"), logged.get("model")
    return {"total": total, "proxy + HTTP": None if ingress is None else total - ingress,
            "ingress other": None if ingress is None else ingress - h["decode"] - h["enhance"] - h["encode"],
            "decode": h["decode"], "encode": h["encode"],
            "handle call": None if model is None else h["enhance"] - model,
            "replica other": None if model is None else model - h["wait"] - h["forward"],
            "model call other": h["enhance"] - h["wait"] - h["forward"],
            "wait": h["wait"], "forward": h["forward"], "added": total - h["forward"]}


def closed_loop(route: tuple[int, str], body: bytes, clients: int, duration: float) -> dict:
    done, lock = [0], threading.Lock()
    deadline = time.perf_counter() + duration

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", route[0], timeout=300)
        while time.perf_counter() < deadline:
            post(conn, f"{route[1]}/v1/enhance", body)
            with lock:
                done[0] += 1
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"completed": done[0], "images_per_s": done[0] / (time.perf_counter() - start)}


def direct_ports(names: list[str]) -> dict:
    """app name -> the HTTP port its ingress replica serves on itself (direct ingress)."""
    from prodray.cluster.serve import direct_ingress_urls

    return {name: urllib.parse.urlsplit(direct_ingress_urls(name)[0]).port for name in names}


def listening(port: int) -> list[str]:
    """The addresses this machine listens on at TCP `port` (from /proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def compute(model: str, sizes: list[int], threads: int, seconds: float = 3.0) -> dict:
    """Forward alone in this process: images/s at batch 1, 4 and 8 per size, interleaved twice."""
    import torch

    from prodray.enhancer.inference import Enhancer

    torch.set_num_threads(threads)
    enhancer = Enhancer.load(model, "cpu")
    rates: dict = {}
    for _ in range(2):
        for size in sizes:
            images = [np.array(Image.open(io.BytesIO(png(size, seed))).convert("RGB")) for seed in range(8)]
            for batch in (1, 4, 8):
                enhancer.enhance_many(images[:batch])  # warm
                done, start = 0, time.perf_counter()
                while done == 0 or time.perf_counter() - start < seconds:
                    enhancer.enhance_many(images[:batch])
                    done += batch
                rates.setdefault(f"{size}px batch {batch}", []).append(done / (time.perf_counter() - start))
    return {"precision": enhancer.precision, "images_per_s": {k: statistics.mean(v) for k, v in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="enhancer-x2")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=150, help="sequential requests per variant")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of the model replicas")
    parser.add_argument("--clients", type=int, default=0, help="> 1: closed-loop clients per variant after")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per closed-loop variant")
    parser.add_argument("--compute", action="store_true", help="also time batch 1/4/8 forwards in this process")
    parser.add_argument("--direct-ingress", action="store_true",
                        help="start Ray with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 and measure each variant through "
                        "the proxy and straight to its ingress replica, side by side")
    parser.add_argument("--variants", default="always-batched,default,unbatched,in-ingress",
                        help="comma-separated subset of the variants")
    args = parser.parse_args()
    if args.direct_ingress:
        # Read by each Ray process when it imports Serve: set before Ray starts, so the controller,
        # proxy and replicas (children of this process's raylet) all see it.
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"

    import ray
    from ray import serve

    result: dict = {"args": vars(args), "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = png(args.size, 0)
    try:
        wanted = args.variants.split(",")
        apps = {name: app for name, app in variants(args.model, args.threads).items() if name in wanted}
        for name, app in apps.items():
            serve.run(app, name=name, route_prefix=f"/{name}")
        routes = {name: (port, f"/{name}") for name in apps}
        if args.direct_ingress:
            result["direct_ports"] = direct_ports(list(apps))
            result["direct_listening"] = {name: listening(p) for name, p in result["direct_ports"].items()}
            if any(addr != ["127.0.0.1"] for addr in result["direct_listening"].values()):
                raise RuntimeError(f"direct ingress not on 127.0.0.1 only: {result['direct_listening']}")
            for name in apps:
                routes[f"{name} DI"] = (result["direct_ports"][name], f"/{name}")
        names = list(routes)
        measured = sequential(routes, body, args.requests, args.warmup)
        time.sleep(2)  # access logs are written as they happen; let the last lines land
        logged = serve_logs(session)
        result["loadavg_sequential"] = open("/proc/loadavg").read().split()[:3]
        result["sequential"] = {name: summary([breakdown(ms, h, logged.get(h.get("x-request-id"), {}))
                                                for ms, h in rows]) for name, rows in measured.items()}
        if args.clients > 1:
            result["closed_loop"] = {name: closed_loop(routes[name], body, args.clients, args.duration)
                                     for name in names}
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.compute:
        result["compute"] = compute(args.model, sorted({args.size, 256}), args.threads)
    result["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    report(result)


def summary(rows: list[dict]) -> dict:
    out = {}
    for part in PARTS:
        values = [row[part] for row in rows if row[part] is not None]
        out[part] = ({"p50": statistics.median(values), "mean": statistics.mean(values), "n": len(values)}
                     if values else None)  # None: no such part (an in-ingress model has no replica of its own)
    return out


def report(r: dict) -> None:
    a = r["args"]
    print(f"\n{a['size']}x{a['size']} PNG -> /v1/enhance, model {a['model']}, {a['requests']} sequential requests "
          f"per variant after {a['warmup']} warm-up, {a['threads']} OMP threads, nproc {os.cpu_count()}, "
          f"loadavg {' '.join(r['loadavg_start'])} -> {' '.join(r['loadavg_end'])}")
    if "direct_ports" in r:
        print("direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1): ingress replicas listen on",
              ", ".join(f"{n} {r['direct_listening'][n]}:{p}" for n, p in r["direct_ports"].items()))
    names = list(r["sequential"])
    print(f"{'p50 ms (mean)':16}" + "".join(f"{n:>22}" for n in names))
    for part in PARTS:
        cells = [r["sequential"][n][part] for n in names]
        print(f"{part:16}" + "".join(f"{'-':>22}" if c is None else f"{c['p50']:>13.2f} ({c['mean']:6.2f})"
                                     for c in cells))
    for name, x in r.get("closed_loop", {}).items():
        print(f"{a['clients']} clients, {name:15}: {x['images_per_s']:7.2f} images/s ({x['completed']} done)")
    if "compute" in r:
        rates = r["compute"]["images_per_s"]
        print(f"forward alone ({r['compute']['precision']}):",
              ", ".join(f"{k} {v:.1f}/s" for k, v in rates.items()))
        for key in rates:
            size, batch = key.split("px batch ")
            if batch != "1":
                print(f"  {size}px batch {batch} / batch 1: {rates[key] / rates[f'{size}px batch 1']:.2f}x")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
