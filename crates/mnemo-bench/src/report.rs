//! Tables, ratios, goals, and the section written into `docs/benchmarks.md`.

use crate::run::{Sample, WORKLOADS};
use std::fmt::Write;

fn find<'a>(s: &'a [Sample], w: &str, sys: &str, c: usize) -> Option<&'a Sample> {
    s.iter()
        .find(|x| x.workload == w && x.system == sys && x.clients == c)
}

/// Markdown tables: one per workload with every system and concurrency, then the ratios
/// mnemo / peer.
pub fn tables(samples: &[Sample], clients: &[usize]) -> String {
    let mut out = String::new();
    for w in WORKLOADS {
        if !samples.iter().any(|s| s.workload == w.id) {
            continue;
        }
        let _ = writeln!(out, "\n### {}: {}\n", w.id, w.title);
        let _ = writeln!(
            out,
            "| system | clients | ops/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|---|"
        );
        for sys in std::iter::once("mnemo").chain(w.peers.iter().copied()) {
            for &c in clients {
                if let Some(s) = find(samples, w.id, sys, c) {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                        s.system, s.clients, s.ops, s.p50, s.p99, s.p999, s.errors
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n| clients | peer | ops/s ratio mnemo/peer | p99 ratio mnemo/peer |\n|---|---|---|---|"
        );
        for &c in clients {
            for peer in w.peers {
                if let (Some(m), Some(p)) = (
                    find(samples, w.id, "mnemo", c),
                    find(samples, w.id, peer, c),
                ) {
                    let _ = writeln!(
                        out,
                        "| {c} | {peer} | {:.2}× | {:.2}× |",
                        m.ops / p.ops,
                        m.p99 / p.p99
                    );
                }
            }
        }
    }
    out
}

/// What a goal asks of mnemo's p99 latency, besides throughput.
enum P99Goal {
    /// No latency goal.
    None,
    /// At most the peer's p99.
    AtMostPeer,
    /// At most this many milliseconds.
    AtMostMs(f64),
}

/// One goal of the benchmark issue: mnemo's ops/s at least `factor` times `peer`'s.
struct Goal {
    workload: &'static str,
    label: &'static str,
    /// The goal as written when it was measured.
    text: &'static str,
    /// The goal as written when it was not.
    short: &'static str,
    peer: &'static str,
    factor: f64,
    p99: P99Goal,
}

const GOALS: &[Goal] = &[
    Goal {
        workload: "W1",
        label: "W1 durable append",
        text: "≥ 3× PostgreSQL items/s, p99 ≤ PostgreSQL's",
        short: "≥ 3× PostgreSQL",
        peer: "postgres",
        factor: 3.0,
        p99: P99Goal::AtMostPeer,
    },
    Goal {
        workload: "W2",
        label: "W2 history read",
        text: "≥ 3× PostgreSQL req/s, mnemo p99 ≤ 2 ms",
        short: "≥ 3× PostgreSQL",
        peer: "postgres",
        factor: 3.0,
        p99: P99Goal::AtMostMs(2.0),
    },
    Goal {
        workload: "W3-1KiB",
        label: "W3 KV get 1 KiB",
        text: "≥ 0.5× Redis (everysec) ops/s",
        short: "≥ 0.5× Redis",
        peer: "redis-everysec",
        factor: 0.5,
        p99: P99Goal::None,
    },
    Goal {
        workload: "W4-1KiB",
        label: "W4 KV durable put 1 KiB",
        text: "≥ 2× Redis (appendfsync always) ops/s",
        short: "≥ 2× Redis",
        peer: "redis-always",
        factor: 2.0,
        p99: P99Goal::None,
    },
];

/// The goals of the benchmark issue, evaluated at 64 clients, with the rate each asks of
/// mnemo and, when W0 ran, the rate at which mnemo answers an empty request in the same run.
pub fn goals(samples: &[Sample]) -> String {
    let mut out = String::from(
        "\n### Goals (64 clients)\n\n| workload | goal | mnemo needs | measured | met |\n|---|---|---|---|---|\n",
    );
    for g in GOALS {
        let measured =
            find(samples, g.workload, "mnemo", 64).zip(find(samples, g.workload, g.peer, 64));
        let Some((m, p)) = measured else {
            let _ = writeln!(out, "| {} | {} | - | - | not measured |", g.label, g.short);
            continue;
        };
        let needs = g.factor * p.ops;
        let mut text = format!("{:.0} ops/s, {:.2}×", m.ops, m.ops / p.ops);
        let latency_met = match g.p99 {
            P99Goal::None => true,
            P99Goal::AtMostPeer => {
                let _ = write!(text, ", p99 {:.2} vs {:.2} ms", m.p99, p.p99);
                m.p99 <= p.p99
            }
            P99Goal::AtMostMs(ms) => {
                let _ = write!(text, ", p99 {:.2} ms", m.p99);
                m.p99 <= ms
            }
        };
        let met = if m.ops >= needs && latency_met {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {needs:.0} ops/s | {text} | {met} |",
            g.label, g.text
        );
    }
    if let Some(floor) = find(samples, "W0", "mnemo", 64) {
        let _ = writeln!(
            out,
            "\nIn the same run mnemo answered {:.0} empty requests/s at 64 clients (W0: `GET \
             /healthz`, no storage work): the most its HTTP path carries on this machine, \
             client included. A goal that needs more than that cannot be met here by any \
             change below the HTTP layer.",
            floor.ops
        );
    }
    out
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in `path`
/// (appending the markers if absent).
pub fn write_docs(path: &std::path::Path, section: &str) -> anyhow::Result<()> {
    write_block(path, "bench", section)
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`
/// (appending the markers if absent).
pub fn write_block(path: &std::path::Path, name: &str, section: &str) -> anyhow::Result<()> {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{section}\n{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{begin}\n{section}\n{end}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(workload: &'static str, system: &str, ops: f64, p99: f64) -> Sample {
        Sample {
            workload,
            system: system.to_string(),
            clients: 64,
            ops,
            p50: p99 / 2.0,
            p99,
            p999: p99 * 2.0,
            errors: 0,
        }
    }

    #[test]
    fn goals_give_the_needed_rate_the_measurement_and_the_verdict() {
        let samples = [
            sample("W0", "mnemo", 144_000.0, 1.2),
            sample("W1", "mnemo", 10_000.0, 14.0),
            sample("W1", "postgres", 5_000.0, 9.0),
            sample("W2", "mnemo", 30_000.0, 1.5),
            sample("W2", "postgres", 10_000.0, 9.0),
            sample("W3-1KiB", "mnemo", 60_000.0, 1.0),
            sample("W3-1KiB", "redis-everysec", 100_000.0, 1.0),
        ];
        let out = goals(&samples);
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| W")).collect();
        assert_eq!(
            rows,
            [
                "| W1 durable append | ≥ 3× PostgreSQL items/s, p99 ≤ PostgreSQL's | 15000 ops/s | 10000 ops/s, 2.00×, p99 14.00 vs 9.00 ms | no |",
                "| W2 history read | ≥ 3× PostgreSQL req/s, mnemo p99 ≤ 2 ms | 30000 ops/s | 30000 ops/s, 3.00×, p99 1.50 ms | yes |",
                "| W3 KV get 1 KiB | ≥ 0.5× Redis (everysec) ops/s | 50000 ops/s | 60000 ops/s, 0.60× | yes |",
                "| W4 KV durable put 1 KiB | ≥ 2× Redis | - | - | not measured |",
            ]
        );
        assert!(out.contains("mnemo answered 144000 empty requests/s at 64 clients"));
        assert!(!goals(&samples[1..]).contains("empty requests"));
    }
}
