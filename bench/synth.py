"""Benchmark `latentstore synth`: patients per second and peak memory against the patient count.

    python bench/synth.py                       # 20 and 60 patients, 2 workers
    python bench/synth.py --patients 20 --dicom

Each size runs in a fresh child process (so `ru_maxrss` belongs to that run alone) into a temporary
folder that is deleted afterwards. Peak RSS is reported for the driver process and for the largest
worker; if generation streams one patient at a time, neither grows with the patient count. The ratio
column divides each run's patients/s by the first run's, which is what to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(patients: int, workers: int, dicom: bool, seed: int) -> None:
    """Run one archive and print a JSON line with timings and peak RSS (MiB)."""
    from latentstore.synth import synth_archive

    out = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    try:
        start = time.perf_counter()
        summary = synth_archive(out / "archive", patients=patients, seed=seed, dicom=dicom, workers=workers,
                                progress=False)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (out / "archive").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    # Linux reports ru_maxrss in KiB; RUSAGE_CHILDREN is the largest finished worker.
    print(json.dumps({
        "patients": patients, "workers": workers, "dicom": dicom, "seconds": round(seconds, 2),
        "patients_per_s": round(patients / seconds, 3), "vertebrae": summary["vertebrae"],
        "grades": summary["grades"], "archive_mb": round(size / 2**20, 1),
        "driver_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, nargs="+", default=[20, 60], help="archive sizes to time")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1 = in the driver)")
    ap.add_argument("--dicom", action="store_true", help="also write the DICOM studies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.patients[0], args.workers, args.dicom, args.seed)
        return
    rows = []
    for n in args.patients:
        cmd = [sys.executable, __file__, "--child", "--patients", str(n), "--workers", str(args.workers),
               "--seed", str(args.seed)] + (["--dicom"] if args.dicom else [])
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    base = rows[0]["patients_per_s"]
    head = f"{'patients':>8} {'workers':>7} {'dicom':>5} {'seconds':>8} {'patients/s':>10} {'ratio':>6} " \
           f"{'vertebrae':>9} {'archive MB':>10} {'driver RSS MB':>13} {'worker RSS MB':>13}"
    print(head)
    for r in rows:
        print(f"{r['patients']:>8} {r['workers']:>7} {str(r['dicom']):>5} {r['seconds']:>8.1f} "
              f"{r['patients_per_s']:>10.3f} {r['patients_per_s'] / base:>6.2f} {r['vertebrae']:>9} "
              f"{r['archive_mb']:>10.1f} {r['driver_rss_mb']:>13.1f} {r['worker_rss_mb']:>13.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
