//! `mnemo-bench load`: drive one running mnemo server with a single write workload.

use crate::http::Client;
use crate::run::percentile;
use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Write workload of `load`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Workload {
    /// Durable append of one message to a random conversation.
    Append,
    /// Durable put of a 1 KiB value to a random key.
    KvPut,
    /// Append a message carrying a unique word, then at once search for that word: the
    /// latency reported is the search's (write-to-searchable delay plus the query), and
    /// every search that misses its write counts as an error.
    AppendSearch,
}

/// Text of the appended messages.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Text {
    /// One word of 200 random letters (cheap to index and to embed: a handful of tokens).
    Letters,
    /// Random lowercase words, log-normal length with a median of 200 bytes (the user
    /// messages of the `compare` data set). Random letters split into many word pieces, so
    /// for an embedding model this is long text (about 100–250 tokens per message).
    Words,
    /// English chat messages: an opener and 1–4 clauses from a fixed list (about 10–60
    /// tokens, 40–300 bytes), like the messages of `mnemo-embed`'s `embed_bench`.
    Chat,
}

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

fn chat_message(rng: &mut impl Rng) -> String {
    let mut text = OPENERS[rng.random_range(0..OPENERS.len())].to_string();
    for i in 0..rng.random_range(1..=4) {
        if i > 0 {
            text.push_str(if rng.random() { "." } else { ", and" });
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(CLAUSES[rng.random_range(0..CLAUSES.len())]);
    }
    text
}

/// Options of `mnemo-bench load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Base URL of the server (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Workload to run.
    #[arg(long, value_enum, default_value = "append")]
    workload: Workload,
    /// Concurrency levels, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Conversations (append) or keys (kv-put) to spread writes over.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Text of appended messages.
    #[arg(long, value_enum, default_value = "letters")]
    text: Text,
    /// kv-put: each key in a user's own space (`users/u<i>/value`), so that a cluster
    /// spreads them over its shards; default: shared keys `bench/<i>`.
    #[arg(long)]
    per_user: bool,
}

/// An append body; `word` (unique, for `append-search`), if any, is added at the end.
fn message(rng: &mut impl Rng, kind: Text, word: Option<&str>) -> Bytes {
    let mut text: String = match kind {
        Text::Letters => (0..200)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect(),
        Text::Words => {
            let mut seeded = rand::rngs::StdRng::seed_from_u64(rng.random());
            crate::data::user_text(&mut seeded, crate::data::TextModel::Random)
        }
        Text::Chat => chat_message(rng),
    };
    if let Some(word) = word {
        text.push(' ');
        text.push_str(word);
    }
    Bytes::from(
        serde_json::json!({"items": [{"type": "message", "role": "user", "content": text}]})
            .to_string(),
    )
}

/// True when a search response has a hit.
fn found(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["data"].as_array().map(|a| !a.is_empty()))
        .unwrap_or(false)
}

/// Runs the load and prints one markdown row per concurrency level.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let authority = args
        .url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?
        .trim_end_matches('/')
        .to_string();
    let mut setup = Client::connect(&authority).await?;
    let targets: Vec<String> = match args.workload {
        Workload::Append | Workload::AppendSearch => {
            let mut ids = Vec::with_capacity(args.targets);
            for _ in 0..args.targets {
                let body = setup
                    .send("POST", "/v1/conversations", Bytes::from_static(b"{}"))
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                let id = v["id"].as_str().context("no id")?;
                ids.push(format!("/v1/conversations/{id}/items"));
            }
            ids
        }
        Workload::KvPut if args.per_user => (0..args.targets)
            .map(|i| format!("/v1/kv/users/u{i:08}/value"))
            .collect(),
        Workload::KvPut => (0..args.targets)
            .map(|i| format!("/v1/kv/bench/{i:08}"))
            .collect(),
    };
    println!(
        "| workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|---|"
    );
    for &n in &args.clients {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let targets = targets.clone();
            let authority = authority.clone();
            let workload = args.workload;
            let text = args.text;
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(&authority).await?;
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let value = Bytes::from(vec![b'v'; 1024]);
                while Instant::now() < deadline {
                    let word = format!("w{:016x}", rand::rng().random::<u64>());
                    let (path, body, method) = {
                        let mut rng = rand::rng();
                        let path = targets[rng.random_range(0..targets.len())].clone();
                        match workload {
                            Workload::Append | Workload::AppendSearch => {
                                // Chat messages stay natural text unless the
                                // search needs its unique word.
                                let plain =
                                    matches!((workload, text), (Workload::Append, Text::Chat));
                                let word = (!plain).then_some(word.as_str());
                                (path, message(&mut rng, text, word), "POST")
                            }
                            Workload::KvPut => (path, value.clone(), "PUT"),
                        }
                    };
                    if let Workload::AppendSearch = workload {
                        if client.send(method, &path, body).await.is_err() {
                            errors += 1;
                            client = Client::connect(&authority).await?;
                            continue;
                        }
                        let query = Bytes::from(
                            serde_json::json!({"query": word, "mode": "text", "top_k": 1})
                                .to_string(),
                        );
                        let t = Instant::now();
                        match client.send("POST", "/v1/search", query).await {
                            Ok(b) if found(&b) => lat.push(t.elapsed().as_micros() as u64),
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                client = Client::connect(&authority).await?;
                            }
                        }
                        continue;
                    }
                    let t = Instant::now();
                    match client.send(method, &path, body).await {
                        Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors += 1;
                            client = Client::connect(&authority).await?;
                        }
                    }
                }
                anyhow::Ok((lat, errors))
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (lat, e) = t.await??;
            all.extend(lat);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        println!(
            "| {:?} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            args.workload,
            n,
            all.len() as f64 / elapsed,
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            percentile(&all, 0.999),
            errors
        );
    }
    Ok(())
}
