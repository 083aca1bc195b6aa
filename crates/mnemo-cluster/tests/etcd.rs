//! Cluster tests against a real etcd (`/usr/bin/etcd`, Debian's `etcd-server`).
//!
//! Each test starts its own etcd on free 127.0.0.1 ports. Without the binary the tests
//! print a note and pass, except when `CI` is set: then they fail.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mnemo_cluster::{
    plan, read_status, Cluster, ClusterConfig, ClusterError, EtcdClient, Route, ShardOpener,
};
use tokio::time::Instant;

const ETCD_BIN: &str = "/usr/bin/etcd";
const TTL: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// etcd harness

struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd, or returns None (test skipped) if the binary is missing outside CI.
    async fn start() -> Option<Etcd> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        if !Path::new(ETCD_BIN).exists() {
            if std::env::var_os("CI").is_some() {
                panic!("{ETCD_BIN} is missing (install etcd-server); CI must run these tests");
            }
            eprintln!("note: {ETCD_BIN} missing, skipping (apt-get install -y etcd-server)");
            return None;
        }
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        Some(etcd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(ETCD_BIN)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = EtcdClient::new(&[self.url()], Duration::from_millis(500)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if client.get("/ready-probe").await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Fake opener recording a global order of events

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenStart,
    Opened,
    Closed,
}

#[derive(Debug, Clone)]
struct Event {
    node: String,
    kind: Kind,
    shard: u32,
    at: Instant,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, node: &str, kind: Kind, shard: u32) {
        self.0.lock().unwrap().push(Event {
            node: node.to_string(),
            kind,
            shard,
            at: Instant::now(),
        });
    }
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, node: &str, kind: Kind) -> usize {
        self.events()
            .iter()
            .filter(|e| e.node == node && e.kind == kind)
            .count()
    }
}

#[derive(Debug)]
struct FakeShard {
    node: String,
    shard: u32,
}

struct Fake {
    node: String,
    log: Log,
}

impl ShardOpener for Fake {
    type Shard = FakeShard;

    fn open(&self, shard: u32) -> BoxFuture<'static, Result<Arc<FakeShard>, String>> {
        let (node, log) = (self.node.clone(), self.log.clone());
        Box::pin(async move {
            log.push(&node, Kind::OpenStart, shard);
            tokio::time::sleep(Duration::from_millis(30)).await;
            log.push(&node, Kind::Opened, shard);
            Ok(Arc::new(FakeShard { node, shard }))
        })
    }

    fn close(&self, shard: u32, s: Arc<FakeShard>) -> BoxFuture<'static, ()> {
        let (node, log) = (self.node.clone(), self.log.clone());
        Box::pin(async move {
            assert_eq!(s.shard, shard);
            assert_eq!(s.node, node);
            tokio::time::sleep(Duration::from_millis(30)).await;
            log.push(&node, Kind::Closed, shard);
        })
    }
}

fn config(etcd: &Etcd, name: &str, node: &str, shards: u32, store: &str) -> ClusterConfig {
    ClusterConfig {
        endpoints: vec![etcd.url()],
        name: name.to_string(),
        node_id: node.to_string(),
        advertise: url_of(node),
        shards,
        store: store.to_string(),
        lease_ttl: TTL,
        poll: POLL,
        reader: false,
    }
}

fn url_of(node: &str) -> String {
    format!("http://{node}.test:8080")
}

async fn join(etcd: &Etcd, name: &str, node: &str, log: &Log) -> Arc<Cluster<Fake>> {
    Cluster::join(
        config(etcd, name, node, 8, "memory:///store"),
        Fake {
            node: node.to_string(),
            log: log.clone(),
        },
    )
    .await
    .unwrap()
}

async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every shard is held by exactly one of `nodes`, the nodes hold as many shards each (±1),
/// and all nodes route every shard alike.
fn converged(nodes: &[&Arc<Cluster<Fake>>], shards: u32) -> Result<(), String> {
    let counts: Vec<usize> = nodes.iter().map(|c| c.local_shards().len()).collect();
    let (min, max) = (counts.iter().min(), counts.iter().max());
    if let (Some(min), Some(max)) = (min, max) {
        if max - min > 1 {
            return Err(format!("unbalanced: {counts:?}"));
        }
    }
    let mut owner: Vec<Option<&str>> = vec![None; shards as usize];
    for c in nodes {
        for s in c.local_shards() {
            if let Some(other) = owner[s as usize] {
                return Err(format!("shard {s} held by {other} and {}", c.node_id()));
            }
            owner[s as usize] = Some(c.node_id());
        }
    }
    for (s, o) in owner.iter().enumerate() {
        let Some(o) = o else {
            return Err(format!("shard {s} not held"));
        };
        for c in nodes {
            match c.route(s as u32) {
                Route::Local(sh) if c.node_id() == *o => assert_eq!(sh.shard, s as u32),
                Route::Remote { node, url } if c.node_id() != *o && node == *o => {
                    assert_eq!(url, url_of(o))
                }
                r => {
                    return Err(format!(
                        "{} routes shard {s} to {r:?}, owner {o}",
                        c.node_id()
                    ))
                }
            }
        }
    }
    Ok(())
}

async fn wait_converged(nodes: &[&Arc<Cluster<Fake>>], shards: u32, timeout: Duration) {
    let mut last = String::new();
    let ok = eventually(timeout, || match converged(nodes, shards) {
        Ok(()) => true,
        Err(e) => {
            last = e;
            false
        }
    })
    .await;
    assert!(ok, "not converged after {timeout:?}: {last}");
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_takes_every_shard() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "one", "n1", &log).await;
    assert_eq!(n1.shards(), 8);
    assert_eq!(n1.node_id(), "n1");
    assert_eq!(n1.secret().len(), 64);
    assert!(n1.secret().chars().all(|c| c.is_ascii_hexdigit()));
    assert!(n1.lease_valid());

    // Servers box these futures: they must be Send.
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    // wait_route waits while the shard is being taken and opened.
    match assert_send(n1.wait_route(0, Duration::from_secs(5))).await {
        Route::Local(s) => assert_eq!(s.shard, 0),
        r => panic!("shard 0: {r:?}"),
    }
    wait_converged(&[&n1], 8, Duration::from_secs(5)).await;
    assert_eq!(n1.local_shards(), (0..8).collect::<Vec<_>>());
    assert!((0..8).all(|s| n1.may_acknowledge(s)));
    assert!(!n1.may_acknowledge(8));
    assert_eq!(log.count("n1", Kind::Opened), 8);

    let st = read_status(&[etcd.url()], "one").await.unwrap();
    assert_eq!(st.name, "one");
    assert_eq!(st.shards, 8);
    assert_eq!(st.store, "memory:///store");
    assert_eq!(st.lease_ttl_secs, 2);
    assert_eq!(st.nodes.len(), 1);
    assert_eq!(st.nodes[0].id, "n1");
    assert_eq!(st.nodes[0].url, url_of("n1"));
    assert!(st.nodes[0].lease_id != 0);
    assert!(st.nodes[0]
        .ttl_remaining_secs
        .is_some_and(|t| t > 0 && t <= 2));
    assert_eq!(st.owners.len(), 8);
    for (i, o) in st.owners.iter().enumerate() {
        assert_eq!(o.shard, i as u32);
        assert_eq!(o.node.as_deref(), Some("n1"));
        assert_eq!(o.url.as_deref(), Some(url_of("n1").as_str()));
    }
    // The status serializes with snake_case fields.
    let json = serde_json::to_value(&st).unwrap();
    assert!(json["nodes"][0]["ttl_remaining_secs"].is_number());
    assert!(json["lease_ttl_secs"].is_number());

    // The etcd layout: owner keys are attached to the node's lease.
    let client = EtcdClient::new(&[etcd.url()], Duration::from_secs(2)).unwrap();
    let owner = client.get("/one/owners/00007").await.unwrap().unwrap();
    assert_eq!(owner.lease, st.nodes[0].lease_id);
    let cfg: serde_json::Value =
        serde_json::from_slice(&client.get("/one/config").await.unwrap().unwrap().value).unwrap();
    assert_eq!(cfg["shards"], 8);
    assert_eq!(cfg["secret"], n1.secret());

    // The local view agrees.
    let local = n1.status();
    assert_eq!(local.owners, st.owners);
    assert_eq!(local.nodes.len(), 1);

    assert_send(n1.leave()).await;
    assert!(!n1.lease_valid());
    assert!(n1.local_shards().is_empty());
    assert_eq!(log.count("n1", Kind::Closed), 8);
    let st = read_status(&[etcd.url()], "one").await.unwrap();
    assert!(st.nodes.is_empty());
    assert!(st.owners.iter().all(|o| o.node.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_shards() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "three", "n1", &log).await;
    let n2 = join(&etcd, "three", "n2", &log).await;
    let n3 = join(&etcd, "three", "n3", &log).await;
    let nodes = [&n1, &n2, &n3];
    wait_converged(&nodes, 8, Duration::from_secs(20)).await;
    for c in nodes {
        let held = c.local_shards().len();
        assert!((2..=3).contains(&held), "{} holds {held}", c.node_id());
    }
    // The spread is the placement plan.
    let ids: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let p = plan(8, &ids);
    for c in nodes {
        let want: Vec<u32> = (0..8)
            .filter(|&s| ids[p[s as usize]] == c.node_id())
            .collect();
        assert_eq!(c.local_shards(), want, "{}", c.node_id());
    }
    let st = read_status(&[etcd.url()], "three").await.unwrap();
    assert_eq!(st.nodes.len(), 3);
    for o in &st.owners {
        let holder = nodes
            .iter()
            .find(|c| c.local_shards().contains(&o.shard))
            .unwrap();
        assert_eq!(o.node.as_deref(), Some(holder.node_id()));
    }
    for c in nodes {
        c.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_owners_and_takes_nothing() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "readers", "n1", &log).await;
    let reader = Cluster::join(
        ClusterConfig {
            reader: true,
            ..config(&etcd, "readers", "r1", 8, "memory:///store")
        },
        Fake {
            node: "r1".to_string(),
            log: log.clone(),
        },
    )
    .await
    .unwrap();
    wait_converged(&[&n1], 8, Duration::from_secs(20)).await;
    let routed = eventually(Duration::from_secs(10), || {
        (0..8).all(|s| matches!(reader.route(s), Route::Remote { ref node, .. } if node == "n1"))
    })
    .await;
    assert!(routed, "the reader routes every shard to the writer");
    assert!(reader.local_shards().is_empty());
    let st = read_status(&[etcd.url()], "readers").await.unwrap();
    assert_eq!(
        st.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    assert_eq!(
        st.readers.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["r1"]
    );
    assert_eq!(n1.local_shards().len(), 8, "a reader is not planned over");
    reader.leave().await;
    n1.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_closes_before_others_open() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "leave", "n1", &log).await;
    let n2 = join(&etcd, "leave", "n2", &log).await;
    let n3 = join(&etcd, "leave", "n3", &log).await;
    wait_converged(&[&n1, &n2, &n3], 8, Duration::from_secs(20)).await;
    let moving = n3.local_shards();
    assert!(!moving.is_empty());
    let before = log.events().len();

    n3.leave().await;
    assert!(n3.local_shards().is_empty());
    assert!(!n3.lease_valid());
    assert!(moving.iter().all(|&s| !n3.may_acknowledge(s)));
    wait_converged(&[&n1, &n2], 8, Duration::from_secs(10)).await;
    for c in [&n1, &n2] {
        assert_eq!(c.local_shards().len(), 4, "{}", c.node_id());
    }

    let events = log.events();
    for &s in &moving {
        let closed = events[before..]
            .iter()
            .position(|e| e.node == "n3" && e.kind == Kind::Closed && e.shard == s)
            .map(|i| i + before)
            .unwrap_or_else(|| panic!("n3 never closed shard {s}"));
        let opened = events[before..]
            .iter()
            .position(|e| e.node != "n3" && e.kind == Kind::OpenStart && e.shard == s)
            .map(|i| i + before)
            .unwrap_or_else(|| panic!("shard {s} never reopened"));
        assert!(
            closed < opened,
            "shard {s}: opened by {} (event {opened}) before n3 closed it (event {closed})",
            events[opened].node
        );
    }
    let st = read_status(&[etcd.url()], "leave").await.unwrap();
    assert_eq!(
        st.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    n1.leave().await;
    n2.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_shards_are_taken_after_ttl() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "kill", "n1", &log).await;
    let n2 = join(&etcd, "kill", "n2", &log).await;
    let n3 = join(&etcd, "kill", "n3", &log).await;
    wait_converged(&[&n1, &n2, &n3], 8, Duration::from_secs(20)).await;
    let orphaned = n3.local_shards();
    assert!(!orphaned.is_empty());

    let killed_at = Instant::now();
    n3.abort();
    // Its shards stay owned until its lease expires in etcd; then n1 and n2 take them.
    wait_converged(&[&n1, &n2], 8, TTL + Duration::from_secs(8)).await;
    // The dead node stops acknowledging by its own clock.
    assert!(!n3.lease_valid());
    assert!(orphaned.iter().all(|&s| !n3.may_acknowledge(s)));
    // A dead node never closes its shards.
    assert_eq!(log.count("n3", Kind::Closed), 0);
    for &s in &orphaned {
        let taken = log
            .events()
            .into_iter()
            .find(|e| {
                e.node != "n3" && e.kind == Kind::OpenStart && e.shard == s && e.at > killed_at
            })
            .unwrap_or_else(|| panic!("shard {s} not reopened"));
        // The last renewal was at most TTL/3 before the kill: no one may take the shard
        // before the lease expires in etcd (at least 2/3 TTL after the kill).
        let after = taken.at - killed_at;
        assert!(
            after >= TTL / 2,
            "shard {s} taken by {} only {after:?} after the kill",
            taken.node
        );
    }
    let st = read_status(&[etcd.url()], "kill").await.unwrap();
    assert_eq!(st.nodes.len(), 2);
    n1.leave().await;
    n2.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_safety_when_etcd_dies() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    let n1 = join(&etcd, "safety", "n1", &log).await;
    wait_converged(&[&n1], 8, Duration::from_secs(5)).await;
    // Let a few renewals happen.
    tokio::time::sleep(TTL).await;
    assert!(n1.lease_valid());
    assert!((0..8).all(|s| n1.may_acknowledge(s)));

    let valid_until = n1.lease_valid_until().unwrap();
    let killed_at = Instant::now();
    etcd.kill();
    // The last renewal was sent before the kill: validity ends before TTL after it.
    assert!(valid_until < killed_at + TTL);
    let mut became_invalid = None;
    while Instant::now() < killed_at + TTL * 2 {
        let valid = n1.lease_valid();
        let acks = (0..8).filter(|&s| n1.may_acknowledge(s)).count();
        if !valid {
            assert_eq!(acks, 0, "acknowledging without a valid lease");
            became_invalid = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let became_invalid = became_invalid.expect("lease still valid 2 TTLs after etcd died");
    assert!(
        became_invalid - killed_at < TTL,
        "lease valid for {:?} after etcd died",
        became_invalid - killed_at
    );
    assert!(became_invalid <= valid_until + Duration::from_millis(50));
    assert!((0..8).all(|s| !n1.may_acknowledge(s)));
    assert!((0..8).all(|s| matches!(n1.route(s), Route::Unavailable)));
    // All shards are dropped and closed.
    assert!(
        eventually(Duration::from_secs(2), || n1.local_shards().is_empty()
            && log.count("n1", Kind::Closed) == 8)
        .await,
        "shards not dropped: {:?}",
        n1.local_shards()
    );
    // Still no lease while etcd is down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!n1.lease_valid());

    // etcd comes back: the node gets a new lease and its shards again.
    etcd.spawn().await;
    wait_converged(&[&n1], 8, Duration::from_secs(20)).await;
    assert!(n1.lease_valid());
    assert!((0..8).all(|s| n1.may_acknowledge(s)));
    assert_eq!(log.count("n1", Kind::Opened), 16);
    let st = read_status(&[etcd.url()], "safety").await.unwrap();
    assert_eq!(st.nodes.len(), 1);
    assert!(st.owners.iter().all(|o| o.node.as_deref() == Some("n1")));
    n1.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_config_wins() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let log = Log::default();
    match read_status(&[etcd.url()], "cfg").await {
        Err(ClusterError::NotFound(name)) => assert_eq!(name, "cfg"),
        r => panic!("status of a missing cluster: {r:?}"),
    }
    let n1 = join(&etcd, "cfg", "n1", &log).await;

    // Another store is refused.
    let other = Cluster::join(
        config(&etcd, "cfg", "n2", 8, "s3://elsewhere"),
        Fake {
            node: "n2".into(),
            log: log.clone(),
        },
    )
    .await;
    match other {
        Err(ClusterError::StoreMismatch { recorded, ours }) => {
            assert_eq!(recorded, "memory:///store");
            assert_eq!(ours, "s3://elsewhere");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a node with another store joined"),
    }

    // Another shard count is ignored: the recorded one wins.
    let n3 = Cluster::join(
        config(&etcd, "cfg", "n3", 16, "memory:///store"),
        Fake {
            node: "n3".into(),
            log: log.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(n3.shards(), 8);
    assert_eq!(n3.secret(), n1.secret());
    wait_converged(&[&n1, &n3], 8, Duration::from_secs(15)).await;
    assert!(n3.local_shards().iter().all(|&s| s < 8));
    let st = read_status(&[etcd.url()], "cfg").await.unwrap();
    assert_eq!(st.shards, 8);
    assert_eq!(st.owners.len(), 8);
    assert_eq!(
        st.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1", "n3"]
    );
    n1.leave().await;
    n3.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_basics_and_failover() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    // The first endpoint is dead: the client must fail over to the second.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = EtcdClient::new(&[format!("{dead},{}", etcd.url())], Duration::from_secs(2)).unwrap();
    assert_eq!(c.endpoints().len(), 2);
    let (lease, ttl) = c.lease_grant(5).await.unwrap();
    assert_eq!(ttl, 5);
    assert!(c.create("/x/a", b"1", Some(lease)).await.unwrap().is_some());
    assert!(c.create("/x/a", b"2", None).await.unwrap().is_none());
    let rev = c.put("/x/b", b"2", None).await.unwrap();
    assert!(rev > 0);
    c.put("/xy", b"not in prefix", None).await.unwrap();
    let r = c.get_prefix("/x/").await.unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/x/a", "/x/b"]
    );
    assert_eq!(r.kvs[0].lease, lease);
    assert_eq!(r.kvs[1].mod_revision, rev);
    assert!(r.revision >= rev);
    assert!(!c.delete_if_value("/x/b", b"3").await.unwrap());
    assert!(c.delete_if_value("/x/b", b"2").await.unwrap());
    assert!(c.get("/x/b").await.unwrap().is_none());
    let a = c.get("/x/a").await.unwrap().unwrap();
    assert!(!c
        .delete_if_mod_revision("/x/a", a.mod_revision + 100)
        .await
        .unwrap());
    assert!(c.lease_keepalive(lease).await.unwrap() > 0);
    assert!(c.lease_time_to_live(lease).await.unwrap().is_some());
    c.lease_revoke(lease).await.unwrap();
    assert!(
        c.get("/x/a").await.unwrap().is_none(),
        "revoke deletes attached keys"
    );
    assert_eq!(c.lease_keepalive(lease).await.unwrap(), 0);
    assert_eq!(c.lease_time_to_live(lease).await.unwrap(), None);
    c.lease_revoke(lease).await.unwrap();
    assert!(matches!(
        c.put("/x/c", b"1", Some(lease)).await,
        Err(mnemo_cluster::EtcdError::LeaseNotFound)
    ));
    // Nothing answers at all.
    let none = EtcdClient::new(&[dead], Duration::from_millis(300)).unwrap();
    assert!(matches!(
        none.get("/x").await,
        Err(mnemo_cluster::EtcdError::Unreachable(_))
    ));
}
