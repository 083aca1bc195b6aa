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

/// The goals of the benchmark issue, evaluated at 64 clients, with the rate each asks of
/// mnemo and, when W0 ran, the rate at which mnemo answers an empty request in the same run.
pub fn goals(samples: &[Sample]) -> String {
    let mut out = String::from(
        "\n### Goals (64 clients)\n\n| workload | goal | mnemo needs | measured | met |\n|---|---|---|---|---|\n",
    );
    let mut row = |w: &str, goal: &str, needs: Option<f64>, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let needs = needs.map_or("-".to_string(), |n| format!("{n:.0} ops/s"));
        let _ = writeln!(out, "| {w} | {goal} | {needs} | {measured} | {met} |");
    };
    let pair =
        |w: &str, peer: &str| Some((find(samples, w, "mnemo", 64)?, find(samples, w, peer, 64)?));
    match pair("W1", "postgres") {
        Some((m, p)) => row(
            "W1 durable append",
            "≥ 3× PostgreSQL items/s, p99 ≤ PostgreSQL's",
            Some(3.0 * p.ops),
            format!(
                "{:.0} ops/s, {:.2}×, p99 {:.2} vs {:.2} ms",
                m.ops,
                m.ops / p.ops,
                m.p99,
                p.p99
            ),
            Some(m.ops >= 3.0 * p.ops && m.p99 <= p.p99),
        ),
        None => row(
            "W1 durable append",
            "≥ 3× PostgreSQL",
            None,
            "-".into(),
            None,
        ),
    }
    match pair("W2", "postgres") {
        Some((m, p)) => row(
            "W2 history read",
            "≥ 3× PostgreSQL req/s, mnemo p99 ≤ 2 ms",
            Some(3.0 * p.ops),
            format!(
                "{:.0} ops/s, {:.2}×, p99 {:.2} ms",
                m.ops,
                m.ops / p.ops,
                m.p99
            ),
            Some(m.ops >= 3.0 * p.ops && m.p99 <= 2.0),
        ),
        None => row("W2 history read", "≥ 3× PostgreSQL", None, "-".into(), None),
    }
    match pair("W3-1KiB", "redis-everysec") {
        Some((m, p)) => row(
            "W3 KV get 1 KiB",
            "≥ 0.5× Redis (everysec) ops/s",
            Some(0.5 * p.ops),
            format!("{:.0} ops/s, {:.2}×", m.ops, m.ops / p.ops),
            Some(m.ops >= 0.5 * p.ops),
        ),
        None => row("W3 KV get 1 KiB", "≥ 0.5× Redis", None, "-".into(), None),
    }
    match pair("W4-1KiB", "redis-always") {
        Some((m, p)) => row(
            "W4 KV durable put 1 KiB",
            "≥ 2× Redis (appendfsync always) ops/s",
            Some(2.0 * p.ops),
            format!("{:.0} ops/s, {:.2}×", m.ops, m.ops / p.ops),
            Some(m.ops >= 2.0 * p.ops),
        ),
        None => row(
            "W4 KV durable put 1 KiB",
            "≥ 2× Redis",
            None,
            "-".into(),
            None,
        ),
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
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{BEGIN}\n{section}\n{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{BEGIN}\n{section}\n{END}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
