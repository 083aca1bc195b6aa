#!/usr/bin/env python3
"""Peer ANN libraries on the same data as mnemo-search's vector_bench.

Usage:
    cargo run --release -p mnemo-search --example vector_bench -- --owner-n 0 --npy-dir /var/tmp/annbench
    python3 crates/mnemo-search/bench/ann_peers.py /var/tmp/annbench

Reads base.npy and queries.npy (float32, L2-normalised), computes the exact top-10 by inner
product with numpy, then builds hnswlib and faiss HNSW indexes (M=16, efConstruction=128,
inner product, one thread) and prints single-thread QPS and recall@10 for a sweep of ef.
Queries are sent as one batch per ef with one thread.
Needs: pip install numpy hnswlib faiss-cpu (either library may be missing; it is skipped).
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

EFS = [16, 24, 32, 40, 48, 56, 64, 96, 128, 256]
K = 10
RECALL_TARGET = 0.99


def report_best(name, results):
    ok = [(qps, ef) for ef, qps, r in results if r >= RECALL_TARGET]
    if ok:
        qps, ef = max(ok)
        print(f"{name} best at recall@10 >= {RECALL_TARGET}: {qps:.0f} QPS (ef={ef})")
    else:
        print(f"{name}: no ef reached recall@10 >= {RECALL_TARGET}")


def recall(found, truth):
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return hits / (len(truth) * K)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/annbench"
    base = np.load(os.path.join(d, "base.npy"))
    queries = np.load(os.path.join(d, "queries.npy"))
    n, dim = base.shape
    print(f"data: {n} x {dim}, {len(queries)} queries")
    t = time.perf_counter()
    scores = queries @ base.T
    truth = np.argpartition(-scores, K, axis=1)[:, :K]
    print(f"exact top-{K} by numpy matmul: {time.perf_counter() - t:.1f}s")

    try:
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=dim)
        idx.init_index(max_elements=n, M=16, ef_construction=128, random_seed=1)
        idx.set_num_threads(1)
        t = time.perf_counter()
        idx.add_items(base, np.arange(n), num_threads=1)
        print(f"hnswlib build (1 thread): {time.perf_counter() - t:.1f}s")
        results = []
        for ef in EFS:
            idx.set_ef(max(ef, K))
            t = time.perf_counter()
            labels, _ = idx.knn_query(queries, k=K, num_threads=1)
            el = time.perf_counter() - t
            r = recall(labels, truth)
            results.append((ef, len(queries) / el, r))
            print(f"hnswlib      ef={ef:>3}: {len(queries) / el:>7.0f} QPS single-thread, "
                  f"recall@10 {r:.4f}")
        report_best("hnswlib", results)
    except ImportError as e:
        print(f"hnswlib skipped: {e}")

    try:
        import faiss

        faiss.omp_set_num_threads(1)
        idx = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 128
        t = time.perf_counter()
        idx.add(base)
        print(f"faiss HNSW build (1 thread): {time.perf_counter() - t:.1f}s")
        results = []
        for ef in EFS:
            idx.hnsw.efSearch = max(ef, K)
            t = time.perf_counter()
            _, labels = idx.search(queries, K)
            el = time.perf_counter() - t
            r = recall(labels, truth)
            results.append((ef, len(queries) / el, r))
            print(f"faiss HNSW   ef={ef:>3}: {len(queries) / el:>7.0f} QPS single-thread, "
                  f"recall@10 {r:.4f}")
        report_best("faiss HNSW", results)
    except ImportError as e:
        print(f"faiss skipped: {e}")


if __name__ == "__main__":
    main()
