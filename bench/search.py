"""Search benchmark, one run: the index latentstore chooses against exact search, filtered search, and a
labels-latents-slices SQL join.

    python bench/search.py --n 1000000 [--store STORE] [--threads 2]

On N synthetic 512-d vectors with cluster structure (L2-normalised, as z_sem is indexed): build time,
index memory, recall@10 and p50/p99 single-query latency of exact search (`IDMap2,Flat`) and of the index
`latentstore.index` chooses for N (HNSW above `EXACT_MAX`, efSearch tuned on build); filtered search
(`latentstore.search.knn`) at 50 %, 5 %, 1 % and 0.1 % selectivity: results returned and recall@10 against
exact search over the filtered subset; a DuckDB join of labels, latents and slices over N rows (Parquet).
With `--store`, the same index figures on the real latents of that store (default model). Ratios are
measured within this run; the summary table is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def clustered(n: int, dim: int = 512, clusters: int = 1000, rank: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors shaped like z_sem: cluster centres (alike vertebrae group) plus variation along a
    `rank`-dimensional subspace (the default model's z_sem has effective rank ~16, NOTES issue 8) plus a
    little isotropic noise. Uniform or isotropic-noise vectors have no neighbour structure at all and
    make every ANN index look bad; real latents do have it."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    basis = rng.standard_normal((rank, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        u = rng.standard_normal((m, rank)).astype(np.float32)
        out[i : i + m] = (centres[rng.integers(0, clusters, m)] + 0.5 * u @ basis
                          + 0.1 * rng.standard_normal((m, dim)).astype(np.float32))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency(index, queries: np.ndarray, k: int = 10) -> tuple[float, float, np.ndarray]:
    """Single queries, one thread (a service answers many queries at once, each on one core)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return _latency(index, queries, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _latency(index, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1000)
        found.append(ids[0])
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bench_index(z: np.ndarray, label: str, n_queries: int, rows: list) -> None:
    import faiss

    from latentstore import index as ix

    ids = np.arange(len(z), dtype=np.int64) * 7 + 3  # ids are not positions
    rng = np.random.default_rng(1)
    queries = z[rng.choice(len(z), n_queries, replace=False)]
    queries = queries + 0.02 * rng.standard_normal(queries.shape).astype(np.float32)  # new cases near stored ones
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    before = rss_mb()
    t0 = time.perf_counter()
    exact = faiss.index_factory(z.shape[1], "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    exact.add_with_ids(z, ids)
    build_exact = time.perf_counter() - t0
    mem_exact = rss_mb() - before
    p50e, p99e, truth = latency(exact, queries)
    rows.append((label, len(z), "IDMap2,Flat (exact)", f"{build_exact:.1f}", f"{mem_exact:.0f}", "1.000", f"{p50e:.2f}", f"{p99e:.2f}"))

    factory = ix.factory_for(len(z))
    if factory != "IDMap2,Flat":
        before = rss_mb()
        t0 = time.perf_counter()
        index = ix._new_index(factory, z)
        index.add_with_ids(z, ids)
        ef, _ = ix._tune_ef(index, z, ids)
        build = time.perf_counter() - t0
        mem = rss_mb() - before
        p50, p99, found = latency(index, queries)
        rows.append((label, len(z), f"{factory} efSearch={ef}", f"{build:.1f}", f"{mem:.0f}", f"{recall(found, truth):.3f}",
                     f"{p50:.2f}", f"{p99:.2f}"))
    else:
        index = exact
    return index, ids, queries


def bench_filtered(index, z: np.ndarray, ids: np.ndarray, queries: np.ndarray, rows: list, k: int = 10) -> None:
    from latentstore.search import knn

    rng = np.random.default_rng(2)
    pos = {int(i): p for p, i in enumerate(ids)}
    for sel in (0.5, 0.05, 0.01, 0.001):
        allowed = np.sort(rng.choice(ids, max(k, int(len(ids) * sel)), replace=False))
        sub = z[[pos[int(i)] for i in allowed]]

        def vectors_of(a, allowed=allowed, sub=sub):
            return allowed, sub

        got, times, full = [], [], 0
        faiss_threads(1)
        for q in queries[:100]:
            t0 = time.perf_counter()
            res, _, method = knn(index, q, k, allowed, vectors_of)
            times.append((time.perf_counter() - t0) * 1000)
            got.append(res)
            full += len(res) == k
        faiss_threads(None)
        truth = [allowed[np.argsort(-(sub @ q))[:k]] for q in queries[:100]]
        rows.append(("filtered", len(ids), f"{sel:.1%} selectivity ({method.split(' (')[0]})", "", "",
                     f"{recall(np.array(got), np.array(truth)):.3f}", f"{np.percentile(times, 50):.2f}",
                     f"{np.percentile(times, 99):.2f} ({full}/100 with k)"))


_THREADS: list[int] = []


def faiss_threads(n: int | None) -> None:
    import faiss

    if n is not None:
        _THREADS.append(faiss.omp_get_max_threads())
        faiss.omp_set_num_threads(n)
    elif _THREADS:
        faiss.omp_set_num_threads(_THREADS.pop())


def bench_join(z: np.ndarray, rows: list) -> None:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(z)
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as d:
        scan = rng.integers(0, n // 8, n)
        level = rng.integers(8, 25, n).astype(np.int16)
        sid = np.arange(n, dtype=np.int64)
        pq.write_table(pa.table({"slice_id": sid, "scan_id": pa.array([f"scan-{s:016x}" for s in scan]), "level": level}),
                       f"{d}/slices.parquet")
        vec = pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), 512)
        pq.write_table(pa.table({"slice_id": sid, "z_sem": vec}), f"{d}/latents.parquet", compression="zstd",
                       use_dictionary=False, row_group_size=65536)
        pq.write_table(pa.table({"scan_id": pa.array([f"scan-{s:016x}" for s in scan]), "level": level,
                                 "grade": rng.choice([0, 1, 2, 3], n, p=[0.8, 0.1, 0.07, 0.03]).astype(np.int16)}),
                       f"{d}/labels.parquet")
        con = duckdb.connect()
        t0 = time.perf_counter()
        out = con.execute(f"""
            SELECT l.grade, count(*) AS n, avg(list_extract(t.z_sem, 1)) AS z1
            FROM read_parquet('{d}/labels.parquet') l
            JOIN read_parquet('{d}/slices.parquet') s USING (scan_id, level)
            JOIN read_parquet('{d}/latents.parquet') t USING (slice_id)
            GROUP BY ALL ORDER BY 1""").fetchall()
        dt = time.perf_counter() - t0
    rows.append(("SQL join", n, "labels x slices x latents, GROUP BY grade", "", "", "", f"{dt * 1000:.0f}",
                 f"{sum(r[1] for r in out)} joined rows"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--store", type=Path, help="also bench the real latents of this store (default model)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows: list = []
    t0 = time.perf_counter()
    z = clustered(args.n)
    print(f"{args.n} clustered vectors in {time.perf_counter() - t0:.1f} s", flush=True)
    index, ids, queries = bench_index(z, "synthetic", args.queries, rows)
    bench_filtered(index, z, ids, queries, rows)
    bench_join(z, rows)
    if args.store:
        import latentstore
        from latentstore.index import normalise, read_latents, resolve_model_id

        st = latentstore.connect(args.store)
        _, real = read_latents(st, resolve_model_id(st, None))
        bench_index(normalise(real), "real latents", min(args.queries, len(real)), rows)
    head = ("data", "N", "index", "build s", "memory MB", "recall@10", "p50 ms", "p99 ms")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
