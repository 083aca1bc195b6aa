//! The systems under test behind one trait pair: a [`System`] loads the data set and opens
//! [`Session`]s; a session runs one [`Op`] at a time over its own connection. Every system is
//! driven by the same runner, so the client code path differs only in the protocol.

use crate::data::DataSpec;
use crate::http::Client;
use anyhow::Context;
use bytes::Bytes;
use futures::future::BoxFuture;
use indicatif::ProgressBar;
use redis::AsyncCommands;
use std::sync::{Arc, OnceLock};
use tokio_postgres::{NoTls, Statement};

/// One benchmark operation.
pub enum Op {
    /// The cheapest request the system answers (mnemo `GET /healthz`, PostgreSQL `SELECT 1`,
    /// Redis `PING`): the floor of the protocol, client and scheduling under the others.
    Ping,
    /// Durably append one item (JSON) to conversation `conv`.
    Append {
        /// Conversation index.
        conv: usize,
        /// The item as JSON text.
        item: String,
    },
    /// Read the newest 50 items of conversation `conv`.
    History {
        /// Conversation index.
        conv: usize,
    },
    /// Read one key.
    KvGet {
        /// The key.
        key: String,
    },
    /// Durably write one key.
    KvPut {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
}

/// A system under test.
pub trait System: Send + Sync {
    /// Display name.
    fn name(&self) -> String;
    /// Loads the conversations and KV keys of `spec`, advancing `pb` by one per conversation.
    fn load<'a>(
        &'a self,
        spec: &'a DataSpec,
        pb: &'a ProgressBar,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Opens a session (its own connection).
    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Session>>>;
}

/// One client connection.
pub trait Session: Send {
    /// Runs one operation; returns once the system acknowledged it.
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Keys of the KV data set for a value size.
pub fn kv_key(size_kib: usize, n: usize) -> String {
    format!("k{size_kib}/{n:07}")
}

const LOADERS: usize = 16;
const TENANT: &str = "default";

/// Runs `f(i)` for i in 0..n on `LOADERS` concurrent tasks.
async fn parallel<F, Fut>(n: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..LOADERS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move { f(w, n).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

// --- mnemo ------------------------------------------------------------------------------

/// mnemo over its HTTP API.
pub struct Mnemo {
    /// `127.0.0.1:port`.
    pub authority: String,
    ids: Arc<OnceLock<Vec<String>>>,
}

impl Mnemo {
    /// A mnemo server at `authority`.
    pub fn new(authority: String) -> Self {
        Mnemo {
            authority,
            ids: Arc::new(OnceLock::new()),
        }
    }
}

struct MnemoSession {
    client: Client,
    ids: Arc<OnceLock<Vec<String>>>,
}

impl System for Mnemo {
    fn name(&self) -> String {
        "mnemo".into()
    }

    fn load<'a>(
        &'a self,
        spec: &'a DataSpec,
        pb: &'a ProgressBar,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let found = Arc::new(std::sync::Mutex::new(vec![
                String::new();
                spec.conversations
            ]));
            let (authority, spec2, pb2, found2) =
                (self.authority.clone(), *spec, pb.clone(), found.clone());
            parallel(spec.conversations, move |w, n| {
                let (authority, pb, found) = (authority.clone(), pb2.clone(), found2.clone());
                async move {
                    let mut c = Client::connect(&authority).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let items: Vec<_> =
                            spec2.conversation(i).iter().map(|m| m.to_json()).collect();
                        let mut chunks = items.chunks(20);
                        let first = chunks.next().unwrap_or(&[]);
                        let body = serde_json::json!({"items": first}).to_string();
                        let created = c
                            .send("POST", "/v1/conversations", Bytes::from(body))
                            .await?;
                        let v: serde_json::Value = serde_json::from_slice(&created)?;
                        let id = v["id"].as_str().context("no conversation id")?.to_string();
                        for chunk in chunks {
                            let body = serde_json::json!({"items": chunk}).to_string();
                            c.send(
                                "POST",
                                &format!("/v1/conversations/{id}/items"),
                                Bytes::from(body),
                            )
                            .await?;
                        }
                        found.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = id;
                        pb.inc(1);
                    }
                    Ok(())
                }
            })
            .await?;
            let authority = self.authority.clone();
            parallel(spec.kv_keys_1k + spec.kv_keys_64k, move |w, n| {
                let authority = authority.clone();
                async move {
                    let mut c = Client::connect(&authority).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let (key, size) = kv_for(&spec2, i);
                        c.send(
                            "PUT",
                            &format!("/v1/kv/{key}"),
                            Bytes::from(vec![b'v'; size]),
                        )
                        .await?;
                    }
                    Ok(())
                }
            })
            .await?;
            let ids = std::mem::take(&mut *found.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
            self.ids
                .set(ids)
                .map_err(|_| anyhow::anyhow!("loaded twice"))?;
            Ok(())
        })
    }

    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Session>>> {
        Box::pin(async move {
            let s: Box<dyn Session> = Box::new(MnemoSession {
                client: Client::connect(&self.authority).await?,
                ids: self.ids.clone(),
            });
            Ok(s)
        })
    }
}

impl MnemoSession {
    fn conv(&self, i: usize) -> anyhow::Result<&str> {
        self.ids
            .get()
            .and_then(|ids| ids.get(i))
            .map(String::as_str)
            .context("conversation not loaded")
    }
}

impl Session for MnemoSession {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match op {
                Op::Ping => {
                    self.client.send("GET", "/healthz", Bytes::new()).await?;
                }
                Op::Append { conv, item } => {
                    let path = format!("/v1/conversations/{}/items", self.conv(*conv)?);
                    let body = format!(r#"{{"items":[{item}]}}"#);
                    self.client.send("POST", &path, Bytes::from(body)).await?;
                }
                Op::History { conv } => {
                    let path = format!("/v1/conversations/{}/items?limit=50", self.conv(*conv)?);
                    self.client.send("GET", &path, Bytes::new()).await?;
                }
                Op::KvGet { key } => {
                    self.client
                        .send("GET", &format!("/v1/kv/{key}"), Bytes::new())
                        .await?;
                }
                Op::KvPut { key, value } => {
                    self.client
                        .send("PUT", &format!("/v1/kv/{key}"), value.clone())
                        .await?;
                }
            }
            Ok(())
        })
    }
}

/// The `i`-th key of the KV data set and its value size.
fn kv_for(spec: &DataSpec, i: usize) -> (String, usize) {
    if i < spec.kv_keys_1k {
        (kv_key(1, i), 1024)
    } else {
        (kv_key(64, i - spec.kv_keys_1k), 65536)
    }
}

// --- PostgreSQL -------------------------------------------------------------------------

/// PostgreSQL: `items(tenant, conversation, seq)` primary key with a JSONB item; a
/// `conversations` row holds the last sequence number (as mnemo's record does).
pub struct Postgres {
    /// libpq-style connection string.
    pub conn: String,
}

async fn pg_connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

const PG_SCHEMA: &str = "
CREATE TABLE conversations (tenant text, id text, last_seq bigint NOT NULL, PRIMARY KEY (tenant, id));
CREATE TABLE items (tenant text, conversation text, seq bigint, item jsonb NOT NULL,
                    PRIMARY KEY (tenant, conversation, seq));
CREATE TABLE kv (tenant text, key text, value bytea NOT NULL, PRIMARY KEY (tenant, key));";

struct PgSession {
    client: tokio_postgres::Client,
    ping: Statement,
    append: Statement,
    history: Statement,
    get: Statement,
    put: Statement,
}

impl System for Postgres {
    fn name(&self) -> String {
        "postgres".into()
    }

    fn load<'a>(
        &'a self,
        spec: &'a DataSpec,
        pb: &'a ProgressBar,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            pg_connect(&self.conn)
                .await?
                .batch_execute(PG_SCHEMA)
                .await?;
            let (conn, spec2, pb2) = (self.conn.clone(), *spec, pb.clone());
            parallel(spec.conversations, move |w, n| {
                let (conn, pb) = (conn.clone(), pb2.clone());
                async move {
                    let mut c = pg_connect(&conn).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let items: Vec<String> =
                            spec2.conversation(i).iter().map(|m| m.to_json().to_string()).collect();
                        let seqs: Vec<i64> = (1..=items.len() as i64).collect();
                        let key = format!("c{i}");
                        let tx = c.transaction().await?;
                        tx.execute(
                            "INSERT INTO conversations VALUES ($1, $2, $3)",
                            &[&TENANT, &key, &(items.len() as i64)],
                        )
                        .await?;
                        tx.execute(
                            "INSERT INTO items SELECT $1, $2, s, i::jsonb FROM unnest($3::bigint[], $4::text[]) AS t(s, i)",
                            &[&TENANT, &key, &seqs, &items],
                        )
                        .await?;
                        tx.commit().await?;
                        pb.inc(1);
                    }
                    Ok(())
                }
            })
            .await?;
            let conn = self.conn.clone();
            parallel(spec.kv_keys_1k + spec.kv_keys_64k, move |w, n| {
                let conn = conn.clone();
                async move {
                    let c = pg_connect(&conn).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let (key, size) = kv_for(&spec2, i);
                        c.execute(
                            "INSERT INTO kv VALUES ($1, $2, $3)",
                            &[&TENANT, &key, &vec![b'v'; size]],
                        )
                        .await?;
                    }
                    Ok(())
                }
            })
            .await?;
            pg_connect(&self.conn)
                .await?
                .batch_execute("VACUUM ANALYZE")
                .await?;
            Ok(())
        })
    }

    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Session>>> {
        Box::pin(async move {
            let client = pg_connect(&self.conn).await?;
            let append = client
                .prepare(
                    "WITH c AS (UPDATE conversations SET last_seq = last_seq + 1
                                WHERE tenant = $1 AND id = $2 RETURNING last_seq)
                     INSERT INTO items SELECT $1, $2, c.last_seq, $3::text::jsonb FROM c",
                )
                .await?;
            let history = client
                .prepare(
                    "SELECT item::text FROM items WHERE tenant = $1 AND conversation = $2
                     ORDER BY seq DESC LIMIT 50",
                )
                .await?;
            let get = client
                .prepare("SELECT value FROM kv WHERE tenant = $1 AND key = $2")
                .await?;
            let put = client
                .prepare(
                    "INSERT INTO kv VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await?;
            let ping = client.prepare("SELECT 1").await?;
            let s: Box<dyn Session> = Box::new(PgSession {
                client,
                ping,
                append,
                history,
                get,
                put,
            });
            Ok(s)
        })
    }
}

impl Session for PgSession {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match op {
                Op::Ping => {
                    self.client.query_one(&self.ping, &[]).await?;
                }
                Op::Append { conv, item } => {
                    let n = self
                        .client
                        .execute(&self.append, &[&TENANT, &format!("c{conv}"), item])
                        .await?;
                    anyhow::ensure!(n == 1, "append inserted {n} rows");
                }
                Op::History { conv } => {
                    let rows = self
                        .client
                        .query(&self.history, &[&TENANT, &format!("c{conv}")])
                        .await?;
                    let mut bytes = 0;
                    for r in &rows {
                        bytes += r.get::<_, &str>(0).len();
                    }
                    anyhow::ensure!(bytes > 0, "empty history");
                }
                Op::KvGet { key } => {
                    let row = self.client.query_one(&self.get, &[&TENANT, key]).await?;
                    anyhow::ensure!(!row.get::<_, &[u8]>(0).is_empty());
                }
                Op::KvPut { key, value } => {
                    self.client
                        .execute(&self.put, &[&TENANT, key, &value.as_ref()])
                        .await?;
                }
            }
            Ok(())
        })
    }
}

// --- Redis ------------------------------------------------------------------------------

/// Redis: a list per conversation (`RPUSH`, `LRANGE -50 -1`), a string per key.
pub struct Redis {
    /// Display name (`redis-always`, `redis-everysec`).
    pub label: String,
    /// `redis://127.0.0.1:port/`.
    pub url: String,
}

struct RedisSession {
    conn: redis::aio::MultiplexedConnection,
}

/// Opens a connection without the redis crate's default response time-out (500 ms): the other
/// systems' clients wait for every answer, so Redis's do too (a stall shows in the latencies).
async fn redis_connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(std::time::Duration::from_secs(30)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

impl System for Redis {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn load<'a>(
        &'a self,
        spec: &'a DataSpec,
        pb: &'a ProgressBar,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let (url, spec2, pb2) = (self.url.clone(), *spec, pb.clone());
            parallel(spec.conversations, move |w, n| {
                let (url, pb) = (url.clone(), pb2.clone());
                async move {
                    let mut c = redis_connect(&url).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let items: Vec<String> = spec2
                            .conversation(i)
                            .iter()
                            .map(|m| m.to_json().to_string())
                            .collect();
                        let _: i64 = c.rpush(format!("c{i}"), items).await?;
                        pb.inc(1);
                    }
                    Ok(())
                }
            })
            .await?;
            let url = self.url.clone();
            parallel(spec.kv_keys_1k + spec.kv_keys_64k, move |w, n| {
                let url = url.clone();
                async move {
                    let mut c = redis_connect(&url).await?;
                    for i in (w..n).step_by(LOADERS) {
                        let (key, size) = kv_for(&spec2, i);
                        let _: () = c.set(key, vec![b'v'; size]).await?;
                    }
                    Ok(())
                }
            })
            .await
        })
    }

    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Session>>> {
        Box::pin(async move {
            let s: Box<dyn Session> = Box::new(RedisSession {
                conn: redis_connect(&self.url).await?,
            });
            Ok(s)
        })
    }
}

impl Session for RedisSession {
    fn run<'a>(&'a mut self, op: &'a Op) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match op {
                Op::Ping => {
                    let _: String = redis::cmd("PING").query_async(&mut self.conn).await?;
                }
                Op::Append { conv, item } => {
                    let _: i64 = self.conn.rpush(format!("c{conv}"), item).await?;
                }
                Op::History { conv } => {
                    let v: Vec<Bytes> = self.conn.lrange(format!("c{conv}"), -50, -1).await?;
                    anyhow::ensure!(!v.is_empty(), "empty history");
                }
                Op::KvGet { key } => {
                    let v: Option<Bytes> = self.conn.get(key).await?;
                    anyhow::ensure!(v.is_some(), "missing key");
                }
                Op::KvPut { key, value } => {
                    let _: () = self.conn.set(key, value.as_ref()).await?;
                }
            }
            Ok(())
        })
    }
}
