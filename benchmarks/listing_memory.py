"""Listing and driver memory against catalog size, without the images: the bulk job's listing stage
(`prodray.cluster.listing`: the done set read from the result manifest by tasks, then the input
walked by tasks into pending shards) at 100k and 1M keys, in the two input forms a catalog takes:
a folder tree of zero-byte files (one Ray task per folder) and a parquet key manifest (one task,
read a row group at a time). Half the keys are already done (result-manifest rows with their
output keys), so the done filter runs at full size too.

Prints, per size and form: seconds, keys listed and pending (checked against what was made), the
done set's size, the driver's RSS when the listing started and its peak during it, and the peak
of the driver plus every Ray process. Sizes run in order in one Ray instance, so what the driver
keeps from one size to the next shows. Files go under a temporary folder (removed at the end).

    .venv/bin/python benchmarks/listing_memory.py [--sizes 100000,1000000] [--folders 1000] [--done-share 0.5]
"""

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bulk_throughput import PeakRss

from prodray.catalog.manifest import MANIFEST_DIR, output_key
from prodray.config import BulkConfig

MODEL_ID = "enhancer-listingbench"
MANIFEST_SHARD_ROWS = 10_000


def make_catalog(root: Path, count: int, folders: int) -> list[str]:
    """`count` zero-byte .jpg files over `folders` folders, and the same keys as a parquet manifest."""
    keys = [f"f{i % folders:04d}/item-{i:07d}.jpg" for i in range(count)]
    for folder in range(folders):
        (root / "tree" / f"f{folder:04d}").mkdir(parents=True, exist_ok=True)
    for key in keys:
        (root / "tree" / key).touch()
    pq.write_table(pa.table({"key": keys, "bytes": [1000] * count}), root / "keys.parquet", row_group_size=65_536)
    return keys


def make_done_manifest(output: Path, keys: list[str], config: BulkConfig) -> int:
    """Result-manifest shards saying `keys` are done (status ok, with the output key they got)."""
    (output / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(keys), MANIFEST_SHARD_ROWS)):
        part = keys[start:start + MANIFEST_SHARD_ROWS]
        results = [output_key(key, MODEL_ID, config) for key in part]
        pq.write_table(pa.table({"input_key": part, "status": ["ok"] * len(part), "reason": [""] * len(part),
                                 "output_key": results, "result_key": results}),
                       output / MANIFEST_DIR / f"bench-{shard:05d}.parquet")
    return len(keys)


def measure(source: str, output: Path, config: BulkConfig) -> dict:
    from prodray.cluster.listing import done_hashes, list_pending

    listing_dir = output / "_listing" / f"run-{time.time_ns()}"
    result_key = functools.partial(output_key, model_id=MODEL_ID, config=config)
    with PeakRss() as rss:
        started = time.perf_counter()
        done = done_hashes(str(output / MANIFEST_DIR), ("ok", "skipped", "rejected"))
        listing = list_pending(source, (".jpg",), done, str(listing_dir), echo=lambda _: None, result_key=result_key)
        seconds = time.perf_counter() - started
    shutil.rmtree(listing_dir)
    return {"s": seconds, "listed": listing.listed, "pending": listing.pending, "done_keys": len(done),
            "driver_start": rss.driver_at_start, "driver_peak": rss.driver, "tree_peak": rss.tree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--done-share", type=float, default=0.5)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    work = Path(tempfile.mkdtemp(prefix="prodray-listing-"))
    results = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            root = work / f"n{size}"
            made = time.perf_counter()
            keys = make_catalog(root, size, args.folders)
            config = BulkConfig(input=str(root / "tree"), output=str(root / "out"))
            done = make_done_manifest(root / "out", keys[:int(size * args.done_share)], config)
            del keys
            print(f"{size} keys made in {time.perf_counter() - made:.0f}s ({done} marked done)", flush=True)
            for form, source in (("folders", str(root / "tree")), ("manifest", str(root / "keys.parquet"))):
                row = measure(source, root / "out", config)
                if (row["listed"], row["pending"]) != (size, size - done):
                    raise SystemExit(f"{form} at {size}: listed {row['listed']}, pending {row['pending']}; "
                                     f"expected {size}, {size - done}")
                results.append({"keys": size, "form": form, **row})
                print(f"{size:>8} {form:<8} {row['s']:6.1f}s listed {row['listed']} pending {row['pending']} "
                      f"done set {row['done_keys']} ({row['done_keys'] * 8 / 2**20:.1f} MiB) driver "
                      f"{row['driver_start']:.0f} -> {row['driver_peak']:.0f} MiB, tree {row['tree_peak']:.0f} MiB",
                      flush=True)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    print("\n| keys | input form | listing s | keys/s | done set MiB | driver at start MiB | driver peak MiB "
          "| driver + Ray peak MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['keys']} | {row['form']} | {row['s']:.1f} | {row['keys'] / row['s']:.0f} "
              f"| {row['done_keys'] * 8 / 2**20:.1f} | {row['driver_start']:.0f} | {row['driver_peak']:.0f} "
              f"| {row['tree_peak']:.0f} |")
    first = {form: next(r for r in results if r["form"] == form) for form in ("folders", "manifest")}
    for row in results[2:]:
        base = first[row["form"]]
        driver, tree = row["driver_peak"] / base["driver_peak"], row["tree_peak"] / base["tree_peak"]
        print(f"{row['form']}: {row['keys'] // base['keys']}x the keys, driver peak x{driver:.2f}, "
              f"driver + Ray x{tree:.2f}")


if __name__ == "__main__":
    main()
