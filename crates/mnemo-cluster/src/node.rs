//! A node's state machine: its lease, the shards it holds, taking and releasing shards.
//!
//! Two background tasks run per node:
//! - the lease task grants the node's lease, registers the node and renews the lease every
//!   TTL/3; when the lease is lost it drops every shard at once and starts over;
//! - the poll task reads nodes and owners every `poll`, takes the shards the placement
//!   gives this node (by create-if-absent of their owner keys) and releases, a few at a
//!   time, the shards the placement gives to others.
//!
//! Shared state lives behind a std `Mutex` that is never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::etcd::{self, EtcdClient, EtcdError, KeyValue};
use crate::placement::{plan, MAX_SHARDS};
use crate::{
    ClusterConfig, ClusterError, ClusterStatus, NodeStatus, Route, ShardOpener, ShardOwner,
};

/// At most this many graceful releases are in flight per node, so hand-over is gradual.
const MAX_RELEASES_IN_FLIGHT: usize = 2;
/// A shard with no owner for longer than TTL + this may be taken by a node other than its
/// planned one.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// The keys of one cluster.
pub(crate) struct Keys {
    pub(crate) config: String,
    pub(crate) nodes_prefix: String,
    pub(crate) readers_prefix: String,
    pub(crate) owners_prefix: String,
}

impl Keys {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            config: format!("/{name}/config"),
            nodes_prefix: format!("/{name}/nodes/"),
            readers_prefix: format!("/{name}/readers/"),
            owners_prefix: format!("/{name}/owners/"),
        }
    }

    fn node(&self, id: &str) -> String {
        format!("{}{id}", self.nodes_prefix)
    }

    fn owner(&self, shard: u32) -> String {
        format!("{}{shard:05}", self.owners_prefix)
    }
}

/// The cluster config recorded in etcd at creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordedConfig {
    pub(crate) shards: u32,
    pub(crate) store: String,
    pub(crate) secret: String,
    pub(crate) lease_ttl_secs: u64,
    pub(crate) created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct NodeValue {
    id: String,
    url: String,
    /// A reader's replication lag bound, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lag_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct OwnerValue {
    node: String,
    url: String,
}

/// An owner key as read from etcd.
#[derive(Debug, Clone)]
pub(crate) struct OwnerEntry {
    node: String,
    url: String,
    lease: i64,
    mod_revision: i64,
}

pub(crate) async fn read_config(
    etcd: &EtcdClient,
    keys: &Keys,
) -> Result<Option<RecordedConfig>, ClusterError> {
    let Some(kv) = etcd.get(&keys.config).await? else {
        return Ok(None);
    };
    let c: RecordedConfig = serde_json::from_slice(&kv.value)
        .map_err(|e| ClusterError::BadConfig(format!("{}: {e}", keys.config)))?;
    if c.shards == 0 || c.shards > MAX_SHARDS {
        return Err(ClusterError::BadConfig(format!(
            "recorded shard count {} out of range",
            c.shards
        )));
    }
    Ok(Some(c))
}

pub(crate) fn parse_nodes(prefix: &str, kvs: &[KeyValue]) -> Vec<NodeStatus> {
    let mut nodes: Vec<NodeStatus> = kvs
        .iter()
        .filter_map(|kv| {
            let id = kv.key.strip_prefix(prefix)?;
            let v: NodeValue = serde_json::from_slice(&kv.value).ok()?;
            Some(NodeStatus {
                id: id.to_string(),
                url: v.url,
                lease_id: kv.lease,
                ttl_remaining_secs: None,
                lag_ms: v.lag_ms,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

pub(crate) fn parse_owners(keys: &Keys, shards: u32, kvs: &[KeyValue]) -> Vec<Option<OwnerEntry>> {
    let mut owners = vec![None; shards as usize];
    for kv in kvs {
        let Some(n) = kv
            .key
            .strip_prefix(&keys.owners_prefix)
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&n| n < shards)
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<OwnerValue>(&kv.value) else {
            continue;
        };
        owners[n as usize] = Some(OwnerEntry {
            node: v.node,
            url: v.url,
            lease: kv.lease,
            mod_revision: kv.mod_revision,
        });
    }
    owners
}

pub(crate) fn owner_statuses(owners: &[Option<OwnerEntry>]) -> Vec<ShardOwner> {
    owners
        .iter()
        .enumerate()
        .map(|(i, o)| ShardOwner {
            shard: i as u32,
            node: o.as_ref().map(|o| o.node.clone()),
            url: o.as_ref().map(|o| o.url.clone()),
        })
        .collect()
}

enum Slot<S> {
    /// Owner key created; `opener.open` in progress. Routes as Unavailable.
    Opening,
    /// Open and owned.
    Held(Arc<S>),
    /// Being closed (release or failed hand-over); the owner key is deleted afterwards.
    Closing,
}

struct LocalShard<S> {
    slot: Slot<S>,
    /// The lease the owner key was created with.
    lease: i64,
    /// The revision at which this node created the owner key (its mod_revision).
    rev: i64,
}

struct State<S> {
    lease: Option<i64>,
    valid_until: Option<Instant>,
    leaving: bool,
    local: HashMap<u32, LocalShard<S>>,
    owners: Vec<Option<OwnerEntry>>,
    nodes: Vec<NodeStatus>,
    readers: Vec<NodeStatus>,
    unowned_since: HashMap<u32, Instant>,
    retry_after: HashMap<u32, Instant>,
}

impl<S> State<S> {
    fn lease_valid(&self, now: Instant) -> bool {
        self.lease.is_some() && self.valid_until.is_some_and(|v| now < v)
    }

    fn held_count(&self) -> usize {
        self.local
            .values()
            .filter(|e| matches!(e.slot, Slot::Held(_)))
            .count()
    }

    fn closing_count(&self) -> usize {
        self.local
            .values()
            .filter(|e| matches!(e.slot, Slot::Closing))
            .count()
    }
}

struct Inner<O: ShardOpener> {
    etcd: EtcdClient,
    opener: Arc<O>,
    keys: Keys,
    name: String,
    node_id: String,
    advertise: String,
    recorded: RecordedConfig,
    /// TTL used locally (≤ the TTL etcd applies).
    ttl: Duration,
    /// TTL requested from etcd, whole seconds (≥ `ttl`).
    ttl_secs: i64,
    margin: Duration,
    poll: Duration,
    /// A reader node: never takes shards.
    reader: bool,
    /// A reader's lag bound, registered with it (`u64::MAX`: unknown).
    lag_ms: std::sync::atomic::AtomicU64,
    state: Mutex<State<O::Shard>>,
    wake: Notify,
    changed: watch::Sender<u64>,
}

/// A node's membership in a mnemo cluster. Created by [`Cluster::join`]; runs background
/// tasks until [`Cluster::leave`] (or drop, which stops them without releasing anything).
pub struct Cluster<O: ShardOpener> {
    inner: Arc<Inner<O>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<O: ShardOpener> Drop for Cluster<O> {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn validate(config: &ClusterConfig) -> Result<(), ClusterError> {
    let bad = |m: &str| Err(ClusterError::BadConfig(m.to_string()));
    if config.name.is_empty() || config.name.contains('/') {
        return bad("cluster name must be non-empty and without '/'");
    }
    if config.node_id.is_empty() || config.node_id.contains('/') {
        return bad("node id must be non-empty and without '/'");
    }
    if config.shards == 0 || config.shards > MAX_SHARDS {
        return bad("shards must be between 1 and 65536");
    }
    if config.lease_ttl < Duration::from_secs(1) {
        return bad("lease TTL must be at least 1 s");
    }
    if config.poll.is_zero() {
        return bad("poll interval must be positive");
    }
    Ok(())
}

impl<O: ShardOpener> Cluster<O> {
    /// Joins the cluster `config.name` (creating it with `config.shards` shards if it does
    /// not exist yet), grants this node's lease, registers the node and starts the
    /// background tasks that take and release shards. Returns once the node is registered;
    /// shards become [`Route::Local`] as they are opened.
    ///
    /// Fails with [`ClusterError::StoreMismatch`] if the cluster records another store.
    /// The recorded shard count wins over `config.shards`.
    pub async fn join(config: ClusterConfig, opener: O) -> Result<Arc<Self>, ClusterError> {
        validate(&config)?;
        let etcd = EtcdClient::new(&config.endpoints, etcd::DEFAULT_TIMEOUT)?;
        let keys = Keys::new(&config.name);
        let recorded = match read_config(&etcd, &keys).await? {
            Some(c) => c,
            None => {
                let c = RecordedConfig {
                    shards: config.shards,
                    store: config.store.clone(),
                    secret: random_secret(),
                    lease_ttl_secs: config.lease_ttl.as_secs_f64().ceil() as u64,
                    created_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                };
                let value =
                    serde_json::to_vec(&c).map_err(|e| ClusterError::BadConfig(e.to_string()))?;
                if etcd.create(&keys.config, &value, None).await?.is_some() {
                    tracing::info!(cluster = %config.name, shards = c.shards, store = %c.store, "created cluster");
                    c
                } else {
                    read_config(&etcd, &keys)
                        .await?
                        .ok_or_else(|| ClusterError::NotFound(config.name.clone()))?
                }
            }
        };
        if recorded.store != config.store {
            return Err(ClusterError::StoreMismatch {
                recorded: recorded.store,
                ours: config.store,
            });
        }
        if recorded.shards != config.shards {
            tracing::info!(
                recorded = recorded.shards,
                flag = config.shards,
                "using the cluster's recorded shard count"
            );
        }
        let ttl = config.lease_ttl;
        let ttl_secs = (ttl.as_secs_f64().ceil() as i64).max(1);
        let margin = (ttl / 10).max(Duration::from_millis(100));
        let shards = recorded.shards;
        opener.configured(shards);
        let inner = Arc::new(Inner {
            etcd,
            opener: Arc::new(opener),
            keys,
            name: config.name,
            node_id: config.node_id,
            advertise: config.advertise,
            recorded,
            ttl,
            ttl_secs,
            margin,
            poll: config.poll,
            reader: config.reader,
            lag_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            state: Mutex::new(State {
                lease: None,
                valid_until: None,
                leaving: false,
                local: HashMap::new(),
                owners: vec![None; shards as usize],
                nodes: Vec::new(),
                readers: Vec::new(),
                unowned_since: HashMap::new(),
                retry_after: HashMap::new(),
            }),
            wake: Notify::new(),
            changed: watch::Sender::new(0),
        });
        // The first lease is granted here so that join fails if etcd cannot grant one.
        let sent = Instant::now();
        let (id, granted) = inner.etcd.lease_grant(inner.ttl_secs).await?;
        if let Err(e) = inner.register(id).await {
            let _ = inner.etcd.lease_revoke(id).await;
            return Err(e.into());
        }
        inner.install_lease(id, sent, granted);
        let lease_task = tokio::spawn(inner.clone().lease_loop(sent));
        let poll_task = tokio::spawn(inner.clone().poll_loop());
        Ok(Arc::new(Self {
            inner,
            tasks: Mutex::new(vec![lease_task, poll_task]),
        }))
    }

    /// The number of shards of the cluster (as recorded at creation).
    pub fn shards(&self) -> u32 {
        self.inner.recorded.shards
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The cluster's peer secret (32 random bytes, hex), created with the cluster config.
    pub fn secret(&self) -> &str {
        &self.inner.recorded.secret
    }

    /// Where requests for `shard` should go, from in-memory state (no I/O).
    pub fn route(&self, shard: u32) -> Route<O::Shard> {
        let st = self.inner.lock();
        if let Some(e) = st.local.get(&shard) {
            return match &e.slot {
                Slot::Held(s) if st.lease_valid(Instant::now()) => Route::Local(s.clone()),
                _ => Route::Unavailable,
            };
        }
        match st.owners.get(shard as usize) {
            Some(Some(o)) if o.node != self.inner.node_id => Route::Remote {
                node: o.node.clone(),
                url: o.url.clone(),
            },
            _ => Route::Unavailable,
        }
    }

    /// Like [`Cluster::route`], but waits (up to `timeout`) while the shard is
    /// [`Route::Unavailable`].
    pub async fn wait_route(&self, shard: u32, timeout: Duration) -> Route<O::Shard> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.changed.subscribe();
        loop {
            let r = self.route(shard);
            let now = Instant::now();
            if !matches!(r, Route::Unavailable) || now >= deadline {
                return r;
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }

    /// On a reader node: the bound of its replicas' lag, in ms, registered in etcd with the
    /// node each poll (shown by `mnemo cluster status`).
    pub fn report_lag(&self, lag_ms: Option<u64>) {
        self.inner.lag_ms.store(
            lag_ms.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Asks the background task to re-read owners now (e.g. after a peer answered "not
    /// owner").
    pub fn refresh(&self) {
        self.inner.wake.notify_one();
    }

    /// True only while this node holds `shard` and its lease is still valid by its own
    /// clock. Call after a write completes and before acknowledging it.
    pub fn may_acknowledge(&self, shard: u32) -> bool {
        let st = self.inner.lock();
        st.lease_valid(Instant::now())
            && matches!(
                st.local.get(&shard),
                Some(LocalShard {
                    slot: Slot::Held(_),
                    ..
                })
            )
    }

    /// True while this node's lease is valid by its own clock: the last successful grant or
    /// renewal was sent less than TTL − margin ago (margin = max(TTL/10, 100 ms)).
    pub fn lease_valid(&self) -> bool {
        self.inner.lock().lease_valid(Instant::now())
    }

    /// The instant until which this node's lease is valid by its own clock, if it has one.
    pub fn lease_valid_until(&self) -> Option<Instant> {
        let st = self.inner.lock();
        st.lease.and(st.valid_until)
    }

    /// The shards this node holds (open and owned), sorted.
    pub fn local_shards(&self) -> Vec<u32> {
        let st = self.inner.lock();
        let mut v: Vec<u32> = st
            .local
            .iter()
            .filter(|(_, e)| matches!(e.slot, Slot::Held(_)))
            .map(|(&n, _)| n)
            .collect();
        v.sort_unstable();
        v
    }

    /// This node's view of the cluster (from the last poll; no I/O).
    pub fn status(&self) -> ClusterStatus {
        let st = self.inner.lock();
        ClusterStatus {
            name: self.inner.name.clone(),
            shards: self.inner.recorded.shards,
            store: self.inner.recorded.store.clone(),
            lease_ttl_secs: self.inner.recorded.lease_ttl_secs,
            nodes: st.nodes.clone(),
            readers: st.readers.clone(),
            owners: owner_statuses(&st.owners),
        }
    }

    /// Leaves gracefully: stops taking shards, unregisters the node, closes every owned
    /// shard (`opener.close`) and deletes its owner key, then revokes the lease.
    pub async fn leave(&self) {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            if st.leaving {
                return;
            }
            st.leaving = true;
        }
        tracing::info!(node = %inner.node_id, "leaving the cluster");
        inner.wake.notify_one();
        // Unregister first so that the other nodes plan without this one.
        if let Err(e) = inner.etcd.delete(&inner.keys.node(&inner.node_id)).await {
            tracing::warn!(error = %e, "cannot delete node key");
        }
        let held: Vec<(u32, i64, Arc<O::Shard>)> = {
            let mut st = inner.lock();
            st.local
                .iter_mut()
                .filter_map(
                    |(&n, e)| match std::mem::replace(&mut e.slot, Slot::Closing) {
                        Slot::Held(s) => Some((n, e.rev, s)),
                        other => {
                            e.slot = other;
                            None
                        }
                    },
                )
                .collect()
        };
        inner.update_gauges();
        inner.bump();
        futures::future::join_all(
            held.into_iter()
                .map(|(n, rev, s)| inner.clone().close_and_release(n, rev, s)),
        )
        .await;
        // Shards still opening are closed by their open task (it sees `leaving`).
        let deadline = Instant::now() + inner.ttl * 3;
        while !inner.lock().local.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_tasks();
        let lease = {
            let mut st = inner.lock();
            st.valid_until = None;
            st.lease.take()
        };
        if let Some(id) = lease {
            if let Err(e) = inner.etcd.lease_revoke(id).await {
                tracing::warn!(error = %e, "cannot revoke lease");
            }
        }
        inner.update_gauges();
        inner.bump();
        tracing::info!(node = %inner.node_id, "left the cluster");
    }

    /// Stops the background tasks without releasing shards or revoking the lease, as if
    /// the process had died (for tests).
    #[doc(hidden)]
    pub fn abort(&self) {
        self.stop_tasks();
    }

    fn stop_tasks(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

/// What to do with a shard after its open finished.
enum AfterOpen<S> {
    Held,
    Release(Arc<S>),
    Close(Arc<S>),
    Failed,
}

impl<O: ShardOpener> Inner<O> {
    fn lock(&self) -> MutexGuard<'_, State<O::Shard>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes everyone waiting for a state change.
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn update_gauges(&self) {
        let (held, valid, mine) = {
            let st = self.lock();
            let mine: Vec<bool> = (0..self.recorded.shards)
                .map(|n| matches!(st.local.get(&n), Some(e) if matches!(e.slot, Slot::Held(_))))
                .collect();
            (st.held_count(), st.lease_valid(Instant::now()), mine)
        };
        for (n, held) in mine.into_iter().enumerate() {
            metrics::gauge!("mnemo_cluster_shard_held", "shard" => n.to_string()).set(if held {
                1.0
            } else {
                0.0
            });
        }
        metrics::gauge!("mnemo_cluster_shards_held").set(held as f64);
        metrics::gauge!("mnemo_cluster_lease_valid").set(if valid { 1.0 } else { 0.0 });
    }

    fn retry_interval(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    /// Until when a lease renewed by a request sent at `sent` is valid by our clock.
    fn valid_until(&self, sent: Instant, granted_secs: i64) -> Instant {
        let mut ttl = self.ttl;
        if granted_secs > 0 {
            ttl = ttl.min(Duration::from_secs(granted_secs as u64));
        }
        sent + ttl.saturating_sub(self.margin)
    }

    async fn register(&self, lease: i64) -> Result<(), EtcdError> {
        let lag = self.lag_ms.load(std::sync::atomic::Ordering::Relaxed);
        let value = serde_json::to_vec(&NodeValue {
            id: self.node_id.clone(),
            url: self.advertise.clone(),
            lag_ms: (self.reader && lag != u64::MAX).then_some(lag),
        })
        .map_err(|e| EtcdError::Decode(e.to_string()))?;
        let key = if self.reader {
            format!("{}{}", self.keys.readers_prefix, self.node_id)
        } else {
            self.keys.node(&self.node_id)
        };
        self.etcd.put(&key, &value, Some(lease)).await?;
        Ok(())
    }

    fn install_lease(&self, id: i64, sent: Instant, granted: i64) {
        {
            let mut st = self.lock();
            st.lease = Some(id);
            st.valid_until = Some(self.valid_until(sent, granted));
        }
        tracing::info!(node = %self.node_id, lease = id, "lease granted");
        self.update_gauges();
        self.wake.notify_one();
        self.bump();
    }

    /// Grants, registers and renews the lease; on loss drops all shards and starts over.
    async fn lease_loop(self: Arc<Self>, first_sent: Instant) {
        let renew_every = self.ttl / 3;
        let retry = self.retry_interval();
        let mut next_attempt = first_sent + renew_every;
        loop {
            let (lease, valid_until, leaving) = {
                let st = self.lock();
                (st.lease, st.valid_until, st.leaving)
            };
            match (lease, valid_until) {
                (Some(id), Some(valid_until)) => {
                    let now = Instant::now();
                    if now >= valid_until {
                        self.lose_lease(id, "no renewal succeeded in time");
                        continue;
                    }
                    let wake_at = next_attempt.min(valid_until);
                    if wake_at > now {
                        tokio::time::sleep_until(wake_at).await;
                        continue;
                    }
                    let sent = Instant::now();
                    let budget = valid_until.saturating_duration_since(sent);
                    match tokio::time::timeout(budget, self.etcd.lease_keepalive(id)).await {
                        Ok(Ok(ttl)) if ttl > 0 => {
                            {
                                let mut st = self.lock();
                                if st.lease == Some(id) {
                                    st.valid_until = Some(self.valid_until(sent, ttl));
                                }
                            }
                            next_attempt = sent + renew_every;
                            self.update_gauges();
                        }
                        Ok(Ok(_)) => self.lose_lease(id, "etcd says the lease is gone"),
                        Ok(Err(e)) => {
                            if Instant::now() + retry >= valid_until {
                                tracing::warn!(error = %e, lease = id, "lease renewal failed");
                            } else {
                                tracing::debug!(error = %e, lease = id, "lease renewal failed");
                            }
                            next_attempt = Instant::now() + retry;
                        }
                        Err(_) => next_attempt = Instant::now() + retry,
                    }
                }
                _ => {
                    if leaving {
                        return;
                    }
                    let sent = Instant::now();
                    let granted = self.etcd.lease_grant(self.ttl_secs).await;
                    match granted {
                        Ok((id, ttl)) => match self.register(id).await {
                            Ok(()) => {
                                self.install_lease(id, sent, ttl);
                                next_attempt = sent + renew_every;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot register node");
                                let _ = self.etcd.lease_revoke(id).await;
                                tokio::time::sleep(retry).await;
                            }
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot grant lease");
                            tokio::time::sleep(retry).await;
                        }
                    }
                }
            }
        }
    }

    /// Drops every shard at once (closing them in the background) after losing lease `id`.
    fn lose_lease(self: &Arc<Self>, id: i64, reason: &str) {
        let dropped: Vec<(u32, Arc<O::Shard>)> = {
            let mut st = self.lock();
            if st.lease != Some(id) {
                return;
            }
            st.lease = None;
            st.valid_until = None;
            let mut dropped = Vec::new();
            st.local.retain(|&n, e| match &e.slot {
                Slot::Held(s) => {
                    dropped.push((n, s.clone()));
                    false
                }
                // Its open task sees the entry gone and closes the shard.
                Slot::Opening => false,
                // Its release task finishes the job.
                Slot::Closing => true,
            });
            dropped
        };
        metrics::counter!("mnemo_cluster_lease_losses_total").increment(1);
        tracing::info!(
            node = %self.node_id,
            lease = id,
            shards = dropped.len(),
            reason,
            "lease lost: dropping all shards"
        );
        self.update_gauges();
        self.bump();
        let inner = self.clone();
        tokio::spawn(async move {
            futures::future::join_all(dropped.into_iter().map(|(n, s)| inner.opener.close(n, s)))
                .await;
            // Revoke the old lease (best effort) so that its owner keys go now rather than
            // at its expiry; the shards are closed.
            let deadline = Instant::now() + (inner.ttl * 6).max(Duration::from_secs(60));
            while Instant::now() < deadline {
                match inner.etcd.lease_revoke(id).await {
                    Ok(()) => break,
                    Err(_) => {
                        tokio::time::sleep(inner.retry_interval().max(Duration::from_millis(500)))
                            .await
                    }
                }
            }
        });
        self.wake.notify_one();
    }

    async fn poll_loop(self: Arc<Self>) {
        let mut failures = 0u64;
        loop {
            if self.lock().leaving {
                return;
            }
            match self.tick().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "cluster poll works again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    // Warn on the first failure of a streak, then now and then.
                    if failures.is_multiple_of(50) {
                        tracing::warn!(error = %e, failures, "cluster poll failed");
                    } else {
                        tracing::debug!(error = %e, failures, "cluster poll failed");
                    }
                    failures += 1;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One balancing round: read nodes and owners, then take, adopt, release or drop shards.
    async fn tick(self: &Arc<Self>) -> Result<(), EtcdError> {
        let nodes_r = self.etcd.get_prefix(&self.keys.nodes_prefix).await?;
        let owners_r = self.etcd.get_prefix(&self.keys.owners_prefix).await?;
        let shards = self.recorded.shards;
        let nodes = parse_nodes(&self.keys.nodes_prefix, &nodes_r.kvs);
        if self.reader {
            // A reader follows who owns what, and registers again if its key went away.
            let readers_r = self.etcd.get_prefix(&self.keys.readers_prefix).await?;
            let readers = parse_nodes(&self.keys.readers_prefix, &readers_r.kvs);
            let lease = {
                let mut st = self.lock();
                st.nodes = nodes;
                st.owners = parse_owners(&self.keys, shards, &owners_r.kvs);
                st.readers = readers;
                // Registered again every round: the value carries the current lag.
                st.lease.filter(|_| st.lease_valid(Instant::now()))
            };
            if let Some(lease) = lease {
                self.register(lease).await?;
            }
            self.bump();
            return Ok(());
        }
        let owners = parse_owners(&self.keys, shards, &owners_r.kvs);
        let snapshot_rev = owners_r.revision;
        let now = Instant::now();
        let me = self.node_id.as_str();
        let orphan_after = self.ttl + ORPHAN_GRACE;

        let mut lost: Vec<(u32, Option<Arc<O::Shard>>)> = Vec::new();
        let mut release: Vec<(u32, i64, Arc<O::Shard>)> = Vec::new();
        let mut take: Vec<u32> = Vec::new();
        let mut adopt: Vec<(u32, i64)> = Vec::new();
        let mut delete: Vec<(u32, i64)> = Vec::new();
        let registered;
        let lease;
        {
            let mut st = self.lock();
            registered = nodes.iter().any(|n| n.id == me);
            for (n, o) in owners.iter().enumerate() {
                let n = n as u32;
                if o.is_some() {
                    st.unowned_since.remove(&n);
                } else {
                    st.unowned_since.entry(n).or_insert(now);
                }
            }
            st.retry_after.retain(|_, t| *t > now);
            st.nodes = nodes;
            st.owners = owners;
            let current = st.lease;
            lease = match current {
                Some(l) if st.lease_valid(now) && !st.leaving => l,
                _ => {
                    drop(st);
                    self.bump();
                    return Ok(());
                }
            };

            // Shards we hold whose owner key is no longer ours: ownership lost.
            let st = &mut *st;
            let owners = &st.owners;
            st.local.retain(|&n, e| {
                if e.rev > snapshot_rev || matches!(e.slot, Slot::Closing) {
                    return true;
                }
                let ours = owners
                    .get(n as usize)
                    .and_then(|o| o.as_ref())
                    .is_some_and(|o| o.mod_revision == e.rev);
                if ours {
                    return true;
                }
                lost.push((
                    n,
                    match &e.slot {
                        Slot::Held(s) => Some(s.clone()),
                        _ => None,
                    },
                ));
                false
            });

            let ids: Vec<String> = st.nodes.iter().map(|n| n.id.clone()).collect();
            let planned = plan(shards, &ids);
            let planned_node = |n: u32| planned.get(n as usize).map(|&i| ids[i].as_str());
            // Lowest-loaded live node (ties by ID): the preferred taker of orphans.
            let mut load: HashMap<&str, usize> = ids.iter().map(|id| (id.as_str(), 0)).collect();
            for o in st.owners.iter().flatten() {
                if let Some(c) = load.get_mut(o.node.as_str()) {
                    *c += 1;
                }
            }
            let least_loaded = ids
                .iter()
                .min_by_key(|id| (load.get(id.as_str()).copied().unwrap_or(0), id.as_str()))
                .map(String::as_str);
            let mut releasing = st.closing_count();

            for n in 0..shards {
                let p = planned_node(n);
                match (st.owners[n as usize].as_ref(), st.local.get_mut(&n)) {
                    (_, Some(e)) => {
                        if let Slot::Held(_) = e.slot {
                            if p.is_some_and(|p| p != me) && releasing < MAX_RELEASES_IN_FLIGHT {
                                if let Slot::Held(s) = std::mem::replace(&mut e.slot, Slot::Closing)
                                {
                                    release.push((n, e.rev, s));
                                    releasing += 1;
                                }
                            }
                        }
                    }
                    (None, None) => {
                        if st.retry_after.contains_key(&n) {
                            continue;
                        }
                        let unowned_for = st
                            .unowned_since
                            .get(&n)
                            .map(|t| now.saturating_duration_since(*t))
                            .unwrap_or_default();
                        let orphan = unowned_for >= orphan_after * 2
                            || (unowned_for >= orphan_after && least_loaded == Some(me));
                        if p == Some(me) || orphan {
                            take.push(n);
                        }
                    }
                    (Some(o), None) if o.node == me && o.lease == lease => {
                        if p == Some(me) {
                            adopt.push((n, o.mod_revision));
                        } else {
                            delete.push((n, o.mod_revision));
                        }
                    }
                    _ => {}
                }
            }
        }
        if !lost.is_empty() || !release.is_empty() {
            self.update_gauges();
            self.bump();
        }

        if !registered {
            // Our node key vanished while our lease is valid: put it back.
            self.register(lease).await?;
        }
        for (n, s) in lost {
            tracing::info!(node = %self.node_id, shard = n, "owner key no longer ours: dropping shard");
            if let Some(s) = s {
                let opener = self.opener.clone();
                tokio::spawn(async move { opener.close(n, s).await });
            }
        }
        for (n, rev, s) in release {
            tracing::info!(node = %self.node_id, shard = n, "releasing shard to its planned node");
            tokio::spawn(self.clone().close_and_release(n, rev, s));
        }
        for (n, rev) in delete {
            self.etcd
                .delete_if_mod_revision(&self.keys.owner(n), rev)
                .await?;
        }
        for (n, rev) in adopt {
            // Re-read: the snapshot may predate a deletion.
            let key = self.etcd.get(&self.keys.owner(n)).await?;
            if key.is_some_and(|kv| kv.mod_revision == rev && kv.lease == lease) {
                self.start_open(n, lease, rev);
            }
        }
        if !take.is_empty() {
            let value = serde_json::to_vec(&OwnerValue {
                node: self.node_id.clone(),
                url: self.advertise.clone(),
            })
            .map_err(|e| EtcdError::Decode(e.to_string()))?;
            for n in take {
                {
                    let st = self.lock();
                    if st.lease != Some(lease) || !st.lease_valid(Instant::now()) || st.leaving {
                        break;
                    }
                }
                match self
                    .etcd
                    .create(&self.keys.owner(n), &value, Some(lease))
                    .await
                {
                    Ok(Some(rev)) => {
                        tracing::info!(node = %self.node_id, shard = n, "took shard");
                        self.start_open(n, lease, rev);
                    }
                    Ok(None) => {}
                    Err(EtcdError::LeaseNotFound) => {
                        self.lose_lease(lease, "etcd says the lease is gone");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.bump();
        Ok(())
    }

    /// Records shard `n` as Opening (its owner key created at `rev` with `lease`) and opens
    /// it in the background.
    fn start_open(self: &Arc<Self>, n: u32, lease: i64, rev: i64) {
        {
            let mut st = self.lock();
            if st.local.contains_key(&n) {
                return;
            }
            st.local.insert(
                n,
                LocalShard {
                    slot: Slot::Opening,
                    lease,
                    rev,
                },
            );
        }
        self.bump();
        let inner = self.clone();
        tokio::spawn(async move {
            let res = inner.opener.open(n).await;
            inner.finish_open(n, lease, rev, res).await;
        });
    }

    async fn finish_open(
        self: Arc<Self>,
        n: u32,
        lease: i64,
        rev: i64,
        res: Result<Arc<O::Shard>, String>,
    ) {
        let after = {
            let mut st = self.lock();
            let now = Instant::now();
            let usable = st.lease == Some(lease) && st.lease_valid(now) && !st.leaving;
            let entry = st
                .local
                .get_mut(&n)
                .filter(|e| e.rev == rev && e.lease == lease && matches!(e.slot, Slot::Opening));
            match (res, entry) {
                (Ok(s), Some(e)) if usable => {
                    e.slot = Slot::Held(s);
                    AfterOpen::Held
                }
                (Ok(s), Some(e)) => {
                    e.slot = Slot::Closing;
                    AfterOpen::Release(s)
                }
                (Ok(s), None) => AfterOpen::Close(s),
                (Err(msg), entry) => {
                    tracing::warn!(node = %self.node_id, shard = n, error = %msg, "cannot open shard");
                    if entry.is_some() {
                        st.local.remove(&n);
                    }
                    st.retry_after
                        .insert(n, now + self.poll.max(Duration::from_secs(1)));
                    AfterOpen::Failed
                }
            }
        };
        self.update_gauges();
        self.bump();
        match after {
            AfterOpen::Held => {
                metrics::counter!("mnemo_cluster_shard_opens_total").increment(1);
                tracing::info!(node = %self.node_id, shard = n, "shard open");
            }
            AfterOpen::Release(s) => self.close_and_release(n, rev, s).await,
            AfterOpen::Close(s) => {
                self.opener.close(n, s).await;
                let _ = self
                    .etcd
                    .delete_if_mod_revision(&self.keys.owner(n), rev)
                    .await;
            }
            AfterOpen::Failed => {
                let _ = self
                    .etcd
                    .delete_if_mod_revision(&self.keys.owner(n), rev)
                    .await;
            }
        }
    }

    /// Closes a shard this node held (its slot already `Closing`), then deletes its owner
    /// key if it is still ours, then forgets the shard.
    async fn close_and_release(self: Arc<Self>, n: u32, rev: i64, s: Arc<O::Shard>) {
        self.opener.close(n, s).await;
        let key = self.keys.owner(n);
        for attempt in 0..5 {
            match self.etcd.delete_if_mod_revision(&key, rev).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(shard = n, attempt, error = %e, "cannot delete owner key");
                    tokio::time::sleep(self.retry_interval()).await;
                }
            }
        }
        {
            let mut st = self.lock();
            if st
                .local
                .get(&n)
                .is_some_and(|e| e.rev == rev && matches!(e.slot, Slot::Closing))
            {
                st.local.remove(&n);
            }
        }
        metrics::counter!("mnemo_cluster_shard_releases_total").increment(1);
        tracing::info!(node = %self.node_id, shard = n, "released shard");
        self.bump();
        self.wake.notify_one();
    }
}
