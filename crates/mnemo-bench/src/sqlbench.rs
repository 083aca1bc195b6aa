//! `mnemo-bench sql`: SQL over the same data in mnemo (`POST /v1/sql`) and PostgreSQL 15.
//!
//! Data: conversations of 100 items (alternating user and assistant messages) owned by users of
//! 10 conversations each, plus one user (`heavy`) with 100 conversations of 100 items, each
//! item carrying a 384-dimension vector. Workloads:
//! - S1: the newest 50 items of a random conversation (`ORDER BY seq DESC LIMIT 50`);
//! - S2: the heavy user's 10,000 items grouped by role;
//! - S3: a tenant-wide GROUP BY over every item (rows per second);
//! - S4: the heavy user's top 10 items by cosine similarity to a random vector.
//!
//! PostgreSQL has the items in one table with the primary key (conversation_id, seq) and an
//! index on user_id; Debian 12's archive has no pgvector, so its S4 ranks with a SQL cosine
//! function over `real[]`.

use crate::http::Client;
use crate::peers;
use crate::run::percentile;
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// Options of `mnemo-bench sql`.
#[derive(Args, Debug)]
pub struct SqlArgs {
    /// Small data set and 1-second runs (a smoke test of the harness).
    #[arg(long)]
    quick: bool,
    /// Items in all (default 1,000,000; quick 20,000), besides the heavy user's.
    #[arg(long)]
    items: Option<usize>,
    /// Seconds per latency run (default 8, quick 1).
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrency levels of S1.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<usize>,
    /// The mnemo binary (default: beside this one).
    #[arg(long)]
    mnemo_bin: Option<PathBuf>,
    /// Write the result section into this markdown file (between `bench-sql` markers).
    #[arg(long)]
    write_docs: Option<PathBuf>,
}

pub(crate) const ITEMS_PER_CONVERSATION: usize = 100;
const CONVERSATIONS_PER_USER: usize = 10;
const HEAVY_CONVERSATIONS: usize = 100;
const DIMS: usize = 384;
const LOADERS: usize = 16;
/// Every JSON answer of `/v1/sql` has this member.
const SQL_RESULT: &[u8] = br#""object":"sql.result""#;

const S1_MNEMO: &str =
    "SELECT item_id, role, text FROM items WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 50";
const S1_PG: &str =
    "SELECT item_id, role, text FROM items WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 50";
const S2_MNEMO: &str = "SELECT role, count(*) FROM items GROUP BY role";
const S2_PG: &str = "SELECT role, count(*) FROM items WHERE user_id = $1 GROUP BY role";
const S3: &str = "SELECT role, count(*), sum(length(text)) FROM items GROUP BY role";
const S4_MNEMO: &str =
    "SELECT item_id, cosine_similarity(embedding, $1) AS s FROM items ORDER BY s DESC LIMIT 10";
const S4_PG: &str =
    "SELECT item_id FROM items WHERE user_id = $1 ORDER BY cos(embedding, $2) DESC LIMIT 10";

const PG_SCHEMA: &str = "
CREATE TABLE items (conversation_id text, seq bigint, item_id text NOT NULL, role text, type text,
                    text text, created_at timestamptz NOT NULL DEFAULT now(), user_id text,
                    embedding real[], PRIMARY KEY (conversation_id, seq));
CREATE INDEX items_user ON items (user_id);
CREATE FUNCTION cos(a real[], b real[]) RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
  $$ SELECT sum(x * y) / (sqrt(sum(x * x)) * sqrt(sum(y * y))) FROM unnest(a, b) AS t(x, y) $$;";

/// One conversation of the data set.
pub(crate) struct Conversation {
    pub(crate) user: String,
    vectors: bool,
}

fn words(rng: &mut StdRng) -> String {
    crate::data::user_text(rng, crate::data::TextModel::Zipf)
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIMS).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn role(seq: usize) -> &'static str {
    if seq.is_multiple_of(2) {
        "user"
    } else {
        "assistant"
    }
}

/// The items of conversation `n`, generated from its number (the same for both systems).
fn items_of(n: usize, c: &Conversation) -> Vec<(String, String, Option<Vec<f32>>)> {
    let mut rng = StdRng::seed_from_u64(n as u64);
    (0..ITEMS_PER_CONVERSATION)
        .map(|s| {
            let text = words(&mut rng);
            let v = c.vectors.then(|| vector(&mut rng));
            (role(s).to_owned(), text, v)
        })
        .collect()
}

pub(crate) fn plan(items: usize) -> Vec<Conversation> {
    let plain = items / ITEMS_PER_CONVERSATION;
    let mut out: Vec<Conversation> = (0..plain)
        .map(|n| Conversation {
            user: format!("user-{:06}", n / CONVERSATIONS_PER_USER),
            vectors: false,
        })
        .collect();
    out.extend((0..HEAVY_CONVERSATIONS).map(|_| Conversation {
        user: "heavy".into(),
        vectors: true,
    }));
    out
}

pub(crate) async fn pg(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `f(n)` for every n in 0..total on `LOADERS` tasks.
async fn each<F, Fut>(total: usize, pb: &ProgressBar, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..LOADERS {
        let (next, f, pb) = (next.clone(), f.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                f(n).await?;
                pb.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub(crate) async fn load_mnemo(
    authority: &str,
    convs: &Arc<Vec<Conversation>>,
    pb: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); convs.len()]));
    let (a, c2, ids2) = (authority.to_owned(), convs.clone(), ids.clone());
    each(convs.len(), pb, move |n| {
        let (a, convs, ids) = (a.clone(), c2.clone(), ids2.clone());
        async move {
            let c = &convs[n];
            let mut client = Client::connect(&a).await?;
            let body = client
                .send_as(
                    "POST",
                    "/v1/conversations",
                    Bytes::from(json!({"metadata": {"n": n.to_string()}}).to_string()),
                    Some(&c.user),
                )
                .await?;
            let id = serde_json::from_slice::<Value>(&body)?["id"]
                .as_str()
                .context("no conversation id")?
                .to_owned();
            let items = items_of(n, c);
            for chunk in items.chunks(20) {
                let batch: Vec<Value> = chunk
                    .iter()
                    .map(|(role, text, v)| {
                        let mut item = json!({"type": "message", "role": role,
                                              "content": [{"type": "input_text", "text": text}]});
                        if let Some(v) = v {
                            item["embedding"] = json!(v);
                        }
                        item
                    })
                    .collect();
                client
                    .send_as(
                        "POST",
                        &format!("/v1/conversations/{id}/items"),
                        Bytes::from(json!({"items": batch}).to_string()),
                        Some(&c.user),
                    )
                    .await?;
            }
            ids.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)[n] = id;
            Ok(())
        }
    })
    .await?;
    let ids = ids
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(ids)
}

pub(crate) async fn load_pg(
    conn: &str,
    convs: &Arc<Vec<Conversation>>,
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    pg(conn).await?.batch_execute(PG_SCHEMA).await?;
    let (conn2, c2) = (conn.to_owned(), convs.clone());
    each(convs.len(), pb, move |n| {
        let (conn, convs) = (conn2.clone(), c2.clone());
        async move {
            let c = &convs[n];
            let client = pg(&conn).await?;
            let items = items_of(n, c);
            let conv = format!("c{n:07}");
            let seqs: Vec<i64> = (1..=items.len() as i64).collect();
            let ids: Vec<String> = seqs.iter().map(|s| format!("{conv}-{s}")).collect();
            let roles: Vec<&str> = items.iter().map(|i| i.0.as_str()).collect();
            let texts: Vec<&str> = items.iter().map(|i| i.1.as_str()).collect();
            let vectors: Vec<Option<String>> = items
                .iter()
                .map(|i| i.2.as_ref().map(|v| format!("{{{}}}", v.iter().map(f32::to_string).collect::<Vec<_>>().join(","))))
                .collect();
            client
                .execute(
                    "INSERT INTO items (conversation_id, seq, item_id, role, type, text, user_id, embedding)
                     SELECT $1, s, i, r, 'message', t, $2, e::real[]
                     FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u(s, i, r, t, e)",
                    &[&conv, &c.user, &seqs, &ids, &roles, &texts, &vectors],
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    pg(conn)
        .await?
        .batch_execute("VACUUM ANALYZE items")
        .await?;
    Ok(())
}

/// Latencies (µs) of `clients` concurrent loops of `op` for `seconds`, and the operations.
async fn timed<F, Fut>(clients: usize, seconds: u64, op: F) -> anyhow::Result<(Vec<u64>, f64)>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<
            Output = anyhow::Result<
                Box<
                    dyn FnMut(
                            u64,
                        ) -> std::pin::Pin<
                            Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>,
                        > + Send,
                >,
            >,
        > + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut run = op(w).await?;
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                run(i).await?;
                lat.push(t.elapsed().as_micros() as u64);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    let rate = all.len() as f64 / seconds as f64;
    Ok((all, rate))
}

type Runner = Box<
    dyn FnMut(
            u64,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

fn mnemo_runner(
    authority: String,
    query: &'static str,
    user: Option<&'static str>,
    params: Arc<dyn Fn(u64) -> Value + Send + Sync>,
) -> impl Fn(
    usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Runner>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |_w| {
        let (authority, params) = (authority.clone(), params.clone());
        Box::pin(async move {
            let client = Arc::new(tokio::sync::Mutex::new(Client::connect(&authority).await?));
            let run: Runner = Box::new(move |i| {
                let (client, body) = (
                    client.clone(),
                    json!({"query": query, "params": params(i)}).to_string(),
                );
                Box::pin(async move {
                    let out = client
                        .lock()
                        .await
                        .send_as("POST", "/v1/sql", Bytes::from(body), user)
                        .await?;
                    anyhow::ensure!(
                        out.windows(SQL_RESULT.len()).any(|w| w == SQL_RESULT),
                        "unexpected answer: {}",
                        String::from_utf8_lossy(&out)
                    );
                    Ok(())
                })
            });
            Ok(run)
        })
    }
}

/// Parameters of one PostgreSQL query.
type PgParams = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

type Opener = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Runner>> + Send>>;

/// A PostgreSQL client running the prepared `query` with `bind(i)`'s parameters, and
/// checking the row count when `rows` is given.
fn pg_runner(
    conn: String,
    query: &'static str,
    bind: Arc<dyn Fn(u64) -> PgParams + Send + Sync>,
    rows: Option<usize>,
) -> impl Fn(usize) -> Opener + Clone + Send + Sync + 'static {
    move |_w| {
        let (conn, bind) = (conn.clone(), bind.clone());
        Box::pin(async move {
            let client = Arc::new(pg(&conn).await?);
            let stmt = client.prepare(query).await?;
            let run: Runner = Box::new(move |i| {
                let (client, stmt, params) = (client.clone(), stmt.clone(), bind(i));
                Box::pin(async move {
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let got = client.query(&stmt, &refs).await?;
                    if let Some(n) = rows {
                        anyhow::ensure!(got.len() == n, "{query}: {} rows, not {n}", got.len());
                    }
                    Ok(())
                })
            });
            Ok(run)
        })
    }
}

/// One measured row of the report.
struct Row {
    workload: &'static str,
    what: String,
    mnemo: f64,
    postgres: f64,
    unit: &'static str,
    higher_better: bool,
}

fn ms(sorted: &[u64], p: f64) -> f64 {
    percentile(sorted, p)
}

/// Runs the SQL benchmark.
pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let items = args
        .items
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let seconds = args.seconds.unwrap_or(if args.quick { 1 } else { 8 });
    let mnemo_bin = match args.mnemo_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("mnemo"),
    };
    let started = Instant::now();
    let logs = peers::LogDir::create()?;
    let m = peers::start_mnemo(&mnemo_bin, &logs)?;
    let p = peers::start_postgres(&logs)?;
    let authority = format!("127.0.0.1:{}", m.port);
    let conn = format!("host=127.0.0.1 port={} user=bench dbname=postgres", p.port);
    let convs = Arc::new(plan(items));
    let total_items = convs.len() * ITEMS_PER_CONVERSATION;
    let style =
        ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} conversations {elapsed}")?;
    let pb = ProgressBar::new(convs.len() as u64)
        .with_style(style.clone())
        .with_message("loading mnemo");
    let ids = Arc::new(load_mnemo(&authority, &convs, &pb).await?);
    pb.finish();
    let pb = ProgressBar::new(convs.len() as u64)
        .with_style(style)
        .with_message("loading postgres");
    load_pg(&conn, &convs, &pb).await?;
    pb.finish();
    let _ = std::process::Command::new("sync").status();
    tokio::time::sleep(Duration::from_secs(if args.quick { 1 } else { 20 })).await;

    let plain = convs.len() - HEAVY_CONVERSATIONS;
    let mut rows = Vec::new();
    // S1: newest 50 items of a random conversation.
    for &clients in &args.clients {
        let ids2 = ids.clone();
        let params: Arc<dyn Fn(u64) -> Value + Send + Sync> = Arc::new(move |i| {
            let n = (StdRng::seed_from_u64(i).random_range(0..plain.max(1))) % ids2.len();
            json!([ids2[n]])
        });
        let (lat_m, rate_m) = timed(
            clients,
            seconds,
            mnemo_runner(authority.clone(), S1_MNEMO, None, params),
        )
        .await?;
        let bind: Arc<dyn Fn(u64) -> PgParams + Send + Sync> = Arc::new(move |i| {
            let n = StdRng::seed_from_u64(i).random_range(0..plain.max(1));
            vec![Box::new(format!("c{n:07}"))]
        });
        let (lat_p, rate_p) = timed(
            clients,
            seconds,
            pg_runner(conn.clone(), S1_PG, bind, Some(50)),
        )
        .await?;
        rows.push(Row {
            workload: "S1",
            what: format!("newest 50 items of a conversation, clients={clients}: queries/s"),
            mnemo: rate_m,
            postgres: rate_p,
            unit: "/s",
            higher_better: true,
        });
        rows.push(Row {
            workload: "S1",
            what: format!("  p50 ms, clients={clients}"),
            mnemo: ms(&lat_m, 0.5),
            postgres: ms(&lat_p, 0.5),
            unit: "ms p50",
            higher_better: false,
        });
        rows.push(Row {
            workload: "S1",
            what: format!("  p99 ms, clients={clients}"),
            mnemo: ms(&lat_m, 0.99),
            postgres: ms(&lat_p, 0.99),
            unit: "ms p99",
            higher_better: false,
        });
    }
    // S2: the heavy user's items grouped by role (one client).
    let none: Arc<dyn Fn(u64) -> Value + Send + Sync> = Arc::new(|_| json!([]));
    let (lat_m, _) = timed(
        1,
        seconds,
        mnemo_runner(authority.clone(), S2_MNEMO, Some("heavy"), none),
    )
    .await?;
    let heavy: Arc<dyn Fn(u64) -> PgParams + Send + Sync> = Arc::new(|_| vec![Box::new("heavy")]);
    let (lat_p, _) = timed(1, seconds, pg_runner(conn.clone(), S2_PG, heavy, Some(2))).await?;
    rows.push(Row {
        workload: "S2",
        what: "one user's 10,000 items by role: p50 ms".into(),
        mnemo: ms(&lat_m, 0.5),
        postgres: ms(&lat_p, 0.5),
        unit: "ms p50",
        higher_better: false,
    });
    rows.push(Row {
        workload: "S2",
        what: "  p99 ms".into(),
        mnemo: ms(&lat_m, 0.99),
        postgres: ms(&lat_p, 0.99),
        unit: "ms p99",
        higher_better: false,
    });
    // S3: tenant-wide GROUP BY, three runs each, the median.
    let mut times_m = Vec::new();
    let mut times_p = Vec::new();
    let mut client = Client::connect(&authority).await?;
    let pgc = pg(&conn).await?;
    for _ in 0..3 {
        let t = Instant::now();
        client
            .send(
                "POST",
                "/v1/sql",
                Bytes::from(json!({"query": S3}).to_string()),
            )
            .await?;
        times_m.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        pgc.query(S3, &[]).await?;
        times_p.push(t.elapsed().as_secs_f64());
    }
    times_m.sort_by(f64::total_cmp);
    times_p.sort_by(f64::total_cmp);
    rows.push(Row {
        workload: "S3",
        what: format!("GROUP BY over all {total_items} items: rows/s (median of 3)"),
        mnemo: total_items as f64 / times_m[1],
        postgres: total_items as f64 / times_p[1],
        unit: "rows/s",
        higher_better: true,
    });
    // S4: top 10 by cosine similarity over the heavy user's vectors.
    let q: Arc<dyn Fn(u64) -> Value + Send + Sync> =
        Arc::new(|i| json!([vector(&mut StdRng::seed_from_u64(1_000_000 + i))]));
    let (lat_m, _) = timed(
        1,
        seconds,
        mnemo_runner(authority.clone(), S4_MNEMO, Some("heavy"), q),
    )
    .await?;
    let bind: Arc<dyn Fn(u64) -> PgParams + Send + Sync> = Arc::new(|i| {
        vec![
            Box::new("heavy"),
            Box::new(vector(&mut StdRng::seed_from_u64(1_000_000 + i))),
        ]
    });
    let (lat_p, _) = timed(1, seconds, pg_runner(conn.clone(), S4_PG, bind, Some(10))).await?;
    rows.push(Row {
        workload: "S4",
        what: "top 10 by cosine over one user's 10,000 vectors: p50 ms".into(),
        mnemo: ms(&lat_m, 0.5),
        postgres: ms(&lat_p, 0.5),
        unit: "ms p50",
        higher_better: false,
    });
    rows.push(Row {
        workload: "S4",
        what: "  p99 ms".into(),
        mnemo: ms(&lat_m, 0.99),
        postgres: ms(&lat_p, 0.99),
        unit: "ms p99",
        higher_better: false,
    });
    // How mnemo planned S4.
    let explain = client
        .send_as("POST", "/v1/sql", Bytes::from(json!({"query": format!("EXPLAIN {S4_MNEMO}"), "params": [vector(&mut StdRng::seed_from_u64(7))]}).to_string()), Some("heavy"))
        .await?;
    let s4_index = String::from_utf8_lossy(&explain).contains("nearest=exact vector search");

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut out = format!(
        "## SQL side by side with PostgreSQL\n\n\
         Command: `{command}` (wall time {:.0} s)\n\n\
         Machine: {}. {}; mnemo {} (`POST /v1/sql`, JSON answers, one keep-alive connection \
         per client); PostgreSQL through tokio-postgres prepared statements.\n\n\
         Data: {total_items} items in {} conversations of {ITEMS_PER_CONVERSATION}, \
         {CONVERSATIONS_PER_USER} conversations per user, plus the user `heavy` with \
         {HEAVY_CONVERSATIONS} conversations whose items carry {DIMS}-dimension vectors. \
         PostgreSQL: primary key (conversation_id, seq), index on user_id, `VACUUM ANALYZE`; \
         no pgvector (not in Debian 12's archive), so its S4 ranks with a SQL cosine function. \
         mnemo's S4 plan {} the search index's exact per-user top-k. {seconds} s per latency run.\n\n\
         | workload | measure | mnemo | PostgreSQL | mnemo/PostgreSQL |\n|---|---|---:|---:|---:|\n",
        started.elapsed().as_secs_f64(),
        crate::machine(),
        peers::postgres_version(),
        env!("CARGO_PKG_VERSION"),
        convs.len(),
        if s4_index { "used" } else { "did not use" },
    );
    for r in &rows {
        let ratio = if r.higher_better {
            r.mnemo / r.postgres
        } else {
            r.postgres / r.mnemo
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2}× |\n",
            r.workload, r.what, r.mnemo, r.postgres, ratio
        ));
        let _ = r.unit;
    }
    out.push_str("\nRatios are mnemo's advantage: above 1× mnemo is faster (throughput: mnemo/PostgreSQL; latency: PostgreSQL/mnemo).\n");
    println!("{out}");
    if let Some(path) = &args.write_docs {
        crate::report::write_block(path, "bench-sql", &out)?;
        eprintln!("wrote {}", path.display());
    }
    drop(m);
    drop(p);
    logs.remove();
    Ok(())
}
