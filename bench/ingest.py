"""Benchmark of `latentstore ingest`: throughput against bare NIfTI decoding, and memory against archive size.

    python bench/ingest.py [--patients 25,100] [--workers 1,2] [--seed 0] [--work DIR] [--json OUT.json]

For every archive size N (a synthetic archive, `latentstore synth OUT --patients N`, built once and
cached under --work):

* **baseline**: load and decompress every CT of the archive with nibabel in this process
  (`np.asanyarray(nib.load(ct).dataobj)`), nothing else: the floor any ingest pays.
* **ingest** with W Ray workers, run as the CLI runs it (an empty store; `ingest()` starts a local Ray
  with W CPUs and stops it): scan, hash, load, cut, write and publish Parquet, record errors. Throughput
  counts from the call of `ingest()` to its return (Ray's and the workers' start included); Ray's start
  alone is also timed (`ray_start_s`, a separate init/shutdown) and taken out in `ratio_after_ray_start`.

Throughput is reported as slices per second and as the ratio to the baseline measured in the same run
(`ratio = ingest slices/s / baseline slices/s`), since absolute times on a shared machine are noisy.
Memory: peak PSS (proportional set size, so shared pages are not counted twice; RSS where PSS is not
available) of the driver, of the Ray workers, and of everything (driver + workers + Ray's own
processes), sampled every 100 ms from /proc. The driver holds only small per-scan summaries and a worker
one volume at a time, so the peaks should not grow from 25 to 100 patients. CPU time of the workers
and of the whole tree (`cpu_ratio_*`, over the baseline's CPU time) is reported too: on a shared
machine it is far steadier than seconds. Worker scaling needs idle cores: on a busy 2-core machine
2 workers cannot beat 1; rerun on the target machine before drawing conclusions about scaling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from latentstore.ingest import scan_archive  # noqa: E402
from latentstore.ingest.run import ingest  # noqa: E402

MiB = 1024**2


# -- memory sampling from /proc ----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def _memory(pid: int) -> int:
    """PSS in bytes (RSS where smaps_rollup is unavailable); 0 for a process that is gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (0 for a process that is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _is_worker(cmdline: str) -> bool:
    # Ray renames its task workers "ray::IDLE" / "ray::<task name>" (its agents are "ray::...Agent");
    # before that a worker is "python .../default_worker.py ...". The raylet only names that script.
    argv = cmdline.split()
    if not argv:
        return False
    if argv[0].startswith("ray::"):
        return "Agent" not in argv[0]
    return len(argv) > 1 and argv[1].endswith("default_worker.py")


class ProcessSampler(threading.Thread):
    """Peak memory and CPU time of this process tree (driver, Ray workers, Ray's own processes),
    sampled in the background. CPU time counts what the processes used, not the wall clock, so it
    is much less disturbed by other load on a shared machine than seconds are."""

    def __init__(self, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.interval_s, self.stop_flag = interval_s, threading.Event()
        self.peak = {"driver": 0, "workers": 0, "total": 0}
        self.cpu: dict[int, tuple[bool, float]] = {}  # pid -> (is a worker, last CPU seconds seen)
        self.root = os.getpid()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self) -> None:
        driver = workers = total = 0
        for pid in _descendants(self.root):
            m = _memory(pid)
            was_worker, cpu = self.cpu.get(pid, (False, 0.0))
            # Sticky: an exiting worker's cmdline reads empty, and it must still count as a worker.
            worker = was_worker or (pid != self.root and _is_worker(_cmdline(pid)))
            total += m
            driver += m if pid == self.root else 0
            workers += m if worker else 0
            self.cpu[pid] = (worker, max(cpu, _cpu_seconds(pid)))
        for key, value in (("driver", driver), ("workers", workers), ("total", total)):
            self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict[str, float]:
        self.stop_flag.set()
        self.join()
        self.sample()
        return {
            **{f"peak_{k}_mib": round(v / MiB, 1) for k, v in self.peak.items()},
            "cpu_workers_s": round(sum(c for w, c in self.cpu.values() if w), 2),
            "cpu_total_s": round(sum(c for _, c in self.cpu.values()), 2),
        }


# -- the benchmark ------------------------------------------------------------------------------------------


def make_archive(root: Path, patients: int, seed: int) -> Path:
    """The synthetic archive of `patients` patients (cached: built once per size and seed).

    Built by `latentstore synth` in a subprocess: synth forks worker processes, and forking a process
    that has loaded Ray crashes the children, so no archive is made inside this (Ray-using) process.
    """
    out = root / f"archive-{patients}-seed{seed}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        cli = [sys.executable, "-m", "latentstore.cli", "synth", str(out), "--patients", str(patients), "--seed", str(seed)]
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)
        (out / ".complete").write_text(f"{time.perf_counter() - t:.1f} s\n")
    return out


def baseline(archive: Path) -> dict:
    """Seconds to load and decompress every CT of `archive` with nibabel, and the voxels read."""
    sources, _ = scan_archive(archive)
    t, cpu = time.perf_counter(), time.process_time()
    voxels = 0
    for src in sources:
        if src.format == "nifti":
            voxels += np.asanyarray(nib.load(src.ct).dataobj).size
    return {"scans": len(sources), "seconds": time.perf_counter() - t, "cpu_s": time.process_time() - cpu, "voxels": voxels}


def ray_start_seconds(workers: int) -> float:
    """Seconds for `ray.init` of a local Ray with `workers` CPUs (measured apart, then shut down)."""
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, object_store_memory=256 * MiB)
    seconds = time.perf_counter() - t
    ray.shutdown()
    return seconds


def ingest_run(archive: Path, store: Path, workers: int) -> dict:
    """One cold ingest into an empty store, exactly as the CLI runs it: `ingest()` starts its own local
    Ray with `workers` CPUs and shuts it down at the end."""
    shutil.rmtree(store, ignore_errors=True)
    ray_start = ray_start_seconds(workers)
    cpu0 = _cpu_seconds(os.getpid())
    sampler = ProcessSampler()
    sampler.start()
    t = time.perf_counter()
    try:
        summary = ingest(store, archive, workers=workers, progress=False)
        seconds = time.perf_counter() - t
    finally:
        memory = sampler.stop()
    memory["cpu_total_s"] = round(memory["cpu_total_s"] - cpu0, 2)  # the driver's CPU before this run is not ours
    parts = list((store / "slices").glob("*.parquet"))
    return {
        "workers": workers, "ray_start_s": round(ray_start, 2), "seconds": round(seconds, 2),
        "scans": summary.scans_ingested, "slices": summary.slices_written, "errors": summary.errors,
        "store_mib": round(sum(p.stat().st_size for p in parts) / MiB, 2), **memory,
    }  # fmt: skip


def run(patients: list[int], workers: list[int], seed: int, work: Path) -> list[dict]:
    rows = []
    archives = {n: make_archive(work, n, seed) for n in patients}  # all before Ray is loaded (see make_archive)
    for n in patients:
        archive = archives[n]
        archive_mib = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file()) / MiB
        for w in workers:
            base = baseline(archive)  # right before the run it is compared with: the same load on the machine
            r = ingest_run(archive, work / f"store-{n}-{w}", w)
            base_rate = r["slices"] / base["seconds"]  # slices/s if ingest cost no more than decoding
            rate = r["slices"] / r["seconds"]  # what a user sees, Ray's start included
            steady = r["slices"] / max(r["seconds"] - r["ray_start_s"], 1e-9)  # Ray's start taken out
            rows.append({
                "patients": n, "archive_mib": round(archive_mib, 1), "baseline_s": round(base["seconds"], 2),
                "baseline_slices_per_s": round(base_rate, 1), "slices_per_s": round(rate, 1),
                "ratio": round(rate / base_rate, 3), "slices_per_s_after_ray_start": round(steady, 1),
                "ratio_after_ray_start": round(steady / base_rate, 3), "baseline_cpu_s": round(base["cpu_s"], 2),
                "cpu_ratio_workers": round(r["cpu_workers_s"] / base["cpu_s"], 2),
                "cpu_ratio_total": round(r["cpu_total_s"] / base["cpu_s"], 2), **r,
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", default="25,100", help="archive sizes, comma-separated")
    p.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "latentstore-bench-ingest",
                   help="archives (cached) and stores; outside the checkout by default")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    rows = run([int(x) for x in a.patients.split(",")], [int(x) for x in a.workers.split(",")], a.seed, a.work)

    from rich.console import Console
    from rich.table import Table

    # One column per run, one row per measure: readable in a terminal of any width.
    table = Table(title=f"ingest benchmark, {os.cpu_count()} CPUs (ratio: ingest slices/s over nibabel-decode slices/s, same run)")
    table.add_column("measure")
    for r in rows:
        table.add_column(f"{r['patients']} pat, {r['workers']} w", justify="right")
    measures = ["scans", "slices", "archive_mib", "baseline_s", "baseline_slices_per_s", "seconds", "slices_per_s", "ratio",
                "ray_start_s", "slices_per_s_after_ray_start", "ratio_after_ray_start", "peak_driver_mib",
                "peak_workers_mib", "peak_total_mib", "baseline_cpu_s", "cpu_workers_s", "cpu_total_s",
                "cpu_ratio_workers", "cpu_ratio_total", "store_mib", "errors"]  # fmt: skip
    for m in measures:
        table.add_row(m, *(str(r[m]) for r in rows))
    Console().print(table)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
