//! Throughput of [`mnemo_embed::Embedder`] on chat-like messages.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p mnemo-embed --example embed_bench -- \
//!     [--model DIR] [--batch 32] [--sentences 1024] [--rounds 3] [--dump FILE]
//! ```
//!
//! The messages are generated deterministically from chat fragments, 10 to 60 tokens long
//! (uniformly spread); the same messages every run. Prints sentences/s and tokens/s of the
//! best round, and the batch latency.

use std::path::PathBuf;
use std::time::Instant;

use mnemo_embed::Embedder;

const OPENERS: &[&str] = &[
    "hey,",
    "ok so",
    "quick question:",
    "thanks!",
    "hmm,",
    "actually,",
    "one more thing:",
    "sorry to bother you, but",
    "",
    "so yesterday",
];

const CLAUSES: &[&str] = &[
    "can you remind me what we decided about the database migration",
    "I tried restarting the server and it still returns a 503 after a few minutes",
    "my flight to Berlin got moved to Thursday morning",
    "please summarise the last conversation with the support team",
    "the invoice for March is missing two line items",
    "what is a good recipe for a vegetarian lasagna",
    "I prefer short answers with code examples",
    "the meeting with Anna is at 3pm in the small room",
    "could you write a haiku about autumn rain",
    "we should cache the embeddings instead of recomputing them every time",
    "my daughter's birthday is on the 14th and she likes dinosaurs",
    "the tests pass locally but fail in CI with a timeout",
    "translate this into French for the newsletter",
    "how many tokens does the model accept",
    "remember that I am allergic to peanuts",
    "the quarterly report needs a chart of revenue by region",
    "why does the query planner ignore the index on created_at",
    "book a table for four people on Friday evening",
    "it worked, thank you so much",
    "the API returns the items in reverse order when I pass a cursor",
];

/// Deterministic messages of 10..=60 tokens (target drawn uniformly).
fn messages(n: usize, count_tokens: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound
    };
    (0..n)
        .map(|_| {
            let target = 10 + next(51);
            let mut text = OPENERS[next(OPENERS.len())].to_string();
            loop {
                let clause = CLAUSES[next(CLAUSES.len())];
                let candidate = if text.is_empty() {
                    clause.to_string()
                } else {
                    format!("{text} {clause}")
                };
                if count_tokens(&candidate) > target && count_tokens(&text) >= 10 {
                    break;
                }
                text = candidate;
                if count_tokens(&text) >= target {
                    break;
                }
                text.push_str(if next(2) == 0 { "." } else { ", and" });
            }
            // Trim to the target with whole words.
            while count_tokens(&text) > target.max(10) {
                match text.rfind(' ') {
                    Some(cut) => text.truncate(cut),
                    None => break,
                }
            }
            text
        })
        .collect()
}

/// CPU seconds (user + system) this process has used, from /proc (Linux); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2");
    let mut batch = 32usize;
    let mut sentences = 1024usize;
    let mut rounds = 3usize;
    let mut dump = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("missing value");
        match arg.as_str() {
            "--model" => model = PathBuf::from(value()),
            "--batch" => batch = value().parse().expect("--batch N"),
            "--sentences" => sentences = value().parse().expect("--sentences N"),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--dump" => dump = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(dir) = std::env::var_os("MNEMO_MODEL_DIR") {
        model = PathBuf::from(dir);
    }

    let embedder = Embedder::load(&model).expect("load model (run scripts/fetch-model.sh)");
    let texts = messages(sentences, &|t| embedder.count_tokens(t).expect("tokenize"));
    let lens: Vec<usize> = texts
        .iter()
        .map(|t| embedder.count_tokens(t).unwrap())
        .collect();
    let tokens: usize = lens.iter().sum();
    println!(
        "{} messages, tokens (with [CLS]/[SEP]) min {} mean {:.1} max {}; batch {batch}; \
         compute threads {}",
        texts.len(),
        lens.iter().min().unwrap(),
        tokens as f64 / texts.len() as f64,
        lens.iter().max().unwrap(),
        rayon::current_num_threads(),
    );
    if let Some(path) = dump {
        // The messages, one per line, to run the same workload elsewhere.
        std::fs::write(&path, texts.join("\n") + "\n").expect("write --dump file");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    // Warm up (allocator, thread pool, page faults on the weights).
    for chunk in refs.chunks(batch).take(2) {
        embedder.embed(chunk).unwrap();
    }

    let mut best = f64::INFINITY;
    let mut best_cpu = f64::INFINITY;
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        for chunk in refs.chunks(batch) {
            let t = Instant::now();
            let out = embedder.embed(chunk).unwrap();
            latencies.push(t.elapsed().as_secs_f64());
            assert_eq!(out.len(), chunk.len());
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_start;
        println!(
            "round {round}: {secs:.2} s, {:.1} sentences/s; {cpu:.2} CPU s, {:.1} sentences per \
             CPU second",
            texts.len() as f64 / secs,
            texts.len() as f64 / cpu,
        );
        best = best.min(secs);
        best_cpu = best_cpu.min(cpu);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] * 1e3;
    println!(
        "best: {:.1} sentences/s, {:.0} tokens/s, {:.1} sentences per CPU second; batch latency \
         p50 {:.1} ms p90 {:.1} ms",
        texts.len() as f64 / best,
        tokens as f64 / best,
        texts.len() as f64 / best_cpu,
        pct(0.5),
        pct(0.9),
    );
}
