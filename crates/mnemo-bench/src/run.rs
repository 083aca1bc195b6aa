//! The workloads and the runner: N concurrent sessions issue operations back to back for a
//! fixed time; every acknowledged operation's latency is recorded.

use crate::data::DataSpec;
use crate::systems::{kv_key, Op, System};
use anyhow::Context;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// What a workload does.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// W0: the cheapest request (see [`Op::Ping`]).
    Ping,
    /// W1: durable append of one item.
    Append,
    /// W2: newest 50 items of a random conversation.
    History,
    /// W3: get of a value of this many KiB.
    Get(usize),
    /// W4: durable put of a value of this many KiB.
    Put(usize),
}

/// A workload and the peers it is compared with.
pub struct Workload {
    /// Short id, e.g. `W3-1KiB`.
    pub id: &'static str,
    /// Description.
    pub title: &'static str,
    /// Operation.
    pub kind: Kind,
    /// Peers (by system name) measured alongside mnemo.
    pub peers: &'static [&'static str],
}

/// Every workload. Durable writes are compared with durable peers (PostgreSQL with
/// synchronous commit, Redis with `appendfsync always`); reads with Redis `everysec`.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        id: "W0",
        title: "empty request (the floor under the other workloads)",
        kind: Kind::Ping,
        peers: &["postgres", "redis-everysec"],
    },
    Workload {
        id: "W1",
        title: "durable append, one item per request",
        kind: Kind::Append,
        peers: &["postgres", "redis-always"],
    },
    Workload {
        id: "W2",
        title: "history read, newest 50 items",
        kind: Kind::History,
        peers: &["postgres", "redis-everysec"],
    },
    Workload {
        id: "W3-1KiB",
        title: "KV get, 1 KiB values",
        kind: Kind::Get(1),
        peers: &["postgres", "redis-everysec"],
    },
    Workload {
        id: "W3-64KiB",
        title: "KV get, 64 KiB values",
        kind: Kind::Get(64),
        peers: &["postgres", "redis-everysec"],
    },
    Workload {
        id: "W4-1KiB",
        title: "KV durable put, 1 KiB values",
        kind: Kind::Put(1),
        peers: &["postgres", "redis-always"],
    },
    Workload {
        id: "W4-64KiB",
        title: "KV durable put, 64 KiB values",
        kind: Kind::Put(64),
        peers: &["postgres", "redis-always"],
    },
];

/// The result of one (workload, system, concurrency) run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Workload id.
    pub workload: &'static str,
    /// System name.
    pub system: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Acknowledged operations per second.
    pub ops: f64,
    /// Latency percentiles, milliseconds.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Failed operations.
    pub errors: u64,
}

/// The `p` quantile of sorted microsecond latencies, in milliseconds (NaN when empty).
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

fn next_op(kind: Kind, spec: &DataSpec, rng: &mut StdRng, value: &Bytes) -> Op {
    match kind {
        Kind::Ping => Op::Ping,
        Kind::Append => Op::Append {
            conv: rng.random_range(0..spec.conversations),
            item: spec.append_message(rng).to_json().to_string(),
        },
        Kind::History => Op::History {
            conv: rng.random_range(0..spec.conversations),
        },
        Kind::Get(kib) | Kind::Put(kib) => {
            let n = if kib == 1 {
                spec.kv_keys_1k
            } else {
                spec.kv_keys_64k
            };
            let key = kv_key(kib, rng.random_range(0..n));
            match kind {
                Kind::Get(_) => Op::KvGet { key },
                _ => Op::KvPut {
                    key,
                    value: value.clone(),
                },
            }
        }
    }
}

/// Runs one workload on one system with `clients` sessions for `duration`.
pub async fn run(
    system: &dyn System,
    workload: &Workload,
    spec: &DataSpec,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let what = format!(
        "{} on {} with {clients} clients",
        workload.id,
        system.name()
    );
    let mut sessions = Vec::with_capacity(clients);
    for i in 0..clients {
        let session = system
            .connect()
            .await
            .with_context(|| format!("{what}: opening connection {}", i + 1))?;
        sessions.push(session);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut session) in sessions.into_iter().enumerate() {
        let (kind, spec, what) = (workload.kind, *spec, what.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0xbe0c ^ (i as u64) << 20);
            let size = match kind {
                Kind::Put(kib) | Kind::Get(kib) => kib * 1024,
                _ => 0,
            };
            let value = Bytes::from(vec![b'w'; size]);
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let op = next_op(kind, &spec, &mut rng, &value);
                let t = Instant::now();
                match session.run(&op).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("{what}, client {i}: first error: {e:#}");
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Sample {
        workload: workload.id,
        system: system.name(),
        clients,
        ops: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        p999: percentile(&all, 0.999),
        errors,
    })
}
