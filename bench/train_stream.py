"""Training reads its slices as a stream: peak memory against the number of slices in the store.

    python bench/train_stream.py --slices 2000,32000

For each size, a store of parts of 8 slices each (random pixels: content does not matter here) is
written to a temp folder; then, each in a fresh process, (a) `SliceStream` (what `latentstore train`
uses) builds its index and serves 300 batches of 32, and (b) the whole split is read into memory
(`read_slices`, what training did before) and the same batches are drawn from it. Peak RSS of each
process is printed, with the growth factor between the smallest and largest store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_store(root: Path, n_slices: int, per_part: int = 8) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentstore.schema import arrow_schema

    schema = arrow_schema("slices")
    rng = np.random.default_rng(0)
    (root / "slices").mkdir(parents=True)
    for p in range(n_slices // per_part):
        n = per_part
        ids = rng.integers(0, 2**62, n)
        cols = {
            "slice_id": ids, "scan_id": [f"s{p}"] * n, "patient_key": [f"k{p}"] * n, "site": ["site-bench"] * n,
            "level": np.arange(n) + 12, "level_name": ["T5"] * n, "source_uri": ["x"] * n, "source_format": ["nifti"] * n,
            "content_hash": [f"{p:064x}"] * n, "centroid_mm": [[0.0, 0.0, 0.0]] * n, "spacing_mm": [[1.0, 1.0, 1.0]] * n,
            "slicing": ["{}"] * n, "slicing_hash": ["0" * 64] * n,
            "image": list(rng.integers(-1024, 1500, (n, 9216), dtype=np.int16)),
        }
        table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
        pq.write_table(table, root / "slices" / f"part-{p:06d}.parquet")
    return root


CHILD = r"""
import json, resource, sys, time
import numpy as np
from latentstore.slicedata import SliceStream, read_slices
from latentstore.train import batch_indices
store, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "stream":
    s = SliceStream(store, "train", 0.1)
    for step in range(300):
        s.batch(step, 32, 0)
    n = len(s)
else:
    d = read_slices(store, "train", 0.1)
    for step in range(300):
        d.images[batch_indices(len(d), 32, 0, step)]
    n = len(d)
print(json.dumps({"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", default="2000,32000", help="store sizes, comma-separated")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.slices.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            store = make_store(Path(tmp) / f"s{n}", n)
            for mode in ("stream", "in-memory"):
                res = subprocess.run([sys.executable, "-c", CHILD, str(store), mode], capture_output=True, text=True,
                                     check=True)
                rows.append({"slices": n, "mode": mode, **json.loads(res.stdout)})
    print("| store slices | mode | train slices | peak RSS MB | seconds (index + 300 batches of 32) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['slices']} | {r['mode']} | {r['n']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |")
    for mode in ("stream", "in-memory"):
        a, b = (next(r for r in rows if r["mode"] == mode and r["slices"] == n) for n in (sizes[0], sizes[-1]))
        print(f"{mode}: {sizes[-1] / sizes[0]:.0f}x the slices -> {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x the peak RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
