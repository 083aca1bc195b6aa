#!/usr/bin/env python3
"""mnemo's ANN search side by side with hnswlib and faiss HNSW, on the same vectors.

Usage (one run, all systems interleaved; the figure recorded in docs/benchmarks.md):
    cargo build --release -p mnemo-search --example vector_bench
    python3 crates/mnemo-search/bench/ann_peers.py /var/tmp/annbench \\
        --mnemo target/release/examples/vector_bench [--rounds 3] [--passes 3]

Peers only, on vectors written earlier by vector_bench --npy-dir DIR:
    python3 crates/mnemo-search/bench/ann_peers.py DIR

With --mnemo, the script starts vector_bench in its --serve mode, which generates the data
set (100k x 384, 500 gaussian clusters, normalised), writes base.npy and queries.npy into DIR
and builds mnemo's graph. The script then builds hnswlib and faiss HNSW indexes on the same
vectors (M=16, efConstruction=128, inner product, one thread) and measures every system at
each ef of the sweep, `--rounds` times, rotating which system goes first, so slow phases of
the machine hit all systems alike. Each (system, ef) reports the median QPS of its rounds
(one thread, `--passes` times the 1000 queries per round) and its recall@10 against numpy's exact top 10.
A system's figure is its best median QPS among the ef values reaching recall@10 >= 0.99.
Needs: pip install numpy hnswlib faiss-cpu (a missing peer library is skipped).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

EFS = [16, 24, 32, 40, 48, 56, 64, 96, 128, 256]
K = 10
RECALL_TARGET = 0.99


def recall(found, truth):
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return hits / (len(truth) * K)


class Mnemo:
    """vector_bench --serve: one line per ef in, `QPS recall` out."""

    def __init__(self, binary, data_dir, name="mnemo"):
        self.name = name
        self.proc = subprocess.Popen(
            [binary, "--owner-n", "0", "--npy-dir", data_dir, "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            print(f"  {name}: {line.rstrip()}")
            if line.strip() == "ready":
                return
        sys.exit("vector_bench --serve ended before it was ready")

    def measure(self, ef, passes):
        self.proc.stdin.write(f"{ef} {passes}\n")
        self.proc.stdin.flush()
        qps, r = self.proc.stdout.readline().split()
        return float(qps), float(r)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class Hnswlib:
    name = "hnswlib"

    def __init__(self, base, queries, truth):
        import hnswlib

        n, dim = base.shape
        self.idx = hnswlib.Index(space="ip", dim=dim)
        self.idx.init_index(max_elements=n, M=16, ef_construction=128, random_seed=1)
        self.idx.set_num_threads(1)
        t = time.perf_counter()
        self.idx.add_items(base, np.arange(n), num_threads=1)
        print(f"hnswlib build (1 thread): {time.perf_counter() - t:.1f}s")
        self.queries, self.truth = queries, truth

    def measure(self, ef, passes):
        self.idx.set_ef(max(ef, K))
        t = time.perf_counter()
        for _ in range(passes):
            labels, _ = self.idx.knn_query(self.queries, k=K, num_threads=1)
        rate = passes * len(self.queries) / (time.perf_counter() - t)
        return rate, recall(labels, self.truth)


class Faiss:
    name = "faiss"

    def __init__(self, base, queries, truth):
        import faiss

        faiss.omp_set_num_threads(1)
        self.idx = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        self.idx.hnsw.efConstruction = 128
        t = time.perf_counter()
        self.idx.add(base)
        print(f"faiss HNSW build (1 thread): {time.perf_counter() - t:.1f}s")
        self.queries, self.truth = queries, truth

    def measure(self, ef, passes):
        self.idx.hnsw.efSearch = max(ef, K)
        t = time.perf_counter()
        for _ in range(passes):
            _, labels = self.idx.search(self.queries, K)
        rate = passes * len(self.queries) / (time.perf_counter() - t)
        return rate, recall(labels, self.truth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="/var/tmp/annbench")
    ap.add_argument("--mnemo", help="vector_bench binary, run in its --serve mode")
    ap.add_argument("--mnemo-baseline", help="a second vector_bench binary measured beside "
                    "--mnemo under the name mnemo-baseline (to compare two builds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3,
                    help="passes over the query set per measurement")
    args = ap.parse_args()

    systems = []
    if args.mnemo:
        os.makedirs(args.dir, exist_ok=True)
        systems.append(Mnemo(args.mnemo, args.dir))
        if args.mnemo_baseline:
            systems.append(Mnemo(args.mnemo_baseline, args.dir, "mnemo-baseline"))
    base = np.load(os.path.join(args.dir, "base.npy"))
    queries = np.load(os.path.join(args.dir, "queries.npy"))
    n, dim = base.shape
    print(f"data: {n} x {dim}, {len(queries)} queries")
    t = time.perf_counter()
    scores = queries @ base.T
    truth = np.argpartition(-scores, K, axis=1)[:, :K]
    print(f"exact top-{K} by numpy matmul: {time.perf_counter() - t:.1f}s")
    for peer in (Hnswlib, Faiss):
        try:
            systems.append(peer(base, queries, truth))
        except ImportError as e:
            print(f"{peer.name} skipped: {e}")

    rounds = {(s.name, ef): [] for s in systems for ef in EFS}
    recalls = {}
    for r in range(args.rounds):
        for ef in EFS:
            order = systems[r % len(systems):] + systems[:r % len(systems)]
            for s in order:
                qps, rec = s.measure(ef, args.passes)
                rounds[(s.name, ef)].append(qps)
                recalls[(s.name, ef)] = rec
        print(f"round {r + 1}/{args.rounds} done")
    for s in systems:
        if isinstance(s, Mnemo):
            s.close()

    names = [s.name for s in systems]
    print(f"\nmedian QPS of {args.rounds} rounds of {args.passes} passes (single thread) / recall@10")
    print("| ef | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for ef in EFS:
        cells = [f"{statistics.median(rounds[(nm, ef)]):,.0f} / {recalls[(nm, ef)]:.4f}"
                 for nm in names]
        print(f"| {ef} | " + " | ".join(cells) + " |")
    best = {}
    for nm in names:
        ok = [(statistics.median(rounds[(nm, ef)]), ef) for ef in EFS
              if recalls[(nm, ef)] >= RECALL_TARGET]
        if ok:
            best[nm] = max(ok)
            print(f"{nm} best at recall@10 >= {RECALL_TARGET}: {best[nm][0]:,.0f} QPS "
                  f"(ef={best[nm][1]})")
        else:
            print(f"{nm}: no ef reached recall@10 >= {RECALL_TARGET}")
    if "mnemo" in best:
        for nm in names:
            if nm != "mnemo" and nm in best:
                print(f"mnemo / {nm} at recall@10 >= {RECALL_TARGET}: "
                      f"{best['mnemo'][0] / best[nm][0]:.2f}x")


if __name__ == "__main__":
    main()
