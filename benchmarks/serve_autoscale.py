"""Serve autoscaling under load, with a replica killed in the middle: does the endpoint scale up
from one enhancer replica, answer through a replica's death, and scale back down, without a 5xx?

One local Ray (`address="local"`, Serve on 127.0.0.1) declaring `--logical-cpus` CPUs (more than the
machine has, so the autoscaler may place `--max-replicas` one-CPU replicas); the app is prodray's
own (`build_app`), the enhancer deployment from 1 to `--max-replicas` replicas, with short
up/down-scale delays so that a run takes minutes, not the production 30 s / 600 s. Phases:

1. `--warm` s at one client;
2. `--load` s at `--clients` closed-loop clients (each posts its next image when its answer
   arrives); at half of it, the replica that served from the start is killed (`ray.kill`, no
   restart: Serve's controller must replace it);
3. `--cool` s without load, while the deployment scales back down.

Prints a timeline (every `--every` s: phase, enhancer replicas by state, answers by status in that
interval) and totals: answers by status, every non-200 with its reason, the most replicas seen,
and whether the goals held (>= 3 replicas under load, back to 1 after, no 5xx but 503).

    .venv/bin/python benchmarks/serve_autoscale.py [--clients 12] [--load 120] [--cool 90]
"""

import argparse
import http.client
import json
import threading
import time
from collections import Counter

from serve_load import photos

from prodray.local.stack import free_port

APP = "prodray"
ENHANCER = "EnhancerDeployment"


class Load:
    """Closed-loop clients posting PNGs to /v1/enhance; counts answers by status per interval."""

    def __init__(self, port: int, pngs: list[bytes]):
        self.port, self.pngs = port, pngs
        self.lock = threading.Lock()
        self.interval: Counter = Counter()
        self.total: Counter = Counter()
        self.reasons: Counter = Counter()
        self.threads: list[threading.Thread] = []
        self.stop_flags: list[threading.Event] = []

    def _client(self, index: int, stop: threading.Event) -> None:
        conn, turn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300), index
        while not stop.is_set():
            png = self.pngs[turn % len(self.pngs)]
            turn += 1
            try:
                conn.request("POST", "/v1/enhance", body=png, headers={"content-type": "image/png"})
                resp = conn.getresponse()
                body = resp.read()
                status = str(resp.status)
                reason = "" if resp.status == 200 else _reason(body)
                if resp.status == 503:
                    time.sleep(float(resp.headers.get("retry-after", "1")))
            except OSError as exc:  # a connection the server dropped: counted, never hidden
                status, reason = "conn_error", type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            with self.lock:
                self.interval[status] += 1
                self.total[status] += 1
                if reason:
                    self.reasons[f"{status} {reason}"] += 1
        conn.close()

    def set_clients(self, count: int) -> None:
        while len(self.threads) < count:
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(len(self.threads), stop), daemon=True)
            self.threads.append(thread)
            self.stop_flags.append(stop)
            thread.start()
        while len(self.threads) > count:
            self.stop_flags.pop().set()
            self.threads.pop().join()

    def take_interval(self) -> Counter:
        with self.lock:
            taken, self.interval = self.interval, Counter()
        return taken


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except ValueError:
        return body[:60].decode("utf-8", "replace")


def replica_states() -> dict:
    from ray import serve

    status = serve.status().applications[APP].deployments[ENHANCER]
    return {str(state.value if hasattr(state, "value") else state): count
            for state, count in status.replica_states.items() if count}


def replica_actor_names() -> list[str]:
    """The enhancer's live replica actors (starting ones too: their actor is up before the model)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", f"ServeReplica:{APP}:{ENHANCER}"), ("state", "=", "ALIVE")])
    return sorted(actor.name for actor in alive)


def kill_replica(name: str) -> str:
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return f"killed {name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="enhancer-x2")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--size", type=int, default=64, help="input images are size x size")
    parser.add_argument("--warm", type=float, default=20)
    parser.add_argument("--load", type=float, default=120)
    parser.add_argument("--cool", type=float, default=90)
    parser.add_argument("--every", type=float, default=5)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--logical-cpus", type=int, default=8)
    parser.add_argument("--upscale-delay", type=float, default=3)
    parser.add_argument("--downscale-delay", type=float, default=20)
    args = parser.parse_args()

    import ray
    from ray import serve

    from prodray.cluster.serve import build_app
    from prodray.config import ServeConfig

    ray.init(address="local", num_cpus=args.logical_cpus, include_dashboard=True, logging_level="ERROR",
             log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(model=args.model, generator="none", enhancer_replicas={
        "num_cpus": 1, "min_replicas": 1, "max_replicas": args.max_replicas, "target_ongoing_requests": 2,
        "max_ongoing_requests": 4, "max_batch_size": 4, "upscale_delay_s": args.upscale_delay,
        "downscale_delay_s": args.downscale_delay})
    serve.run(build_app(config), name=APP, route_prefix="/", blocking=False)
    while replica_states().get("RUNNING", 0) < 1:
        time.sleep(1)
    first = replica_actor_names()[0]  # the one replica that serves from the start: killed mid-load
    load = Load(port, photos(args.size, 8))
    phases = [("warm", args.warm, 1), ("load", args.load, args.clients), ("cool", args.cool, 0)]
    print(f"Serve on 127.0.0.1:{port}; enhancer {args.model}, 1..{args.max_replicas} replicas of 1 CPU "
          f"({args.logical_cpus} logical CPUs declared), upscale/downscale delay {args.upscale_delay:g}/"
          f"{args.downscale_delay:g} s", flush=True)
    print("| t s | phase | clients | enhancer replicas | answers in interval |\n|---:|---|---:|---|---|")
    started, most, events, timeline = time.perf_counter(), 1, [], []
    for phase, seconds, clients in phases:
        load.set_clients(clients)
        phase_start, killed = time.perf_counter(), phase != "load"
        while time.perf_counter() - phase_start < seconds:
            time.sleep(args.every)
            if not killed and time.perf_counter() - phase_start >= seconds / 2:
                events.append(f"t={time.perf_counter() - started:.0f}s {kill_replica(first)} (the first replica)")
                print(f"# {events[-1]}", flush=True)
                killed = True
            states = replica_states()
            most = max(most, states.get("RUNNING", 0))
            answers = dict(sorted(load.take_interval().items()))
            timeline.append((phase, states))
            print(f"| {time.perf_counter() - started:.0f} | {phase} | {clients} | {states} | {answers} |", flush=True)
    load.set_clients(0)
    final = replica_states().get("RUNNING", 0)
    serve.shutdown()
    ray.shutdown()

    total = dict(sorted(load.total.items()))
    server_errors = sum(count for status, count in load.total.items() if status.startswith("5") and status != "503")
    print(f"\nanswers: {total}; non-200 by reason: {dict(load.reasons)}; {'; '.join(events)}")
    print(f"most running replicas: {most} (goal >= 3); running at the end: {final} (goal 1); "
          f"5xx other than 503: {server_errors}, connection errors: {load.total.get('conn_error', 0)} (goal 0)")


if __name__ == "__main__":
    main()
