"""Encode on Ray against the bare model: throughput ratio, 1 vs 2 actors, and peak memory against store size.

    python bench/encode.py --slices 16384 --memory-slices 2048,16384 [--batch-size 64] [--model ID]

All in one run, on one synthetic store (random pixels in parts of 24 slices, as one scan writes; the
encoder's cost does not depend on the content):

* **bare**: the shipped default model (or `--model`) encodes the slices already in memory in batches of
  `--batch-size`, preprocessing included, with all of this machine's cores (the best a single process
  does with no Ray, no Parquet, no writing).
* **ray, 1 actor / 2 actors**: `latentstore.encode.encode` on a running local Ray (its start excluded;
  the actors' start and model load included): read the Parquet, encode on the actors, write and publish
  the latent parts. Throughput over the whole run, as a ratio to bare.
* **memory**: for each store size in `--memory-slices`, a fresh process runs encode once while the RSS of
  the driver and of every Ray process is sampled; peak totals are printed with the growth factor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from train_stream import make_store  # noqa: E402


def bare(store_root: Path, model, batch_size: int) -> float:
    import torch

    from latentstore import connect
    from latentstore.checkpoint import load_model
    from latentstore.diffusion import encode

    torch.set_num_threads(os.cpu_count() or 1)
    lm = load_model(model)
    t = connect(store_root).slices.read(columns=["image"])
    images = t.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 96, 96)
    with torch.inference_mode():
        encode(lm.net, lm.preprocess.to_model(images[:batch_size]))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), batch_size):
            encode(lm.net, lm.preprocess.to_model(images[i : i + batch_size]))
        return len(images) / (time.perf_counter() - t0)


def ray_run(store_root: Path, model, batch_size: int, actors: int) -> dict:
    from latentstore import connect
    from latentstore import encode as enc

    store = connect(store_root)
    shutil.rmtree(store_root / "latents", ignore_errors=True)
    t0 = time.perf_counter()
    s = enc.encode(store, model, batch_size=batch_size, actors=actors, progress=True)
    end = time.perf_counter()
    return {"actors": actors, "encoded": s.encoded, "wall_s": end - t0, "wall_per_s": s.encoded / (end - t0),
            "placement": s.placement}


CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[3])
from latentstore import connect
from latentstore.encode import encode
peak = {"rss": 0}
def rss_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0
def ray_pids():
    me = os.getpid()
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if int(p) == me or b"ray::" in cmd or b"raylet" in cmd or b"gcs_server" in cmd or b"/ray/" in cmd:
            out.append(int(p))
    return out
stop = False
def sample():
    while not stop:
        peak["rss"] = max(peak["rss"], sum(rss_of(p) for p in ray_pids()))
        time.sleep(0.2)
th = threading.Thread(target=sample, daemon=True); th.start()
s = encode(connect(sys.argv[1]), None if sys.argv[2] == "default" else sys.argv[2], progress=False)
stop = True; th.join()
print(json.dumps({"encoded": s.encoded, "peak_total_rss_mb": peak["rss"] / 2**20}))
"""


def memory(sizes: list[int], model: str) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_store(Path(tmp) / "store", n, per_part=24)
            out = subprocess.run([sys.executable, "-c", CHILD, str(root), model or "default",
                                  str(Path(__file__).resolve().parents[1])],
                                 capture_output=True, text=True, check=True)
            rows.append({"slices": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=16384)
    ap.add_argument("--memory-slices", default="2048,16384")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import ray

    results: dict = {"cpus": os.cpu_count(), "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_store(Path(tmp) / "store", args.slices, per_part=24)
        results["bare_per_s"] = bare(root, args.model, args.batch_size)
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, object_store_memory=512 * 1024**2)
        try:
            results["ray"] = [ray_run(root, args.model, args.batch_size, a) for a in (1, 2)]
        finally:
            ray.shutdown()
    sizes = [int(s) for s in args.memory_slices.split(",") if s]
    results["memory"] = memory(sizes, args.model)

    b = results["bare_per_s"]
    print(f"\nencode, {args.slices} slices, batch {args.batch_size}, {results['cpus']} CPUs; bare model {b:.0f} slices/s")
    print("| pipeline | slices/s | ratio to bare |")
    print("| --- | --- | --- |")
    print(f"| bare batched forward (slices in memory) | {b:.0f} | 1.00 |")
    for r in results["ray"]:
        print(f"| ray encode, {r['actors']} actor(s), read + encode + publish | {r['wall_per_s']:.0f} | {r['wall_per_s'] / b:.2f} |")
    m = results["memory"]
    print("\n| slices in the store | peak RSS, driver + all Ray processes (MB) |\n| --- | --- |")
    for r in m:
        print(f"| {r['slices']} | {r['peak_total_rss_mb']:.0f} |")
    if len(m) > 1:
        print(f"growth x{m[-1]['peak_total_rss_mb'] / m[0]['peak_total_rss_mb']:.2f} for x{m[-1]['slices'] / m[0]['slices']:.0f} slices")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
