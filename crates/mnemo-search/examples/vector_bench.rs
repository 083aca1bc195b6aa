//! Vector search benchmark (not a test).
//!
//! ```text
//! cargo run --release -p mnemo-search --example vector_bench -- \
//!     [--owner-n 10000] [--ann-n 100000] [--dim 384] [--queries 1000] [--npy-dir DIR]
//!     [--quant f32|f16|i8]
//! ```
//!
//! 1. Per-owner scope, `owner-n` x `dim`: p50/p99 of `SearchIndex::search` (exact, top 10)
//!    against a naive scalar brute-force loop on the same data.
//! 2. Tenant-wide scope, `ann-n` x `dim` clustered vectors: ANN build time, then
//!    single-thread QPS and recall@10 for a sweep of `ef`.
//!
//! With `--npy-dir`, writes `base.npy` and `queries.npy` (float32) of part 2 for
//! `bench/ann_peers.py`. With `--serve`, part 2 builds the graph, prints `ready`, then reads
//! one `ef` (optionally followed by a number of passes over the query set) per line from stdin
//! and answers each with `QPS recall` for the query set: the mode
//! `bench/ann_peers.py --mnemo BIN` uses to interleave mnemo with its peers in one run.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mnemo_search::{
    Doc, IndexOp, Mode, Quantization, SearchConfig, SearchIndex, SearchQuery, Source,
};

/// Clustered, embedding-shaped data: the same generator as the tests.
#[path = "../tests/common/mod.rs"]
mod common;
use common::Clustered;

/// `ef` values swept in part 2; the same list as `bench/ann_peers.py`, so every system is
/// compared at the cheapest setting that reaches the recall target.
const EF_SWEEP: [usize; 10] = [16, 24, 32, 40, 48, 56, 64, 96, 128, 256];

/// Recall@10 at which systems are compared.
const RECALL_TARGET: f64 = 0.99;

struct Args {
    owner_n: usize,
    ann_n: usize,
    dim: usize,
    queries: usize,
    npy_dir: Option<String>,
    quant: Quantization,
    serve: bool,
}

fn args() -> Args {
    let mut a = Args {
        owner_n: 10_000,
        ann_n: 100_000,
        dim: 384,
        queries: 1000,
        npy_dir: None,
        quant: SearchConfig::default().ann_quantization,
        serve: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        if v[i] == "--serve" {
            a.serve = true;
            i += 1;
            continue;
        }
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--owner-n" => a.owner_n = val.parse().expect("--owner-n"),
            "--ann-n" => a.ann_n = val.parse().expect("--ann-n"),
            "--dim" => a.dim = val.parse().expect("--dim"),
            "--queries" => a.queries = val.parse().expect("--queries"),
            "--npy-dir" => a.npy_dir = Some(val),
            "--quant" => {
                a.quant = match val.as_str() {
                    "f32" => Quantization::F32,
                    "f16" => Quantization::F16,
                    "i8" => Quantization::I8,
                    q => panic!("--quant f32|f16|i8, not {q}"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn doc(i: usize, owner: &str, v: Vec<f32>) -> Doc {
    Doc {
        tenant: "bench".into(),
        source: Source::Items,
        id: format!("d{i}"),
        owner: Some(owner.into()),
        conversation_id: None,
        role: None,
        created_at: 0,
        metadata: BTreeMap::new(),
        text: String::new(),
        vector: Some(v),
        expires_at_ms: None,
    }
}

/// CPU time of the calling thread: unlike wall time, not inflated when other processes share
/// the cores.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

/// The naive reference: scalar dot products, full sort.
fn naive_top10(data: &[Vec<f32>], q: &[f32]) -> Vec<usize> {
    let mut s: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i))
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    s.truncate(10);
    s.into_iter().map(|x| x.1).collect()
}

fn write_npy(path: &Path, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        rows.len(),
        cols
    );
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.flush()
}

fn main() {
    let a = args();
    println!(
        "mnemo-search vector_bench: owner_n={} ann_n={} dim={} queries={}",
        a.owner_n, a.ann_n, a.dim, a.queries
    );

    // ---- 1. per-owner exact search ----
    if a.owner_n > 0 {
        let index = SearchIndex::new(SearchConfig::default()).unwrap();
        let mut data = Clustered::new(1, a.dim, 200, 0.6);
        let vectors: Vec<Vec<f32>> = (0..a.owner_n).map(|_| data.point()).collect();
        let mut ops: Vec<IndexOp> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| IndexOp::Upsert(doc(i, "alice", v.clone())))
            .collect();
        // Another owner's documents in the same tenant (not scanned).
        ops.extend(
            (0..a.owner_n).map(|i| IndexOp::Upsert(doc(a.owner_n + i, "bob", data.point()))),
        );
        index.apply(ops).unwrap();
        let queries: Vec<Vec<f32>> = (0..a.queries).map(|_| data.point()).collect();

        let mut lat = Vec::with_capacity(queries.len());
        let mut cpu = Vec::with_capacity(queries.len());
        let mut agree = 0;
        for q in &queries {
            let mut sq = SearchQuery::new("bench", Source::Items, Mode::Vector, 10);
            sq.owner = Some("alice".into());
            sq.vector = Some(q.clone());
            let (t, c) = (Instant::now(), thread_cpu());
            let hits = index.search(&sq).unwrap();
            cpu.push(thread_cpu() - c);
            lat.push(t.elapsed());
            let want = naive_top10(&vectors, q);
            let got: Vec<usize> = hits.iter().map(|h| h.id[1..].parse().unwrap()).collect();
            agree += usize::from(got == want);
        }
        lat.sort();
        cpu.sort();
        let mut naive = Vec::with_capacity(queries.len());
        let mut naive_cpu = Vec::with_capacity(queries.len());
        for q in &queries {
            let (t, c) = (Instant::now(), thread_cpu());
            std::hint::black_box(naive_top10(&vectors, q));
            naive_cpu.push(thread_cpu() - c);
            naive.push(t.elapsed());
        }
        naive.sort();
        naive_cpu.sort();
        println!(
            "per-owner exact {}x{} top-10 ({} queries, identical to the naive top-10 in {agree}):",
            a.owner_n,
            a.dim,
            queries.len()
        );
        for (name, wall, cpu) in [
            ("SearchIndex::search", &lat, &cpu),
            ("naive scalar loop  ", &naive, &naive_cpu),
        ] {
            println!(
                "  {name}: wall p50 {:>5.0} us p99 {:>5.0} us | thread CPU p50 {:>5.0} us p99 {:>5.0} us",
                pct(wall, 0.50),
                pct(wall, 0.99),
                pct(cpu, 0.50),
                pct(cpu, 0.99)
            );
        }
    }

    // ---- 2. tenant-wide ANN ----
    if a.ann_n > 0 {
        let mut data = Clustered::new(2, a.dim, 500, 0.6);
        let vectors: Vec<Vec<f32>> = (0..a.ann_n).map(|_| data.point()).collect();
        let queries: Vec<Vec<f32>> = (0..a.queries).map(|_| data.point()).collect();
        if let Some(dir) = &a.npy_dir {
            std::fs::create_dir_all(dir).unwrap();
            write_npy(&Path::new(dir).join("base.npy"), &vectors).unwrap();
            write_npy(&Path::new(dir).join("queries.npy"), &queries).unwrap();
            println!("wrote {dir}/base.npy and {dir}/queries.npy");
        }
        let index = SearchIndex::new(SearchConfig {
            ann_quantization: a.quant,
            ..SearchConfig::default()
        })
        .unwrap();
        let t = Instant::now();
        for (b, chunk) in vectors.chunks(10_000).enumerate() {
            let ops = chunk
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    IndexOp::Upsert(doc(b * 10_000 + j, &format!("o{}", j % 100), v.clone()))
                })
                .collect();
            index.apply(ops).unwrap();
        }
        let loaded = t.elapsed();
        while index.stats("bench").ann_pending > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "ANN {}x{}: indexed (catalog + text) in {:.1}s, HNSW graph complete after {:.1}s",
            a.ann_n,
            a.dim,
            loaded.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );

        // Ground truth by exact scan (two threads).
        let t = Instant::now();
        let truth: Vec<HashSet<usize>> = std::thread::scope(|s| {
            let parts: Vec<_> = queries
                .chunks(queries.len().div_ceil(2))
                .map(|qs| {
                    let vectors = &vectors;
                    s.spawn(move || {
                        qs.iter()
                            .map(|q| {
                                let mut sc: Vec<(f32, usize)> = vectors
                                    .iter()
                                    .enumerate()
                                    .map(|(i, v)| (mnemo_search::dot(v, q), i))
                                    .collect();
                                sc.select_nth_unstable_by(9, |x, y| y.0.total_cmp(&x.0));
                                sc[..10].iter().map(|x| x.1).collect::<HashSet<_>>()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
        });
        let gt_time = t.elapsed();
        println!(
            "exact brute force (2 threads): {:.0} QPS per thread",
            queries.len() as f64 / gt_time.as_secs_f64() / 2.0
        );

        if a.serve {
            println!("ready");
            std::io::stdout().flush().unwrap();
            for line in std::io::stdin().lines() {
                let line = line.unwrap();
                let mut words = line.split_whitespace().map(|w| w.parse::<usize>());
                let Some(Ok(ef)) = words.next() else {
                    break;
                };
                let passes = match words.next() {
                    Some(Ok(p)) => p.max(1),
                    _ => 1,
                };
                let (qps, recall) = sweep_point(&index, &queries, &truth, ef, passes);
                println!("{qps:.1} {recall:.4}");
                std::io::stdout().flush().unwrap();
            }
            return;
        }
        let mut best: Option<(f64, usize)> = None;
        for ef in EF_SWEEP {
            let (qps, recall) = sweep_point(&index, &queries, &truth, ef, 1);
            println!(
                "usearch ANN ({:?} graph, exact re-score) ef={ef:>3}: {qps:>6.0} QPS single-thread, recall@10 {recall:.4}",
                a.quant,
            );
            if recall >= RECALL_TARGET && best.is_none_or(|(q, _)| qps > q) {
                best = Some((qps, ef));
            }
        }
        match best {
            Some((qps, ef)) => {
                println!("mnemo best at recall@10 >= {RECALL_TARGET}: {qps:.0} QPS (ef={ef})")
            }
            None => println!("mnemo: no ef reached recall@10 >= {RECALL_TARGET}"),
        }
    }
}

/// Single-thread QPS and recall@10 of the whole query set, run `passes` times, at search
/// breadth `ef`.
fn sweep_point(
    index: &SearchIndex,
    queries: &[Vec<f32>],
    truth: &[HashSet<usize>],
    ef: usize,
    passes: usize,
) -> (f64, f64) {
    index.set_ann_expansion_search(ef);
    let mut found = 0;
    let t = Instant::now();
    for (q, want) in std::iter::repeat_n(queries.iter().zip(truth), passes).flatten() {
        let mut sq = SearchQuery::new("bench", Source::Items, Mode::Vector, 10);
        sq.vector = Some(q.clone());
        let hits = index.search(&sq).unwrap();
        found += hits
            .iter()
            .filter(|h| want.contains(&h.id[1..].parse::<usize>().unwrap()))
            .count();
    }
    let el = t.elapsed();
    let answered = queries.len() * passes;
    (
        answered as f64 / el.as_secs_f64(),
        found as f64 / (answered * 10) as f64,
    )
}
