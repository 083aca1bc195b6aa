//! # mnemo-cluster
//!
//! Cluster membership for mnemo: a fixed number of shards (recorded in etcd when the
//! cluster is created), each a SlateDB database with exactly one writer node at a time.
//! This crate decides which node owns which shard, with leases in etcd, and hands shards
//! over between nodes. It knows nothing of HTTP serving or SlateDB: the node opens and
//! closes shards through a [`ShardOpener`] it implements.
//!
//! - [`placement`]: which shard holds some data, and which node should own each shard.
//! - [`etcd`]: a small client for etcd's v3 JSON gateway.
//! - [`merge`]: merging the answers of several shards into one.
//! - [`Cluster`]: a node's membership: [`Cluster::join`], [`Cluster::route`],
//!   [`Cluster::may_acknowledge`], [`Cluster::leave`].
//!
//! ## etcd layout
//! - `/<name>/config`: JSON `{shards, store, secret, lease_ttl_secs, created_at}`, created
//!   once by the first node.
//! - `/<name>/nodes/<id>`: JSON `{id, url}`, attached to the node's lease.
//! - `/<name>/readers/<id>`: the same for reader nodes, which never own a shard.
//! - `/<name>/owners/<shard, 5 digits>`: JSON `{node, url}`, attached to the owner's
//!   lease, created only if absent.

#![warn(missing_docs)]

pub mod etcd;
pub mod merge;
mod node;
pub mod placement;
mod replicas;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use etcd::{EtcdClient, EtcdError};
pub use node::Cluster;
pub use placement::{id_tag, plan, shard_of, shard_of_id, shard_of_key, MAX_SHARDS};
pub use replicas::{Followed, Replicas};

/// What a node needs to open and close shards. The node's server implements it.
pub trait ShardOpener: Send + Sync + 'static {
    /// A shard opened for writing (the caller's type: its store, search, SQL...).
    type Shard: Send + Sync + 'static;
    /// Told the cluster's shard count (recorded in etcd, which may differ from the node's
    /// flag) once, before any shard is opened.
    fn configured(&self, _shards: u32) {}
    /// Opens shard `n` for writing. Opening fences any previous writer of that shard
    /// (SlateDB does this). May take seconds.
    fn open(
        &self,
        shard: u32,
    ) -> futures::future::BoxFuture<'static, Result<std::sync::Arc<Self::Shard>, String>>;
    /// Closes a shard this node owned: drain, flush, close. Called for graceful hand-over
    /// and when ownership is lost.
    fn close(
        &self,
        shard: u32,
        s: std::sync::Arc<Self::Shard>,
    ) -> futures::future::BoxFuture<'static, ()>;
}

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`; an entry may hold several
    /// comma-separated URLs.
    pub endpoints: Vec<String>,
    /// Cluster name: every key lives under `/<name>/` (default `mnemo`).
    pub name: String,
    /// This node's ID, e.g. `n1`. Must be unique among live nodes.
    pub node_id: String,
    /// This node's base URL for peers, e.g. `http://127.0.0.1:8081`.
    pub advertise: String,
    /// Number of shards; used only when this node creates the cluster (default 64).
    pub shards: u32,
    /// The store URL; recorded at creation. A node with a different store is refused.
    pub store: String,
    /// TTL of this node's lease in etcd (default 10 s; etcd counts whole seconds, at
    /// least 2).
    pub lease_ttl: Duration,
    /// How often the node re-reads owners and balances (default 1 s).
    pub poll: Duration,
    /// A reader never takes a shard: it registers under `/<name>/readers/` (not among the
    /// nodes shards are planned over) and only follows who owns what.
    pub reader: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            name: "mnemo".into(),
            node_id: String::new(),
            advertise: String::new(),
            shards: 64,
            store: String::new(),
            lease_ttl: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            reader: false,
        }
    }
}

/// Where requests for a shard should go, as seen by this node.
pub enum Route<S> {
    /// This node holds the shard and its lease is valid.
    Local(std::sync::Arc<S>),
    /// Another node owns the shard.
    Remote {
        /// The owner's node ID.
        node: String,
        /// The owner's base URL.
        url: String,
    },
    /// Nobody owns the shard (yet), or this node is opening or closing it.
    Unavailable,
}

impl<S> Clone for Route<S> {
    fn clone(&self) -> Self {
        match self {
            Route::Local(s) => Route::Local(s.clone()),
            Route::Remote { node, url } => Route::Remote {
                node: node.clone(),
                url: url.clone(),
            },
            Route::Unavailable => Route::Unavailable,
        }
    }
}

impl<S> std::fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Local(_) => f.write_str("Local"),
            Route::Remote { node, url } => f
                .debug_struct("Remote")
                .field("node", node)
                .field("url", url)
                .finish(),
            Route::Unavailable => f.write_str("Unavailable"),
        }
    }
}

/// A cluster's state: its configuration, live nodes and shard owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// Number of shards.
    pub shards: u32,
    /// The store URL recorded at creation.
    pub store: String,
    /// Lease TTL recorded at creation (seconds).
    pub lease_ttl_secs: u64,
    /// Live nodes, sorted by ID.
    pub nodes: Vec<NodeStatus>,
    /// Live reader nodes (`--role reader`), sorted by ID.
    #[serde(default)]
    pub readers: Vec<NodeStatus>,
    /// One entry per shard, in shard order.
    pub owners: Vec<ShardOwner>,
}

/// A live node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node ID.
    pub id: String,
    /// Node base URL.
    pub url: String,
    /// The node's etcd lease ID.
    pub lease_id: i64,
    /// Remaining TTL of the node's lease in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_remaining_secs: Option<i64>,
    /// A reader's replication lag bound in ms, as it last registered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

/// The owner of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    /// Shard number.
    pub shard: u32,
    /// Owner node ID, if any.
    pub node: Option<String>,
    /// Owner base URL, if any.
    pub url: Option<String>,
}

/// An error joining or reading a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The cluster was created with another store.
    #[error("cluster store mismatch: the cluster uses {recorded:?}, this node {ours:?}")]
    StoreMismatch {
        /// The store recorded in the cluster config.
        recorded: String,
        /// This node's store.
        ours: String,
    },
    /// The cluster does not exist (no config in etcd).
    #[error("cluster {0:?} not found in etcd")]
    NotFound(String),
    /// A setting or the recorded config is invalid.
    #[error("invalid cluster config: {0}")]
    BadConfig(String),
}

/// Reads a cluster's status from etcd without joining (for `mnemo cluster status`).
pub async fn read_status(endpoints: &[String], name: &str) -> Result<ClusterStatus, ClusterError> {
    let etcd = EtcdClient::new(endpoints, etcd::DEFAULT_TIMEOUT)?;
    let keys = node::Keys::new(name);
    let recorded = node::read_config(&etcd, &keys)
        .await?
        .ok_or_else(|| ClusterError::NotFound(name.to_string()))?;
    let nodes = etcd.get_prefix(&keys.nodes_prefix).await?;
    let owners = etcd.get_prefix(&keys.owners_prefix).await?;
    let readers = etcd.get_prefix(&keys.readers_prefix).await?;
    let mut nodes = node::parse_nodes(&keys.nodes_prefix, &nodes.kvs);
    let mut readers = node::parse_nodes(&keys.readers_prefix, &readers.kvs);
    for n in nodes.iter_mut().chain(readers.iter_mut()) {
        n.ttl_remaining_secs = etcd.lease_time_to_live(n.lease_id).await.ok().flatten();
    }
    let owners = node::parse_owners(&keys, recorded.shards, &owners.kvs);
    Ok(ClusterStatus {
        name: name.to_string(),
        shards: recorded.shards,
        store: recorded.store,
        lease_ttl_secs: recorded.lease_ttl_secs,
        nodes,
        readers,
        owners: node::owner_statuses(&owners),
    })
}
