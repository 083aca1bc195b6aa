//! Exports of a real store (SlateDB on a local directory) into local datasets: who is in,
//! what the text becomes, the same checkpoint giving the same bytes, refreshes after an
//! erasure, a consent withdrawal and a deletion, and incremental runs.

use bytes::Bytes;
use mnemo_export::dataset::{CONVERSATIONS, ITEMS};
use mnemo_export::pseudonym::IdKind;
use mnemo_export::{
    ConsentPolicy, Filters, KeyRing, Mode, Outcome, Part, Progress, Request, Source, Target,
};
use mnemo_storage::{EngineConfig, NewItem, Pinned, Scope, Store, StoreLocation, TenantId};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;
use std::time::Duration;

fn item(text: &str) -> NewItem {
    let id = mnemo_storage::ids::generate("msg_");
    let json = serde_json::json!({"id": id, "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]});
    NewItem {
        id,
        client_id: false,
        json: Bytes::from(json.to_string()),
        vector: None,
    }
}

struct Fixture {
    store: Store,
    location: StoreLocation,
    dir: tempfile::TempDir,
    tenant: TenantId,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::local(&dir.path().join("store")).unwrap();
    let store = Store::open(EngineConfig::new(location.clone()))
        .await
        .unwrap();
    Fixture {
        store,
        location,
        dir,
        tenant: TenantId::default_tenant(),
    }
}

impl Fixture {
    async fn conversation(&self, user: &str, texts: &[&str]) -> String {
        let scope = Scope::user(self.tenant.clone(), user).unwrap();
        let items = texts.iter().map(|t| item(t)).collect();
        let (c, _) = self
            .store
            .create_conversation(&scope, Default::default(), items)
            .await
            .unwrap();
        c.id
    }

    fn target(&self, name: &str) -> Target {
        Target::open(self.dir.path().join(name).to_str().unwrap()).unwrap()
    }

    async fn export(&self, to: &Target, mode: Mode, checkpoint: Option<&str>) -> Outcome {
        let pinned = match checkpoint {
            Some(id) => self.store.pin_existing(id).await.unwrap(),
            None => self
                .store
                .pin_checkpoint(Duration::from_secs(600), "test")
                .await
                .unwrap(),
        };
        let id = pinned.id().map(str::to_owned);
        run_pinned(self, vec![(None, pinned)], id, to, mode).await
    }

    async fn pseudonym(&self, kind: IdKind, id: &str) -> String {
        KeyRing::new(&self.location)
            .pseudonymizer(&self.tenant)
            .await
            .unwrap()
            .pseudonym(kind, id)
    }
}

/// Every object under the dataset, as bytes (Parquet pages are zstd-compressed, so data files
/// are decoded and their string columns searched too).
async fn everything(t: &Target) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for rel in t.list().await.unwrap() {
        let bytes = t.get(&rel).await.unwrap().unwrap();
        if rel.ends_with(".parquet") {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            let mut text = Vec::new();
            for b in reader {
                let b = b.unwrap();
                for c in b.columns() {
                    if let Some(s) = c.as_any().downcast_ref::<arrow_array::StringArray>() {
                        for v in s.iter().flatten() {
                            text.extend_from_slice(v.as_bytes());
                            text.push(b'\n');
                        }
                    }
                }
            }
            out.push((rel, text));
        } else {
            out.push((rel, bytes.to_vec()));
        }
    }
    out
}

fn holds(objects: &[(String, Vec<u8>)], needle: &str) -> Vec<String> {
    objects
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(p, _)| p.clone())
        .collect()
}

fn column(t: &Target, bytes: Bytes, name: &str) -> Vec<String> {
    let _ = t;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let c = b.column_by_name(name).unwrap();
        let s = c
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        out.extend(s.iter().map(|v| v.unwrap_or_default().to_owned()));
    }
    out
}

async fn texts(t: &Target) -> Vec<String> {
    let m = t.manifest().await.unwrap().unwrap();
    let mut out = Vec::new();
    for f in m.files.iter().filter(|f| f.table == ITEMS) {
        let bytes = t.get(&f.path).await.unwrap().unwrap();
        out.extend(column(t, bytes, "text"));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consented_scrubbed_reproducible_and_erasable() {
    let f = fixture().await;
    let t = f.tenant.clone();
    f.store.set_consent(&t, "alice", true).await.unwrap();
    f.store.set_consent(&t, "carol", true).await.unwrap();
    f.store.set_consent(&t, "dave", false).await.unwrap();
    f.conversation("alice", &["alice writes to alice@example.com", "alice two"])
        .await;
    f.conversation("bob", &["bob never consented"]).await;
    let carol_1 = f.conversation("carol", &["carol one"]).await;
    let carol_2 = f
        .conversation("carol", &["carol card 4111 1111 1111 1111", "carol three"])
        .await;
    f.conversation("dave", &["dave refused"]).await;

    let a = f.target("a");
    let out = f.export(&a, Mode::Full, None).await;
    assert_eq!((out.version, out.conversations, out.items), (1, 3, 5));
    assert_eq!(
        texts(&a).await,
        vec![
            "alice two",
            "alice writes to [EMAIL]",
            "carol card [CARD]",
            "carol one",
            "carol three"
        ]
    );
    let all = everything(&a).await;
    for absent in [
        "bob never",
        "dave refused",
        "alice@example.com",
        "4111 1111", // not "4111": a 32-digit hex pseudonym holds that now and then
        "conv_",
        "msg_",
    ] {
        let found: Vec<_> = holds(&all, absent)
            .into_iter()
            .filter(|p| p.ends_with(".parquet"))
            .collect();
        assert!(found.is_empty(), "{absent} found in {found:?}");
    }

    // The same checkpoint again: the same files, byte for byte.
    let b = f.target("b");
    let again = f.export(&b, Mode::Full, out.checkpoint.as_deref()).await;
    let (ma, mb) = (
        a.manifest().await.unwrap().unwrap(),
        b.manifest().await.unwrap().unwrap(),
    );
    assert_eq!(again.items, 5);
    assert_eq!(ma.files, mb.files);

    // Erase alice, withdraw carol's consent for nothing (she consents again), delete one of
    // carol's conversations, then refresh: none of it is left under the prefix.
    let alice_p = f.pseudonym(IdKind::User, "alice").await;
    let carol_2_p = f.pseudonym(IdKind::Conversation, &carol_2).await;
    assert!(!holds(&everything(&a).await, &alice_p).is_empty());
    f.store.erase_user(&t, "alice").await.unwrap();
    let carol = Scope::user(t.clone(), "carol").unwrap();
    f.store.delete_conversation(&carol, &carol_2).await.unwrap();
    let out = f.export(&a, Mode::Refresh, None).await;
    assert_eq!((out.version, out.conversations, out.items), (2, 1, 1));
    assert_eq!(out.rows_dropped, 6);
    let all = everything(&a).await;
    for gone in [
        alice_p.as_str(),
        carol_2_p.as_str(),
        "alice writes",
        "carol three",
    ] {
        assert!(
            holds(&all, gone).is_empty(),
            "{gone} left in {:?}",
            holds(&all, gone)
        );
    }
    assert_eq!(texts(&a).await, vec!["carol one"]);

    // Withdrawn consent: carol leaves too.
    f.store.set_consent(&t, "carol", false).await.unwrap();
    let out = f.export(&a, Mode::Refresh, None).await;
    assert_eq!((out.conversations, out.items), (0, 0));
    let carol_p = f.pseudonym(IdKind::User, "carol").await;
    assert!(holds(&everything(&a).await, &carol_p).is_empty());
    let _ = carol_1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_add_what_changed() {
    let f = fixture().await;
    let t = f.tenant.clone();
    f.store.set_consent(&t, "erin", true).await.unwrap();
    let c = f.conversation("erin", &["first"]).await;
    f.conversation("frank", &["frank, not yet"]).await;
    let d = f.target("d");
    let out = f.export(&d, Mode::Full, None).await;
    assert_eq!((out.conversations, out.items), (1, 1));

    let erin = Scope::user(t.clone(), "erin").unwrap();
    f.store
        .append_items(&erin, &c, vec![item("second"), item("third")])
        .await
        .unwrap();
    f.store.set_consent(&t, "frank", true).await.unwrap();
    let out = f.export(&d, Mode::Incremental, None).await;
    assert_eq!(out.mode, Mode::Incremental);
    assert_eq!((out.version, out.conversations, out.items), (2, 2, 4));
    assert_eq!(
        texts(&d).await,
        vec!["first", "frank, not yet", "second", "third"]
    );
    // One row per conversation: erin's was replaced, not doubled.
    let m = d.manifest().await.unwrap().unwrap();
    let mut convs = Vec::new();
    for file in m.files.iter().filter(|f| f.table == CONVERSATIONS) {
        convs.extend(column(
            &d,
            d.get(&file.path).await.unwrap().unwrap(),
            "conversation",
        ));
    }
    convs.sort();
    convs.dedup();
    assert_eq!(convs.len(), 2);
    // Nothing changed: a new version with the same rows, no new files.
    let out = f.export(&d, Mode::Incremental, None).await;
    assert_eq!((out.conversations, out.items, out.files_written), (2, 4, 0));
}

/// Exports `stores` as the parts of one source (a cluster's shards when named).
async fn export_parts(
    f: &Fixture,
    stores: &[(Option<&str>, &Store)],
    to: &Target,
    mode: Mode,
) -> Outcome {
    let mut pinned = Vec::new();
    for (_, s) in stores {
        pinned.push(
            s.pin_checkpoint(Duration::from_secs(600), "test")
                .await
                .unwrap(),
        );
    }
    let parts = stores.iter().map(|(n, _)| *n).zip(pinned).collect();
    run_pinned(f, parts, None, to, mode).await
}

/// Runs an export of `f`'s tenant over `parts`, then closes them.
async fn run_pinned(
    f: &Fixture,
    parts: Vec<(Option<&str>, Pinned)>,
    checkpoint: Option<String>,
    to: &Target,
    mode: Mode,
) -> Outcome {
    let keys = KeyRing::new(&f.location);
    let source = Source {
        parts: parts
            .iter()
            .map(|(name, p)| Part {
                name: name.map(str::to_owned),
                view: p.view(),
            })
            .collect(),
        checkpoint,
        description: "test".into(),
        tenants: vec![f.tenant.clone()],
        keys: &keys,
    };
    let request = Request {
        mode,
        filters: Filters::default(),
        policy: ConsentPolicy::OptIn,
        grace: Duration::ZERO,
        rows_per_file: mnemo_export::run::ROWS_PER_FILE,
    };
    let out = mnemo_export::run(&source, to, &request, &Arc::new(Progress::default()))
        .await
        .unwrap();
    drop(source);
    for (_, p) in parts {
        p.close().await.unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_parts_of_one_dataset() {
    let f = fixture().await;
    let t = f.tenant.clone();
    let other = StoreLocation::local(&f.dir.path().join("shard-1")).unwrap();
    let s1 = Store::open(EngineConfig::new(other)).await.unwrap();
    // Not exported (no consent); keeps the start of shard 0's log when ann is erased (a hole
    // at the start reads as a trimmed log).
    f.conversation("dan", &["dan one"]).await;
    f.store.set_consent(&t, "ann", true).await.unwrap();
    s1.set_consent(&t, "bob", true).await.unwrap();
    f.conversation("ann", &["ann one"]).await;
    let bob = Scope::user(t.clone(), "bob").unwrap();
    let (b, _) = s1
        .create_conversation(&bob, Default::default(), vec![item("bob one")])
        .await
        .unwrap();
    let shards = [(Some("00000"), &f.store), (Some("00001"), &s1)];
    let d = f.target("d");
    let out = export_parts(&f, &shards, &d, Mode::Full).await;
    assert_eq!((out.conversations, out.items), (2, 2));
    assert_eq!(texts(&d).await, vec!["ann one", "bob one"]);
    let m = d.manifest().await.unwrap().unwrap();
    let log = m.checkpoint["log"].as_object().unwrap();
    let keys: Vec<&String> = log.keys().collect();
    assert_eq!(
        keys,
        vec![&format!("{t}@00000"), &format!("{t}@00001")],
        "a position per shard"
    );

    // Each shard's log is followed from its own position.
    s1.append_items(&bob, &b.id, vec![item("bob two")])
        .await
        .unwrap();
    f.store.erase_user(&t, "ann").await.unwrap();
    let out = export_parts(&f, &shards, &d, Mode::Incremental).await;
    assert_eq!(
        (out.mode, out.fallback.as_deref()),
        (Mode::Incremental, None)
    );
    assert_eq!(texts(&d).await, vec!["bob one", "bob two"]);

    // Positions of shards say nothing about a single store: a full export instead, not the
    // single store's rows added to the shards'.
    f.store.set_consent(&t, "cat", true).await.unwrap();
    f.conversation("cat", &["cat one"]).await;
    let out = export_parts(&f, &[(None, &f.store)], &d, Mode::Incremental).await;
    assert_eq!(out.mode, Mode::Full);
    assert!(out.fallback.unwrap().contains("different layout"));
    assert_eq!(texts(&d).await, vec!["cat one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_incremental_need_a_dataset_and_leftovers_are_cleaned() {
    let f = fixture().await;
    let e = f.target("e");
    let pinned = f
        .store
        .pin_checkpoint(Duration::from_secs(60), "t")
        .await
        .unwrap();
    let keys = KeyRing::new(&f.location);
    let source = Source {
        parts: vec![Part {
            name: None,
            view: pinned.view(),
        }],
        checkpoint: None,
        description: "test".into(),
        tenants: vec![f.tenant.clone()],
        keys: &keys,
    };
    let request = Request {
        mode: Mode::Refresh,
        filters: Filters::default(),
        policy: ConsentPolicy::OptIn,
        grace: Duration::ZERO,
        rows_per_file: mnemo_export::run::ROWS_PER_FILE,
    };
    let err = mnemo_export::run(&source, &e, &request, &Arc::new(Progress::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mnemo_export::ExportError::Invalid(_)),
        "{err}"
    );
    // A file an interrupted run left, named by no manifest, goes with the next run.
    e.put("items/v1-00000.parquet", Bytes::from_static(b"partial"))
        .await
        .unwrap();
    let request = Request {
        mode: Mode::Full,
        ..request
    };
    let out = mnemo_export::run(&source, &e, &request, &Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(out.files_deleted, 1);
    assert_eq!(
        e.list().await.unwrap(),
        vec!["_manifest.json", "_manifests/v1.json"]
    );
    pinned.close().await.unwrap();
}
