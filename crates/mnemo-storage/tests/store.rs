//! Engine-level tests of the store against the real SlateDB engine.
//!
//! The backend is chosen by `MNEMO_TEST_STORE`: unset or `file` → a local directory, `s3` →
//! the bucket `MNEMO_TEST_S3_BUCKET` (S3 emulator), `az` → the container
//! `MNEMO_TEST_AZ_CONTAINER` (Azure emulator). `scripts/test.sh` runs this file once per backend.

use bytes::Bytes;
use mnemo_storage::{
    engine::prefix_range, keys, ChangeEntry, ChangeOp, Condition, EngineConfig, KvOp, NewItem,
    Order, RemotePolicy, Scope, Store, StoreError, StoreLocation, TenantId, VectorWriteBack,
};
use std::sync::Arc;
use std::time::Duration;

struct Backend {
    location: StoreLocation,
    _dir: tempfile::TempDir,
}

fn backend() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let unique = mnemo_storage::ids::generate("t");
    let location = match std::env::var("MNEMO_TEST_STORE").as_deref() {
        Ok("s3") => {
            let bucket = std::env::var("MNEMO_TEST_S3_BUCKET").expect("MNEMO_TEST_S3_BUCKET");
            StoreLocation::from_url(&format!("s3://{bucket}/{unique}"), RemotePolicy::default())
                .expect("s3 location")
        }
        Ok("az") => {
            let c = std::env::var("MNEMO_TEST_AZ_CONTAINER").expect("MNEMO_TEST_AZ_CONTAINER");
            StoreLocation::from_url(&format!("az://{c}/{unique}"), RemotePolicy::default())
                .expect("az location")
        }
        _ => StoreLocation::local(&dir.path().join("store")).expect("local location"),
    };
    Backend {
        location,
        _dir: dir,
    }
}

async fn open(b: &Backend) -> Store {
    Store::open(EngineConfig::new(b.location.clone()))
        .await
        .expect("open store")
}

/// An unconditional put of a `text/plain` value without expiry.
async fn put_text(
    store: &Store,
    s: &Scope,
    key: &str,
    value: &'static [u8],
) -> Result<mnemo_storage::KvWritten, StoreError> {
    store
        .kv_put(
            s,
            key,
            Bytes::from_static(value),
            "text/plain".into(),
            None,
            Condition::default(),
        )
        .await
}

fn tenant() -> Scope {
    Scope::tenant(TenantId::default_tenant())
}

fn item(text: &str) -> NewItem {
    let id = mnemo_storage::ids::generate("msg_");
    let json = format!(r#"{{"id":"{id}","type":"message","role":"user","content":"{text}"}}"#);
    NewItem {
        id,
        client_id: false,
        json: Bytes::from(json),
        vector: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_keep_append_order_and_paginate_both_ways() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let (conv, _) = store
        .create_conversation(&s, Default::default(), vec![item("0")])
        .await
        .unwrap();
    for i in 1..25 {
        store
            .append_items(&s, &conv.id, vec![item(&i.to_string())])
            .await
            .unwrap();
    }
    let all = store
        .list_items(&s, &conv.id, None, 100, Order::Asc)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 25);
    assert!(!all.has_more);
    let seqs: Vec<u64> = all.items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    // Each item's parent is the item before it.
    for w in all.items.windows(2) {
        assert_eq!(w[1].parent.as_deref(), Some(w[0].id.as_str()));
    }
    // Newest first, in pages of 10.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_items(&s, &conv.id, after.as_deref(), 10, Order::Desc)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|i| i.seq));
        after = page.items.last().map(|i| i.id.clone());
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());
    let bad = store
        .list_items(&s, &conv.id, Some("msg_unknown"), 10, Order::Asc)
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_kept_once() {
    let b = backend();
    let store = Arc::new(open(&b).await);
    let s = tenant();
    let (conv, _) = store
        .create_conversation(&s, Default::default(), vec![])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        let s = s.clone();
        let id = conv.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..8 {
                let it = item(&format!("{w}-{i}"));
                ids.push(it.id.clone());
                store.append_items(&s, &id, vec![it]).await.unwrap();
            }
            ids
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    let page = store
        .list_items(&s, &conv.id, None, 1000, Order::Asc)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 128);
    let got: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 128, "no duplicates");
    // Each writer's items appear in the order it appended them.
    for ids in &expected {
        let pos: Vec<usize> = ids
            .iter()
            .map(|id| got.iter().position(|g| g == id).expect("present"))
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopen_without_close() {
    let b = backend();
    let s = tenant();
    let conv_id;
    {
        let store = open(&b).await;
        let (conv, _) = store
            .create_conversation(&s, Default::default(), vec![item("a"), item("b")])
            .await
            .unwrap();
        conv_id = conv.id;
        put_text(&store, &s, "k", b"v1").await.unwrap();
        // Dropped without close: only what was acknowledged as durable may be relied on.
    }
    let store = open(&b).await;
    let page = store
        .list_items(&s, &conv_id, None, 10, Order::Asc)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(store.kv_get(&s, "k").await.unwrap().record.value, "v1");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_is_linearizable_under_contention() {
    let b = backend();
    let store = Arc::new(open(&b).await);
    let s = tenant();
    let first = put_text(&store, &s, "counter", b"0").await.unwrap();
    assert!(first.etag.is_some());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            while wins < 10 {
                let cur = store.kv_get(&s, "counter").await.unwrap();
                let n: u64 = std::str::from_utf8(&cur.record.value)
                    .unwrap()
                    .parse()
                    .unwrap();
                let cond = Condition {
                    if_match: Some(vec![cur.record.etag()]),
                    if_none_match_any: false,
                };
                match store
                    .kv_put(
                        &s,
                        "counter",
                        Bytes::from((n + 1).to_string()),
                        "text/plain".into(),
                        None,
                        cond,
                    )
                    .await
                {
                    Ok(_) => wins += 1,
                    Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = store.kv_get(&s, "counter").await.unwrap();
    assert_eq!(v.record.value, "80");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_all_or_nothing() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let put = |k: &str, cond: Condition| KvOp::Put {
        key: k.into(),
        value: Bytes::from_static(b"x"),
        content_type: "text/plain".into(),
        ttl: None,
        condition: cond,
    };
    let exists = Condition {
        if_match: Some(vec!["*".into()]),
        if_none_match_any: false,
    };
    let err = store
        .kv_batch(&s, vec![put("a", Condition::default()), put("b", exists)])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::PreconditionFailed { index: Some(1), .. }
    ));
    assert!(matches!(
        store.kv_get(&s, "a").await,
        Err(StoreError::NotFound(_))
    ));
    let ok = store
        .kv_batch(
            &s,
            vec![
                put("a", Condition::default()),
                put("b", Condition::default()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    // A cursor past the prefix's last possible key gives an empty page, not an error.
    let past = store.kv_list(&s, "a", Some("b"), 10).await.unwrap();
    assert!(past.entries.is_empty() && !past.has_more);
    let listed = store.kv_list(&s, "", None, 10).await.unwrap();
    let keys: Vec<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_keys() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    store
        .kv_put(
            &s,
            "short",
            Bytes::from_static(b"x"),
            "text/plain".into(),
            Some(Duration::from_secs(1)),
            Condition::default(),
        )
        .await
        .unwrap();
    let e = store.kv_get(&s, "short").await.unwrap();
    assert!(e.expires_at_ms.is_some());
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if matches!(
            store.kv_get(&s, "short").await,
            Err(StoreError::NotFound(_))
        ) {
            gone = true;
            break;
        }
    }
    assert!(gone, "key with ttl 1s still readable after 10s");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_conversation_removes_every_item_key() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let (conv, items) = store
        .create_conversation(&s, Default::default(), vec![item("a"), item("b")])
        .await
        .unwrap();
    store.delete_conversation(&s, &conv.id).await.unwrap();
    assert!(matches!(
        store.get_conversation(&s, &conv.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get_item(&s, &conv.id, &items[0].id).await.is_err());
    // The items are purged in the background.
    store.purges_idle().await;
    let t = &s.tenant;
    for prefix in [
        keys::items_prefix(t, &conv.id),
        keys::item_ids_prefix(t, &conv.id),
        keys::purges_prefix(),
    ] {
        let left = store
            .engine()
            .scan(prefix_range(prefix), false, 10)
            .await
            .unwrap();
        assert!(left.is_empty(), "keys left after delete: {}", left.len());
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_conversations() {
    /// A denied access must look exactly like an absent object: `NotFound`, never another error
    /// (which would confirm the conversation exists).
    fn not_found<T: std::fmt::Debug>(res: Result<T, StoreError>, what: &str) {
        assert!(
            matches!(res, Err(StoreError::NotFound(_))),
            "{what}: expected NotFound, got {res:?}"
        );
    }

    let b = backend();
    let mut store = open(&b).await;
    let t = TenantId::default_tenant();
    let other = TenantId::new("other").unwrap();
    let alice = Scope::user(t.clone(), "alice").unwrap();
    let bob = Scope::user(t.clone(), "bob").unwrap();
    let whole_tenant = Scope::tenant(t.clone());
    let other_tenant = Scope::tenant(other.clone());
    let other_alice = Scope::user(other.clone(), "alice").unwrap();

    let mut metadata = serde_json::Map::new();
    metadata.insert("topic".into(), "secret".into());
    let (conv, stored) = store
        .create_conversation(&alice, metadata, vec![item("secret"), item("more")])
        .await
        .unwrap();
    let item_ids: Vec<String> = stored.iter().map(|i| i.id.clone()).collect();
    // The others have data of their own, which they do see: NotFound below is not a blanket
    // answer.
    let (bobs, _) = store
        .create_conversation(&bob, Default::default(), vec![item("bob's")])
        .await
        .unwrap();
    let (others, _) = store
        .create_conversation(&other_alice, Default::default(), vec![item("other's")])
        .await
        .unwrap();
    assert_eq!(store.get_conversation(&bob, &bobs.id).await.unwrap(), bobs);
    assert_eq!(
        store
            .get_conversation(&other_alice, &others.id)
            .await
            .unwrap(),
        others
    );
    assert_eq!(
        store
            .get_conversation(&other_tenant, &others.id)
            .await
            .unwrap(),
        others
    );
    not_found(
        store.get_conversation(&alice, &bobs.id).await,
        "alice reads bob's",
    );
    let log_before = store.change_log().read(&t, 0, 1000).await.unwrap();

    // Every access by another user of the tenant, or by anyone of another tenant (its
    // application, or a user with the same name), is NotFound: first with alice's conversation
    // in the tail cache, then after a reopen with a cold cache.
    for round in ["warm cache", "after reopen"] {
        for (who, s) in [
            ("bob", &bob),
            ("other tenant", &other_tenant),
            ("alice of the other tenant", &other_alice),
        ] {
            let w = |op: &str| format!("{round}: {who} {op}");
            not_found(store.get_conversation(s, &conv.id).await, &w("get"));
            for order in [Order::Asc, Order::Desc] {
                not_found(
                    store.list_items(s, &conv.id, None, 10, order).await,
                    &w("list"),
                );
                not_found(
                    store
                        .list_items(s, &conv.id, Some(&item_ids[0]), 10, order)
                        .await,
                    &w("list after"),
                );
            }
            not_found(
                store.get_item(s, &conv.id, &item_ids[0]).await,
                &w("get_item"),
            );
            not_found(
                store.append_items(s, &conv.id, vec![item("x")]).await,
                &w("append"),
            );
            let mut changed = serde_json::Map::new();
            changed.insert("topic".into(), "changed".into());
            not_found(
                store.update_conversation(s, &conv.id, changed).await,
                &w("update"),
            );
            not_found(
                store.delete_item(s, &conv.id, &item_ids[0]).await,
                &w("delete_item"),
            );
            not_found(store.delete_conversation(s, &conv.id).await, &w("delete"));
        }

        // Nothing they tried changed anything: alice (and the tenant) still have the same
        // record and items, and no change-log entry was written.
        for s in [&alice, &whole_tenant] {
            assert_eq!(
                store.get_conversation(s, &conv.id).await.unwrap(),
                conv,
                "{round}"
            );
            for order in [Order::Asc, Order::Desc] {
                let page = store
                    .list_items(s, &conv.id, None, 10, order)
                    .await
                    .unwrap();
                let mut got: Vec<String> = page.items.iter().map(|i| i.id.clone()).collect();
                if order == Order::Desc {
                    got.reverse();
                }
                assert_eq!(got, item_ids, "{round}: items after the denied writes");
                assert!(!page.has_more);
            }
            for (id, it) in item_ids.iter().zip(&stored) {
                assert_eq!(
                    &store.get_item(s, &conv.id, id).await.unwrap(),
                    it,
                    "{round}"
                );
            }
        }
        let log = store.change_log().read(&t, 0, 1000).await.unwrap();
        assert_eq!(log, log_before, "{round}: denied writes logged something");

        store.close().await.unwrap();
        store = open(&b).await;
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_fences_the_first() {
    let b = backend();
    let s = tenant();
    let first = open(&b).await;
    put_text(&first, &s, "k", b"1").await.unwrap();
    let second = open(&b).await;
    let res = put_text(&first, &s, "k", b"2").await;
    assert!(
        matches!(res, Err(StoreError::Fenced)),
        "old writer must be fenced, got {res:?}"
    );
    assert_eq!(second.kv_get(&s, "k").await.unwrap().record.value, "1");
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_records_mutations_in_order() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let first = store.change_log().subscribe();
    let second = store.change_log().subscribe();
    let (conv, _) = store
        .create_conversation(&s, Default::default(), vec![item("a")])
        .await
        .unwrap();
    put_text(&store, &s, "k", b"v").await.unwrap();
    let log = store.change_log().read(&s.tenant, 0, 100).await.unwrap();
    let ops: Vec<&ChangeOp> = log.iter().map(|e| &e.op).collect();
    assert!(matches!(
        ops[..],
        [
            ChangeOp::ConversationCreated { .. },
            ChangeOp::ItemsAdded { .. },
            ChangeOp::KvPut { .. }
        ]
    ));
    assert_eq!(log[0].conversation_id(), Some(conv.id.as_str()));
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    // Each subscriber is told which tenants moved, each once, at their newest position, and
    // one subscriber taking its news leaves the other's untouched.
    let moved = first.take_moved();
    assert_eq!(moved, vec![(s.tenant.clone(), log[2].seq)]);
    assert!(first.take_moved().is_empty());
    assert_eq!(second.take_moved(), moved);
    let other = Scope::tenant(TenantId::new("other").unwrap());
    put_text(&store, &other, "k", b"v").await.unwrap();
    let moved = first.take_moved();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].0, other.tenant);
    assert_eq!(moved[0].1, store.change_log().acknowledged(&other.tenant));
    // A subscriber that was dropped is forgotten; one that subscribes later hears only what
    // follows.
    drop(second);
    let late = store.change_log().subscribe();
    assert!(late.take_moved().is_empty());
    put_text(&store, &s, "k2", b"v").await.unwrap();
    assert_eq!(late.take_moved().len(), 1);
    tokio::time::timeout(Duration::from_secs(5), first.changed())
        .await
        .expect("a subscriber is woken by an acknowledgement");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_first_pages_skip_deleted_items() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let (conv, _) = store
        .create_conversation(&s, Default::default(), vec![])
        .await
        .unwrap();
    for order in [Order::Desc, Order::Asc] {
        let empty = store
            .list_items(&s, &conv.id, None, 4, order)
            .await
            .unwrap();
        assert!(empty.items.is_empty() && !empty.has_more);
    }
    let mut ids = Vec::new();
    for i in 0..12 {
        let stored = store
            .append_items(&s, &conv.id, vec![item(&i.to_string())])
            .await
            .unwrap();
        ids.push(stored[0].id.clone());
    }
    // Delete the newest item and two in the middle: pages must skip them and stay full.
    for i in [11, 8, 5] {
        store.delete_item(&s, &conv.id, &ids[i]).await.unwrap();
    }
    let expect: Vec<&String> = ids
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| ![11, 8, 5].contains(i))
        .map(|(_, id)| id)
        .collect();
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_items(&s, &conv.id, after.as_deref(), 4, Order::Desc)
            .await
            .unwrap();
        assert!(page.items.len() == 4 || !page.has_more);
        got.extend(page.items.iter().map(|i| i.id.clone()));
        after = page.items.last().map(|i| i.id.clone());
        if !page.has_more {
            break;
        }
    }
    assert_eq!(got.iter().collect::<Vec<_>>(), expect);
    // After the oldest item nothing follows, newest first.
    let tail = store
        .list_items(&s, &conv.id, Some(&ids[0]), 4, Order::Desc)
        .await
        .unwrap();
    assert!(tail.items.is_empty() && !tail.has_more);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_removes_their_data_only() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("acme").unwrap();
    let alice = Scope::user(t.clone(), "alice").unwrap();
    let bob = Scope::user(t.clone(), "bob").unwrap();
    let mut alice_convs = Vec::new();
    for _ in 0..3 {
        let (c, _) = store
            .create_conversation(&alice, Default::default(), vec![item("mine")])
            .await
            .unwrap();
        alice_convs.push(c.id);
    }
    let (bob_conv, _) = store
        .create_conversation(&bob, Default::default(), vec![item("bob's")])
        .await
        .unwrap();
    let tenant_scope = Scope::tenant(t.clone());
    let put = |key: &str| KvOp::Put {
        key: key.into(),
        value: Bytes::from_static(b"v"),
        content_type: "text/plain".into(),
        ttl: None,
        condition: Condition::default(),
    };
    let keys: Vec<String> = (0..150).map(|i| format!("users/alice/k{i:03}")).collect();
    for chunk in keys.chunks(100) {
        store
            .kv_batch(&tenant_scope, chunk.iter().map(|k| put(k)).collect())
            .await
            .unwrap();
    }
    store
        .kv_batch(
            &tenant_scope,
            vec![put("users/alice2/x"), put("users/bob/x"), put("shared")],
        )
        .await
        .unwrap();

    let erased = store.erase_user(&t, "alice").await.unwrap();
    assert_eq!(erased.conversations, 3);
    assert_eq!(erased.kv_keys, 150);
    for c in &alice_convs {
        assert!(matches!(
            store.get_conversation(&tenant_scope, c).await,
            Err(StoreError::NotFound(_))
        ));
    }
    store.get_conversation(&bob, &bob_conv.id).await.unwrap();
    let left = store.kv_list(&tenant_scope, "", None, 100).await.unwrap();
    let left: Vec<_> = left.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(left, vec!["shared", "users/alice2/x", "users/bob/x"]);
    // Idempotent.
    assert_eq!(
        store.erase_user(&t, "alice").await.unwrap(),
        Default::default()
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_appends_in_order_and_survives_reopen() {
    let b = backend();
    let t = TenantId::new("acme").unwrap();
    let other = TenantId::new("other").unwrap();
    let entry = |action: &str| mnemo_storage::AuditEntry {
        seq: 0,
        at_ms: 0,
        actor: "admin-app".into(),
        actor_kind: "application".into(),
        action: action.into(),
        target: Some("alice".into()),
        details: serde_json::Value::Null,
    };
    let mut seqs = Vec::new();
    {
        let store = open(&b).await;
        for i in 0..5 {
            seqs.push(
                store
                    .audit_append(&t, entry(&format!("a{i}")))
                    .await
                    .unwrap()
                    .seq,
            );
        }
        store
            .audit_append(&other, entry("elsewhere"))
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let store = open(&b).await;
    // After a restart, new entries still sort after the old ones.
    seqs.push(store.audit_append(&t, entry("a5")).await.unwrap().seq);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let (all, more) = store.audit_list(&t, None, 100).await.unwrap();
    assert!(!more);
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["a0", "a1", "a2", "a3", "a4", "a5"]);
    let (page, more) = store.audit_list(&t, Some(seqs[1]), 2).await.unwrap();
    assert!(more);
    assert_eq!(page[0].action, "a2");
    assert_eq!(page[1].action, "a3");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_kept_per_tenant_and_user_and_read_through_views() {
    let b = backend();
    let t = TenantId::new("acme").unwrap();
    let other = TenantId::new("other").unwrap();
    {
        let store = open(&b).await;
        assert_eq!(store.consent(&t, "alice").await.unwrap(), None);
        store.set_consent(&t, "alice", true).await.unwrap();
        store.set_consent(&t, "bob", true).await.unwrap();
        store.set_consent(&t, "bob", false).await.unwrap();
        store.set_consent(&other, "alice", false).await.unwrap();
        assert!(store.set_consent(&t, "", true).await.is_err());
        store.close().await.unwrap();
    }
    let store = open(&b).await;
    let alice = store.consent(&t, "alice").await.unwrap().unwrap();
    assert!(alice.research);
    assert!(!store.consent(&t, "bob").await.unwrap().unwrap().research);
    assert!(
        !store
            .consent(&other, "alice")
            .await
            .unwrap()
            .unwrap()
            .research
    );
    // A view sees the records as of its moment.
    let view = store.read_view().await.unwrap();
    store.set_consent(&t, "carol", true).await.unwrap();
    let mut rows = view.consents(&t).await.unwrap();
    let mut seen = Vec::new();
    while let Some(c) = rows.next().await.unwrap() {
        seen.push((c.user, c.research));
    }
    assert_eq!(seen, vec![("alice".into(), true), ("bob".into(), false)]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_logged_and_goes_with_an_erasure() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::default_tenant();
    store.set_consent(&t, "alice", true).await.unwrap();
    store.set_consent(&t, "alice", false).await.unwrap();
    let entries = store.change_log().read(&t, 0, 100).await.unwrap();
    let said: Vec<_> = entries
        .iter()
        .filter(|e| e.owner.as_deref() == Some("alice"))
        .map(|e| e.op.clone())
        .collect();
    assert_eq!(
        said,
        vec![
            ChangeOp::ConsentSet { research: true },
            ChangeOp::ConsentSet { research: false }
        ]
    );
    assert_eq!(said[0].event_type(), "user.consent");
    store.erase_user(&t, "alice").await.unwrap();
    assert_eq!(store.consent(&t, "alice").await.unwrap(), None);
    store.close().await.unwrap();
}

/// A pinned checkpoint holds every write acknowledged before it and none after, read by a
/// separate reader, again by its id, and by a reader of the store opened as another process
/// would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_checkpoint_holds_what_was_acknowledged_before_it() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let (conv, _) = store
        .create_conversation(
            &s,
            Default::default(),
            (0..5).map(|i| item(&format!("m{i}"))).collect(),
        )
        .await
        .unwrap();
    async fn count(view: &mnemo_storage::ReadView, s: &Scope, id: &str) -> usize {
        view.items(s, id)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .len()
    }
    let pinned = store
        .pin_checkpoint(Duration::from_secs(600), "test")
        .await
        .unwrap();
    store
        .append_items(&s, &conv.id, vec![item("after")])
        .await
        .unwrap();
    assert_eq!(count(pinned.view(), &s, &conv.id).await, 5);
    let id = pinned.id().unwrap().to_owned();
    pinned.close().await.unwrap();
    let again = store.pin_existing(&id).await.unwrap();
    assert_eq!(count(again.view(), &s, &conv.id).await, 5);
    again.close().await.unwrap();
    assert!(matches!(
        store.pin_existing("not-a-uuid").await,
        Err(StoreError::Invalid(_))
    ));
    let beside = mnemo_storage::pin_store(&b.location, None, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(count(beside.view(), &s, &conv.id).await, 6);
    beside.close().await.unwrap();
    store.close().await.unwrap();
}

/// A reader of a local store whose log is in the object store (a cluster's shard: no local
/// write-ahead log) sees every acknowledged write, including those not yet in an SST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_beside_a_store_without_a_local_log_sees_every_write() {
    let b = backend();
    let mut config = EngineConfig::new(b.location.clone());
    config.wal_dir = None;
    let store = Store::open(config).await.unwrap();
    let s = tenant();
    let (conv, _) = store
        .create_conversation(&s, Default::default(), vec![item("one"), item("two")])
        .await
        .unwrap();
    let beside = mnemo_storage::pin_store(&b.location, None, Duration::from_secs(30))
        .await
        .unwrap();
    let items = beside.view().items(&s, &conv.id).await.unwrap();
    assert_eq!(items.collect().await.unwrap().len(), 2);
    beside.close().await.unwrap();
    store.close().await.unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Life {
    Live,
    Deleting,
    Deleted,
}

/// Readers racing appenders and deleters on one conversation (served from the tail cache when
/// it can) always see a state the store could show: newest first, no item missing between two
/// it shows, every item acknowledged before the read began, no deleted item; and the cached
/// pages equal a cache-less store's pages on the same data once writes stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_cache_reads_match_the_store_under_concurrent_writes() {
    let b = backend();
    let store = Arc::new(open(&b).await);
    let scope = tenant();
    let (conv, _) = store
        .create_conversation(&scope, Default::default(), vec![item("first")])
        .await
        .expect("create");
    let acked = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u64, Life>::new(),
    ));
    acked.lock().expect("lock").insert(1, Life::Live);
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, scope, acked, id) =
            (store.clone(), scope.clone(), acked.clone(), conv.id.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..40 {
                let stored = store
                    .append_items(&scope, &id, vec![item(&format!("w{w} n{n}"))])
                    .await
                    .expect("append");
                let seq = stored[0].seq;
                acked.lock().expect("lock").insert(seq, Life::Live);
                if n % 7 == 3 {
                    // While the delete is in flight either answer is right.
                    acked.lock().expect("lock").insert(seq, Life::Deleting);
                    store
                        .delete_item(&scope, &id, &stored[0].id)
                        .await
                        .expect("delete");
                    acked.lock().expect("lock").insert(seq, Life::Deleted);
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, scope, acked, id) =
            (store.clone(), scope.clone(), acked.clone(), conv.id.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            loop {
                let before: std::collections::BTreeMap<u64, Life> =
                    acked.lock().expect("lock").clone();
                let page = store
                    .list_items(&scope, &id, None, 30, Order::Desc)
                    .await
                    .expect("list");
                let seqs: Vec<u64> = page.items.iter().map(|i| i.seq).collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] > w[1]),
                    "newest first: {seqs:?}"
                );
                let newest = seqs.first().copied().unwrap_or(0);
                let oldest = seqs.last().copied().unwrap_or(0);
                for (seq, life) in &before {
                    if *seq >= oldest && *seq <= newest && *life != Life::Deleting {
                        let live = *life == Life::Live;
                        assert_eq!(seqs.contains(seq), live, "item {seq} in {seqs:?}");
                    }
                }
                let newest_live_acked = before
                    .iter()
                    .rev()
                    .find(|(_, l)| **l == Life::Live)
                    .map(|(s, _)| *s);
                if let Some(s) = newest_live_acked {
                    assert!(
                        newest >= s,
                        "acknowledged item {s} missing, newest {newest}"
                    );
                }
                reads += 1;
                if before.len() >= 161 {
                    return reads;
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    // Quiet now: every write below is applied to the cached tail and every read is served by it.
    let newest = store
        .list_items(&scope, &conv.id, None, 5, Order::Desc)
        .await
        .expect("list");
    store
        .delete_item(&scope, &conv.id, &newest.items[1].id)
        .await
        .expect("delete cached item");
    let more = store
        .append_items(&scope, &conv.id, vec![item("a"), item("b")])
        .await
        .expect("append");
    store
        .delete_item(&scope, &conv.id, &more[0].id)
        .await
        .expect("delete appended item");
    let mut meta = serde_json::Map::new();
    meta.insert("topic".into(), "cache".into());
    store
        .update_conversation(&scope, &conv.id, meta)
        .await
        .expect("update");
    let cached_desc = store
        .list_items(&scope, &conv.id, None, 50, Order::Desc)
        .await
        .expect("desc");
    let cached_asc = store
        .list_items(&scope, &conv.id, None, 100, Order::Asc)
        .await
        .expect("asc");
    let rec = store.get_conversation(&scope, &conv.id).await.expect("get");
    // Single items (the newest from the tail, deleted ones, the oldest from the store).
    let item_ids = [
        &newest.items[0].id,
        &newest.items[1].id,
        &more[0].id,
        &more[1].id,
        &cached_asc.items[0].id,
    ];
    let mut cached_items = Vec::new();
    for i in item_ids {
        cached_items.push(store.get_item(&scope, &conv.id, i).await.ok());
    }
    assert!(cached_items[0].is_some() && cached_items[1].is_none() && cached_items[2].is_none());
    let stranger = Scope::user(scope.tenant.clone(), "stranger").expect("user scope");
    assert!(
        matches!(
            store.get_item(&stranger, &conv.id, &more[1].id).await,
            Err(StoreError::NotFound(_))
        ),
        "another user's item, cached or not, is not found"
    );
    drop(store);
    let mut cfg = EngineConfig::new(b.location.clone());
    cfg.tail_cache_bytes = 0;
    let plain = Store::open(cfg).await.expect("reopen without cache");
    for (i, cached) in item_ids.into_iter().zip(cached_items) {
        assert_eq!(
            cached,
            plain.get_item(&scope, &conv.id, i).await.ok(),
            "{i}"
        );
    }
    let desc = plain
        .list_items(&scope, &conv.id, None, 50, Order::Desc)
        .await
        .expect("desc");
    let asc = plain
        .list_items(&scope, &conv.id, None, 100, Order::Asc)
        .await
        .expect("asc");
    assert_eq!(cached_desc.items, desc.items);
    assert_eq!(cached_desc.has_more, desc.has_more);
    assert_eq!(cached_asc.items, asc.items);
    assert_eq!(cached_asc.has_more, asc.has_more);
    assert_eq!(
        rec.last_seq,
        plain
            .get_conversation(&scope, &conv.id)
            .await
            .expect("get")
            .last_seq
    );
    assert_eq!(rec.last_seq, 163);
    assert_eq!(
        rec.metadata,
        plain
            .get_conversation(&scope, &conv.id)
            .await
            .expect("get")
            .metadata
    );
}

/// Readers racing writers of the same keys (served from the cache of values when they can)
/// never see a value older than the last one acknowledged before the read began, nor a key
/// missing that no delete could have removed; and once writes stop, every value read through
/// the cache equals what a cache-less store reads from the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_reads_match_the_store_under_concurrent_writes() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    const WRITERS: usize = 4;
    const OPS: u64 = 60;
    let b = backend();
    let store = Arc::new(open(&b).await);
    let s = tenant();
    // Writer w alone writes keys a{w} and b{w}; op n writes value n to a{w} (in a batch with
    // b{w} when n % 4 == 1, with a TTL when n % 3 == 0) or deletes it (n % 5 == 0).
    let acked: Arc<Vec<[AtomicU64; 2]>> = Arc::new(
        (0..WRITERS)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect(),
    );
    let put = |key: String, n: u64| KvOp::Put {
        key,
        value: Bytes::from(n.to_string()),
        content_type: "text/plain".into(),
        ttl: n.is_multiple_of(3).then(|| Duration::from_secs(3600)),
        condition: Condition::default(),
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, s, acked) = (store.clone(), s.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 1..=OPS {
                let a = format!("a{w}");
                if n % 5 == 0 {
                    store
                        .kv_delete(&s, &a, Condition::default())
                        .await
                        .expect("delete");
                } else if n % 4 == 1 {
                    let ops = vec![put(a, n), put(format!("b{w}"), n)];
                    store.kv_batch(&s, ops).await.expect("batch");
                    acked[w][1].store(n, SeqCst);
                } else {
                    store.kv_batch(&s, vec![put(a, n)]).await.expect("put");
                }
                acked[w][0].store(n, SeqCst);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..3 {
        let (store, s, acked) = (store.clone(), s.clone(), acked.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            loop {
                let w = (reads as usize + r) % WRITERS;
                let (slot, key) = match reads % 2 {
                    0 => (0, format!("a{w}")),
                    _ => (1, format!("b{w}")),
                };
                let before = acked[w][slot].load(SeqCst);
                let res = store.kv_get(&s, &key).await;
                // Writes acknowledged during the read, and the writer's op in flight, may show.
                let latest = acked[w][0].load(SeqCst) + 1;
                match res {
                    Ok(e) => {
                        let n: u64 = std::str::from_utf8(&e.record.value)
                            .expect("utf-8")
                            .parse()
                            .expect("number");
                        assert!(
                            n >= before,
                            "{key}: read {n} after {before} was acknowledged"
                        );
                        assert!(n <= latest, "{key}: read {n} before it was written");
                        assert_eq!(
                            e.expires_at_ms.is_some(),
                            n.is_multiple_of(3),
                            "{key} = {n}"
                        );
                    }
                    Err(StoreError::NotFound(_)) => {
                        // Absent only before the first write, or by a delete done or in flight.
                        let deleted = slot == 0 && (before..=latest).any(|m| m % 5 == 0);
                        assert!(
                            before == 0 || deleted,
                            "{key} missing after {before} was acknowledged"
                        );
                    }
                    Err(e) => panic!("{key}: {e}"),
                }
                reads += 1;
                if (0..WRITERS).all(|w| acked[w][0].load(SeqCst) == OPS) {
                    return reads;
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    let keys: Vec<String> = (0..WRITERS)
        .flat_map(|w| [format!("a{w}"), format!("b{w}")])
        .collect();
    let mut cached = Vec::new();
    for k in &keys {
        cached.push(store.kv_get(&s, k).await.ok());
    }
    drop(store);
    let mut cfg = EngineConfig::new(b.location.clone());
    cfg.kv_cache_bytes = 0;
    let plain = Store::open(cfg).await.expect("reopen without cache");
    for (k, c) in keys.iter().zip(cached) {
        assert_eq!(c, plain.kv_get(&s, k).await.ok(), "{k}");
    }
    // OPS is a multiple of 5: every a{w} ends deleted; b{w} holds the last batched value.
    assert!(plain.kv_get(&s, "a0").await.is_err());
    assert_eq!(plain.kv_get(&s, "b0").await.expect("b0").record.value, "57");
    plain.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_vector_write_back_never_resurrects_and_logs_nothing() {
    let b = backend();
    let store = open(&b).await;
    let s = tenant();
    let t = s.tenant.clone();
    let mut with_client_vector = item("c");
    with_client_vector.vector = Some(vec![0.5, 0.5]);
    let (conv, items) = store
        .create_conversation(
            &s,
            Default::default(),
            vec![item("a"), item("b"), with_client_vector],
        )
        .await
        .unwrap();
    let (gone_conv, gone_items) = store
        .create_conversation(&s, Default::default(), vec![item("d")])
        .await
        .unwrap();
    store.delete_item(&s, &conv.id, &items[1].id).await.unwrap();
    store.delete_conversation(&s, &gone_conv.id).await.unwrap();
    // The purge is a mutation: the log must not move after this point.
    store.purges_idle().await;
    let log_before = store.change_log().newest(&t).await.unwrap();
    let v = vec![0.25, -0.5, 1.0];

    let r = store
        .set_item_vector(&t, &conv.id, &items[0].id, v.clone())
        .await;
    assert_eq!(r.unwrap(), VectorWriteBack::Written);
    // A second write-back (a duplicate embedding) leaves the first vector.
    let r = store
        .set_item_vector(&t, &conv.id, &items[0].id, vec![9.0, 9.0, 9.0])
        .await;
    assert_eq!(r.unwrap(), VectorWriteBack::HasVector);
    // The client's vector is never replaced.
    let r = store
        .set_item_vector(&t, &conv.id, &items[2].id, v.clone())
        .await;
    assert_eq!(r.unwrap(), VectorWriteBack::HasVector);
    // Deleted item, deleted conversation, unknown ids: nothing is written.
    for (c, i) in [
        (&conv.id, &items[1].id),
        (&gone_conv.id, &gone_items[0].id),
        (&conv.id, &"msg_nope".to_string()),
        (&"conv_nope".to_string(), &items[0].id),
    ] {
        let r = store.set_item_vector(&t, c, i, v.clone()).await;
        assert_eq!(r.unwrap(), VectorWriteBack::Gone, "{c} {i}");
    }
    assert!(matches!(
        store
            .set_item_vector(&t, &conv.id, &items[0].id, Vec::new())
            .await,
        Err(StoreError::Invalid(_))
    ));

    // The write-backs are not mutations: the change log did not move.
    let log_after = store.change_log().newest(&t).await.unwrap();
    assert_eq!(log_before, log_after);
    // They become durable with the next WAL upload (here: the next durable write).
    put_text(&store, &s, "flush", b"x").await.unwrap();
    let got = store.get_item(&s, &conv.id, &items[0].id).await.unwrap();
    assert_eq!(got.vector.as_deref(), Some(&v[..]));
    assert!(got.vector_builtin);
    assert_eq!(got.json, items[0].json, "the item itself is unchanged");
    let client = store.get_item(&s, &conv.id, &items[2].id).await.unwrap();
    assert_eq!(client.vector.as_deref(), Some(&[0.5, 0.5][..]));
    assert!(!client.vector_builtin);
    assert!(matches!(
        store.get_item(&s, &conv.id, &items[1].id).await,
        Err(StoreError::NotFound(_))
    ));
    let listed = store
        .list_items(&s, &conv.id, None, 10, Order::Asc)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    // Newest first, first page: the conversation's cached tail, which took the vector too.
    let newest = store
        .list_items(&s, &conv.id, None, 10, Order::Desc)
        .await
        .unwrap();
    let first = newest.items.iter().find(|i| i.id == items[0].id).unwrap();
    assert_eq!(first.vector.as_deref(), Some(&v[..]));
    assert!(first.vector_builtin);
    // Nothing of the deleted conversation came back.
    for prefix in [
        keys::items_prefix(&t, &gone_conv.id),
        keys::item_ids_prefix(&t, &gone_conv.id),
    ] {
        let left = store
            .engine()
            .scan(prefix_range(prefix), false, 10)
            .await
            .unwrap();
        assert!(left.is_empty(), "keys of a deleted conversation came back");
    }
    // The stored vector survives a reopen (the record carries it, marked as built-in).
    store.close().await.unwrap();
    let store = open(&b).await;
    let got = store.get_item(&s, &conv.id, &items[0].id).await.unwrap();
    assert_eq!(got.vector.as_deref(), Some(&v[..]));
    assert!(got.vector_builtin);
    store.close().await.unwrap();
}

/// Every mutation writes one change-log entry naming what changed and its owner, including
/// the purge of a deleted conversation's items and a user's erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_logged_with_its_owner() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("logged").unwrap();
    let alice = Scope::user(t.clone(), "alice").unwrap();
    let (conv, items) = store
        .create_conversation(&alice, Default::default(), vec![item("a"), item("b")])
        .await
        .unwrap();
    let added = store
        .append_items(&alice, &conv.id, vec![item("c")])
        .await
        .unwrap();
    store
        .delete_item(&alice, &conv.id, &items[0].id)
        .await
        .unwrap();
    store
        .update_conversation(&alice, &conv.id, Default::default())
        .await
        .unwrap();
    store.delete_conversation(&alice, &conv.id).await.unwrap();
    // The purge (logged as `items.purged`) runs in the background: let it finish first.
    store.purges_idle().await;
    put_text(&store, &alice, "users/alice/notes", b"n")
        .await
        .unwrap();
    put_text(&store, &Scope::tenant(t.clone()), "shared", b"s")
        .await
        .unwrap();
    let log = store.change_log().read(&t, 0, 100).await.unwrap();
    let id = |s: &str| s.to_string();
    let expected = vec![
        (
            ChangeOp::ConversationCreated {
                conversation_id: conv.id.clone(),
            },
            Some("alice"),
        ),
        (
            ChangeOp::ItemsAdded {
                conversation_id: conv.id.clone(),
                item_ids: vec![id(&items[0].id), id(&items[1].id)],
            },
            Some("alice"),
        ),
        (
            ChangeOp::ItemsAdded {
                conversation_id: conv.id.clone(),
                item_ids: vec![id(&added[0].id)],
            },
            Some("alice"),
        ),
        (
            ChangeOp::ItemsDeleted {
                conversation_id: conv.id.clone(),
                item_ids: vec![id(&items[0].id)],
            },
            Some("alice"),
        ),
        (
            ChangeOp::ConversationUpdated {
                conversation_id: conv.id.clone(),
            },
            Some("alice"),
        ),
        (
            ChangeOp::ConversationDeleted {
                conversation_id: conv.id.clone(),
            },
            Some("alice"),
        ),
        (
            ChangeOp::ItemsPurged {
                conversation_id: conv.id.clone(),
                item_ids: vec![id(&items[1].id), id(&added[0].id)],
            },
            Some("alice"),
        ),
        (
            ChangeOp::KvPut {
                key: id("users/alice/notes"),
                json_object: Some(false),
                version: None,
            },
            Some("alice"),
        ),
        (
            ChangeOp::KvPut {
                key: id("shared"),
                json_object: Some(false),
                version: None,
            },
            None,
        ),
    ];
    // Versions are random: each put names one, compared as absent here.
    let got: Vec<(ChangeOp, Option<&str>)> = log
        .iter()
        .map(|e| {
            let mut op = e.op.clone();
            if let ChangeOp::KvPut { version, .. } = &mut op {
                assert!(version.take().is_some(), "a put names its version");
            }
            (op, e.owner.as_deref())
        })
        .collect();
    assert_eq!(got, expected);

    // Erasing a user removes every entry that names them; one `user.erased` remains.
    let bob = Scope::user(t.clone(), "bob").unwrap();
    store
        .create_conversation(&bob, Default::default(), vec![item("x")])
        .await
        .unwrap();
    put_text(&store, &bob, "users/bob/k", b"v").await.unwrap();
    let before = store.change_log().newest(&t).await.unwrap();
    assert!(store
        .change_log()
        .read(&t, 0, 1000)
        .await
        .unwrap()
        .iter()
        .any(|e| e.owner.as_deref() == Some("bob")));
    store.erase_user(&t, "bob").await.unwrap();
    let all = store.change_log().read(&t, 0, 1000).await.unwrap();
    let about_bob: Vec<&ChangeOp> = all
        .iter()
        .filter(|e| e.owner.as_deref() == Some("bob"))
        .map(|e| &e.op)
        .collect();
    assert_eq!(about_bob, [&ChangeOp::UserErased {}]);
    assert!(all.last().is_some_and(|e| e.seq > before));
    // Alice's entries are untouched.
    assert_eq!(
        all.iter()
            .filter(|e| e.owner.as_deref() == Some("alice"))
            .count(),
        8
    );
    let log = all;
    assert!(log.iter().any(|e| e.owner.is_none()));
    store.close().await.unwrap();
}

/// The memory rule is applied by the store itself: reads of another user's space are not
/// found, writes to it and a user's writes to shared memory are refused, whole batches
/// included, and listings show only what the scope may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_applies_the_memory_access_rule() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("rules").unwrap();
    let app = Scope::tenant(t.clone());
    let for_alice = Scope::user(t.clone(), "alice").unwrap();
    let alice = Scope::as_user(t.clone(), "alice").unwrap();
    let bob = Scope::as_user(t.clone(), "bob").unwrap();
    put_text(&store, &for_alice, "shared", b"s").await.unwrap();
    put_text(&store, &alice, "users/alice/a", b"a")
        .await
        .unwrap();
    put_text(&store, &bob, "users/bob/b", b"b").await.unwrap();
    put_text(&store, &app, "users/x", b"nobody's")
        .await
        .unwrap();
    assert!(matches!(
        put_text(&store, &alice, "shared", b"mine").await,
        Err(StoreError::Forbidden { index: None, .. })
    ));
    assert!(matches!(
        put_text(&store, &alice, "users/bob/b", b"mine").await,
        Err(StoreError::Forbidden { .. })
    ));
    assert!(matches!(
        store
            .kv_delete(&alice, "users/bob/b", Condition::default())
            .await,
        Err(StoreError::Forbidden { .. })
    ));
    let ops = vec![
        KvOp::Put {
            key: "users/alice/new".into(),
            value: Bytes::from_static(b"1"),
            content_type: "text/plain".into(),
            ttl: None,
            condition: Condition::default(),
        },
        KvOp::Delete {
            key: "users/bob/b".into(),
            condition: Condition::default(),
        },
    ];
    assert!(matches!(
        store.kv_batch(&alice, ops).await,
        Err(StoreError::Forbidden { index: Some(1), .. })
    ));
    assert!(matches!(
        store.kv_get(&app, "users/alice/new").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .kv_get(&app, "users/bob/b")
            .await
            .unwrap()
            .record
            .value,
        "b"
    );
    for (reader, key) in [
        (&alice, "users/bob/b"),
        (&bob, "users/alice/a"),
        (&alice, "users/x"),
    ] {
        assert!(matches!(
            store.kv_get(reader, key).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert_eq!(
        store.kv_get(&bob, "shared").await.unwrap().record.value,
        "s"
    );
    let keys = |page: mnemo_storage::KvPage| -> Vec<String> {
        page.entries.into_iter().map(|e| e.key).collect()
    };
    assert_eq!(
        keys(store.kv_list(&alice, "", None, 100).await.unwrap()),
        ["shared", "users/alice/a"]
    );
    assert_eq!(
        keys(store.kv_list(&bob, "users/", None, 100).await.unwrap()),
        ["users/bob/b"]
    );
    assert_eq!(
        keys(store.kv_list(&app, "", None, 100).await.unwrap()),
        ["shared", "users/alice/a", "users/bob/b", "users/x"]
    );
    store.close().await.unwrap();
}

/// A read view is one point in time: writes after it are not in any of its scans, and its
/// scans apply the scope's access rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_views_are_consistent_points_in_time() {
    use futures::TryStreamExt;
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("views").unwrap();
    let app = Scope::tenant(t.clone());
    let alice = Scope::user(t.clone(), "alice").unwrap();
    let bob = Scope::user(t.clone(), "bob").unwrap();
    let (a1, a1_items) = store
        .create_conversation(&alice, Default::default(), vec![item("1"), item("2")])
        .await
        .unwrap();
    let (a2, _) = store
        .create_conversation(&alice, Default::default(), vec![])
        .await
        .unwrap();
    let (b1, _) = store
        .create_conversation(&bob, Default::default(), vec![item("b")])
        .await
        .unwrap();
    put_text(&store, &alice, "users/alice/x", b"1")
        .await
        .unwrap();
    put_text(&store, &bob, "users/bob/x", b"1").await.unwrap();
    put_text(&store, &app, "shared", b"1").await.unwrap();
    let head = store.change_log().newest(&t).await.unwrap();

    let view = store.read_view().await.unwrap();
    // Writes after the view: none of them shows in it.
    store
        .append_items(&alice, &a1.id, vec![item("3")])
        .await
        .unwrap();
    store.delete_conversation(&alice, &a2.id).await.unwrap();
    put_text(&store, &alice, "users/alice/y", b"2")
        .await
        .unwrap();
    store
        .create_conversation(&alice, Default::default(), vec![])
        .await
        .unwrap();

    let ids = |recs: Vec<mnemo_storage::ConversationRecord>| -> Vec<String> {
        let mut v: Vec<String> = recs.into_iter().map(|r| r.id).collect();
        v.sort();
        v
    };
    let mut alices = vec![a1.id.clone(), a2.id.clone()];
    alices.sort();
    let mut all = vec![a1.id.clone(), a2.id.clone(), b1.id.clone()];
    all.sort();
    assert_eq!(
        ids(view
            .conversations(&alice)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()),
        alices
    );
    assert_eq!(
        ids(view
            .conversations(&app)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()),
        all
    );
    let items: Vec<String> = view
        .items(&alice, &a1.id)
        .await
        .unwrap()
        .into_stream()
        .map_ok(|i| i.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(items, [a1_items[0].id.clone(), a1_items[1].id.clone()]);
    assert!(matches!(
        view.items(&bob, &a1.id).await,
        Err(StoreError::NotFound(_))
    ));
    let keys: Vec<String> = view
        .memory(&alice, "")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["shared", "users/alice/x"]);
    let changes: Vec<ChangeEntry> = view
        .changes(&alice, 0)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(changes.iter().all(|e| e.seq <= head));
    assert!(changes.iter().all(|e| match &e.op {
        ChangeOp::KvPut { key, .. } => key == "shared" || key.starts_with("users/alice/"),
        _ => e.owner.as_deref() == Some("alice"),
    }));
    assert!(!changes.is_empty());
    let tenant_changes = view
        .changes(&app, 0)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(tenant_changes.last().map(|e| e.seq), Some(head));
    // A fresh view sees the later writes.
    let now = store.read_view().await.unwrap();
    assert_eq!(
        now.items(&alice, &a1.id)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(matches!(
        now.conversation(&alice, &a2.id).await,
        Err(StoreError::NotFound(_))
    ));
    store.close().await.unwrap();
}

/// The feed: events in commit order, scoped like every read, resumable by cursor without
/// gaps or repeats, idle cursors moving with time, and old cursors refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_is_ordered_scoped_and_resumable() {
    use mnemo_storage::{Cursor, FeedError, FeedStart};
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("feed").unwrap();
    let app = Scope::tenant(t.clone());
    let alice = Scope::as_user(t.clone(), "alice").unwrap();
    let for_bob = Scope::user(t.clone(), "bob").unwrap();
    let (a_conv, _) = store
        .create_conversation(&alice, Default::default(), vec![item("1")])
        .await
        .unwrap();
    let (b_conv, _) = store
        .create_conversation(&for_bob, Default::default(), vec![item("2")])
        .await
        .unwrap();
    put_text(&store, &alice, "users/alice/k", b"v")
        .await
        .unwrap();
    put_text(&store, &for_bob, "users/bob/k", b"v")
        .await
        .unwrap();
    put_text(&store, &app, "shared", b"v").await.unwrap();
    store.delete_conversation(&alice, &a_conv.id).await.unwrap();
    // Its purge (one `items.purged` entry) runs in the background.
    store.purges_idle().await;
    let log = store.change_log().read(&t, 0, 1000).await.unwrap();

    // The tenant sees every event (not the storage-side purge), in commit order, in pages.
    let mut seen = Vec::new();
    let mut start = FeedStart::Oldest;
    loop {
        let page = store.read_changes(&app, start, 3).await.unwrap();
        seen.extend(page.entries.iter().map(|e| e.seq));
        start = FeedStart::After(page.next);
        if !page.has_more {
            break;
        }
    }
    let events: Vec<u64> = log
        .iter()
        .filter(|e| !matches!(e.op, ChangeOp::ItemsPurged { .. }))
        .map(|e| e.seq)
        .collect();
    assert_eq!(seen, events);
    assert_eq!(events.len(), log.len() - 1);

    // A user sees only what is theirs and the shared memory.
    let page = store
        .read_changes(&alice, FeedStart::Oldest, 100)
        .await
        .unwrap();
    assert!(!page.entries.is_empty());
    for e in &page.entries {
        assert!(alice.can_see_change(e), "{e:?}");
        assert_ne!(e.conversation_id(), Some(b_conv.id.as_str()));
        assert!(!matches!(&e.op, ChangeOp::KvPut { key, .. } if key == "users/bob/k"));
    }
    assert!(page
        .entries
        .iter()
        .any(|e| matches!(&e.op, ChangeOp::KvPut { key, .. } if key == "shared")));

    // An idle reader's cursor moves forward; nothing written later is skipped.
    let idle = store
        .read_changes(&app, FeedStart::After(page.next), 100)
        .await
        .unwrap();
    assert!(idle.entries.is_empty() && idle.next > page.next);
    let now = store.read_changes(&app, FeedStart::Now, 100).await.unwrap();
    assert!(now.entries.is_empty());
    put_text(&store, &app, "after", b"v").await.unwrap();
    for from in [idle.next, now.next] {
        let page = store
            .read_changes(&app, FeedStart::After(from), 100)
            .await
            .unwrap();
        assert_eq!(page.entries.len(), 1);
        assert!(matches!(&page.entries[0].op, ChangeOp::KvPut { key, .. } if key == "after"));
    }

    // A cursor older than the retention window is refused with the oldest valid one.
    match store
        .read_changes(&app, FeedStart::After(Cursor::after_seq(1)), 10)
        .await
    {
        Err(FeedError::Expired { oldest }) => {
            assert!(oldest.seq() > 1);
            store
                .read_changes(&app, FeedStart::After(oldest), 10)
                .await
                .unwrap();
        }
        other => panic!("expected an expired cursor, got {other:?}"),
    }
    store.close().await.unwrap();
}

/// A value's TTL passing is a change: the sweep deletes it with a `kv.expired` entry (owner
/// included), values overwritten or deleted before their time produce none, and expiries due
/// while the server was down are caught up after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_are_logged_once_and_survive_a_restart() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("ttl").unwrap();
    let alice = Scope::user(t.clone(), "alice").unwrap();
    let put_ttl = |key: &'static str, ms: u64| {
        let (store, s) = (&store, &alice);
        async move {
            store
                .kv_put(
                    s,
                    key,
                    Bytes::from_static(b"v"),
                    "text/plain".into(),
                    Some(Duration::from_millis(ms)),
                    Condition::default(),
                )
                .await
                .unwrap()
        }
    };
    put_ttl("users/alice/expires", 1000).await;
    put_ttl("users/alice/overwritten", 1000).await;
    put_text(&store, &alice, "users/alice/overwritten", b"kept")
        .await
        .unwrap();
    put_ttl("users/alice/deleted", 1000).await;
    store
        .kv_delete(&alice, "users/alice/deleted", Condition::default())
        .await
        .unwrap();
    // Far enough out that slow object stores (the S3 emulator) cannot make it due early.
    put_ttl("users/alice/later", 3000).await;
    let before = store.change_log().newest(&t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past its time the value is absent at once, before any sweep.
    assert!(matches!(
        store.kv_get(&alice, "users/alice/expires").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.expire_due().await.unwrap(), 1);
    assert_eq!(
        store.expire_due().await.unwrap(),
        0,
        "an expiry is logged once"
    );
    let log = store.change_log().read(&t, before, 100).await.unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        log[0].op,
        ChangeOp::KvExpired {
            key: "users/alice/expires".into()
        }
    );
    assert_eq!(log[0].owner.as_deref(), Some("alice"));
    assert_eq!(
        store
            .kv_get(&alice, "users/alice/overwritten")
            .await
            .unwrap()
            .record
            .value,
        "kept"
    );
    // `later` comes due while the store is closed; the first sweep after reopening logs it.
    store.close().await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let store = open(&b).await;
    assert_eq!(store.expire_due().await.unwrap(), 1);
    let log = store.change_log().read(&t, before, 100).await.unwrap();
    assert_eq!(
        log.last().map(|e| &e.op),
        Some(&ChangeOp::KvExpired {
            key: "users/alice/later".into()
        })
    );
    assert_eq!(store.expire_due().await.unwrap(), 0);
    store.close().await.unwrap();
}

/// Creates a conversation of `n` items (appended 500 at a time); returns its id and the item
/// ids in order.
async fn conversation_of(store: &Store, s: &Scope, n: usize) -> (String, Vec<String>) {
    let (conv, _) = store
        .create_conversation(s, Default::default(), vec![])
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let batch: Vec<NewItem> = (0..(n - ids.len()).min(500))
            .map(|i| item(&i.to_string()))
            .collect();
        ids.extend(batch.iter().map(|i| i.id.clone()));
        store.append_items(s, &conv.id, batch).await.unwrap();
    }
    (conv.id, ids)
}

/// What of a deleted conversation is still stored, writes in flight included: its item
/// keys, its id-index keys, and whether its purge marker is there.
async fn stored_of(
    engine: &mnemo_storage::Engine,
    t: &TenantId,
    conv: &str,
) -> (usize, usize, bool) {
    let count = |prefix| async move {
        engine
            .scan_latest(prefix_range(prefix), false, usize::MAX)
            .await
            .unwrap()
            .len()
    };
    let items = count(keys::items_prefix(t, conv)).await;
    let index = count(keys::item_ids_prefix(t, conv)).await;
    let marker = engine
        .get_latest(&keys::purge(t, conv))
        .await
        .unwrap()
        .is_some();
    (items, index, marker)
}

/// The item ids the change log reports purged for a conversation, sorted.
async fn purged_in_log(store: &Store, t: &TenantId, conv: &str) -> Vec<String> {
    let log = store.change_log().read(t, 0, 100_000).await.unwrap();
    let mut ids: Vec<String> = log
        .into_iter()
        .filter_map(|e| match e.op {
            ChangeOp::ItemsPurged {
                conversation_id,
                item_ids,
            } if conversation_id == conv => Some(item_ids),
            _ => None,
        })
        .flatten()
        .collect();
    ids.sort();
    ids
}

/// `DELETE` of a large conversation returns once the record is gone and the purge marker
/// written, before the items are purged: right after it the marker and the items are still
/// stored, yet nothing of the conversation is readable through any read path; once the
/// background purge is done, no key of it remains and the log names every item purged once.
///
/// Runs on one thread, so the purge task cannot start before the test yields: what is
/// checked right after the delete is the state the delete returned in.
#[tokio::test]
async fn deleting_returns_before_the_purge_and_hides_every_item() {
    fn not_found<T: std::fmt::Debug>(res: Result<T, StoreError>, what: &str) {
        assert!(
            matches!(res, Err(StoreError::NotFound(_))),
            "{what}: expected NotFound, got {res:?}"
        );
    }
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("purging").unwrap();
    let s = Scope::tenant(t.clone());
    let (conv, ids) = conversation_of(&store, &s, 5_000).await;
    // Reads fill the tail cache before the delete.
    store
        .list_items(&s, &conv, None, 20, Order::Desc)
        .await
        .unwrap();
    store.get_item(&s, &conv, &ids[4_999]).await.unwrap();

    store.delete_conversation(&s, &conv).await.unwrap();
    let (items, index, marker) = stored_of(store.engine(), &t, &conv).await;
    assert!(
        marker,
        "the purge marker is still there after the delete returns"
    );
    assert!(
        items > 0 && index > 0,
        "items are purged after the delete returns"
    );

    // Every read path says 404 meanwhile.
    not_found(store.get_conversation(&s, &conv).await, "get_conversation");
    for order in [Order::Asc, Order::Desc] {
        not_found(
            store.list_items(&s, &conv, None, 20, order).await,
            "list_items",
        );
        not_found(
            store.list_items(&s, &conv, Some(&ids[10]), 20, order).await,
            "list_items after",
        );
    }
    for id in [&ids[0], &ids[2_500], &ids[4_999]] {
        not_found(store.get_item(&s, &conv, id).await, "get_item");
    }
    not_found(
        store.append_items(&s, &conv, vec![item("late")]).await,
        "append",
    );
    not_found(
        store
            .update_conversation(&s, &conv, Default::default())
            .await,
        "update",
    );
    not_found(store.delete_item(&s, &conv, &ids[0]).await, "delete_item");
    not_found(store.delete_conversation(&s, &conv).await, "delete again");
    assert_eq!(
        store
            .set_item_vector(&t, &conv, &ids[0], vec![1.0])
            .await
            .unwrap(),
        VectorWriteBack::Gone
    );
    let view = store.read_view().await.unwrap();
    not_found(view.conversation(&s, &conv).await, "view conversation");
    not_found(view.items(&s, &conv).await.map(|_| ()), "view items");
    let listed = view
        .conversations(&s)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(listed.iter().all(|r| r.id != conv));
    let scanned = store.scan_conversations(&t, None, 100).await.unwrap();
    assert!(scanned.iter().all(|r| r.id != conv));

    store.purges_idle().await;
    assert_eq!(stored_of(store.engine(), &t, &conv).await, (0, 0, false));
    let mut all = ids.clone();
    all.sort();
    assert_eq!(purged_in_log(&store, &t, &conv).await, all);
    not_found(store.get_item(&s, &conv, &ids[0]).await, "get_item after");
    store.close().await.unwrap();
}

/// A purge cut short, by a crash (the store dropped without closing) or by `close` (which
/// must not wait for it to finish), leaves its marker and items; the next open finishes it.
///
/// Runs on one thread, so the purge task cannot start before the store is dropped or closed.
#[tokio::test]
async fn an_interrupted_purge_is_finished_at_the_next_open() {
    let b = backend();
    let t = TenantId::new("purging").unwrap();
    let s = Scope::tenant(t.clone());
    let mut store = open(&b).await;
    for close in [false, true] {
        let (conv, ids) = conversation_of(&store, &s, 2_000).await;
        store.delete_conversation(&s, &conv).await.unwrap();
        if close {
            store.close().await.unwrap();
        }
        drop(store);

        // The stored state, read without opening a store (which would finish the purge).
        let engine = mnemo_storage::Engine::open(EngineConfig::new(b.location.clone()))
            .await
            .unwrap();
        let (items, index, marker) = stored_of(&engine, &t, &conv).await;
        assert!(marker, "close={close}: the marker stays");
        assert!(items > 0 && index > 0, "close={close}: items stay");
        engine.close().await.unwrap();

        store = open(&b).await;
        assert_eq!(
            stored_of(store.engine(), &t, &conv).await,
            (0, 0, false),
            "close={close}: the open finished the purge"
        );
        assert_eq!(store.resume_purges().await.unwrap(), 0);
        let mut all = ids.clone();
        all.sort();
        assert_eq!(purged_in_log(&store, &t, &conv).await, all);
        assert!(matches!(
            store.get_conversation(&s, &conv).await,
            Err(StoreError::NotFound(_))
        ));
    }
    store.close().await.unwrap();
}

/// An erasure finishes the purges of the user's conversations, those deleted just before
/// and still being purged in the background included, before it scrubs the log: no
/// `items.purged` entry naming the user follows `user.erased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_waits_for_their_purges() {
    let b = backend();
    let store = open(&b).await;
    let t = TenantId::new("erasing").unwrap();
    let carol = Scope::user(t.clone(), "carol").unwrap();
    let (deleted, _) = conversation_of(&store, &carol, 2_000).await;
    let (kept, _) = conversation_of(&store, &carol, 600).await;
    store.delete_conversation(&carol, &deleted).await.unwrap();
    let erased = store.erase_user(&t, "carol").await.unwrap();
    assert_eq!(erased.conversations, 1);
    for conv in [&deleted, &kept] {
        assert_eq!(stored_of(store.engine(), &t, conv).await, (0, 0, false));
    }
    let log = store.change_log().read(&t, 0, 1000).await.unwrap();
    let about_carol: Vec<&str> = log
        .iter()
        .filter(|e| e.owner.as_deref() == Some("carol"))
        .map(|e| e.op.event_type())
        .collect();
    assert_eq!(about_carol, ["user.erased"]);
    store.purges_idle().await;
    assert_eq!(store.change_log().read(&t, 0, 1000).await.unwrap(), log);
    store.close().await.unwrap();
}

/// A store written with SlateDB's WAL in the object store (writes acknowledged, never closed)
/// then opened with the local segment WAL: every write is there, and checkpoints, the
/// memtable flush of a clean close and a reopen work (the local log starts after the ids the
/// object-store WAL used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_its_wal_to_local_segments() {
    let b = backend();
    let Some(wal_dir) = b.location.local_wal_dir() else {
        return; // a remote store keeps the object-store WAL by default
    };
    let s = tenant();
    let mut cfg = EngineConfig::new(b.location.clone());
    cfg.wal_dir = None;
    let before = Store::open(cfg)
        .await
        .expect("open with the object-store WAL");
    for i in 0..5 {
        put_text(&before, &s, &format!("move/{i}"), b"v")
            .await
            .unwrap();
    }
    drop(before);
    assert!(!wal_dir.exists());
    let after = open(&b).await;
    assert!(wal_dir.exists());
    for i in 0..5 {
        assert_eq!(
            after
                .kv_get(&s, &format!("move/{i}"))
                .await
                .unwrap()
                .record
                .value,
            Bytes::from_static(b"v")
        );
    }
    put_text(&after, &s, "move/new", b"w").await.unwrap();
    let pinned = after
        .pin_checkpoint(Duration::from_secs(60), "move")
        .await
        .expect("a checkpoint right after the move");
    pinned.close().await.unwrap();
    after
        .close()
        .await
        .expect("a clean close flushes the memtable");
    drop(after);
    let again = open(&b).await;
    assert_eq!(
        again.kv_get(&s, "move/new").await.unwrap().record.value,
        Bytes::from_static(b"w")
    );
    assert_eq!(
        again.kv_get(&s, "move/4").await.unwrap().record.value,
        Bytes::from_static(b"v")
    );
    again.close().await.unwrap();
}

/// A read-only store reads what the writer made durable, follows it as it advances, and
/// refuses every write without touching the store.
#[tokio::test]
async fn a_read_only_store_follows_the_writer_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::local(dir.path()).unwrap();
    let writer = Store::open(EngineConfig::new(location.clone()))
        .await
        .unwrap();
    let s = tenant();
    let (first, _) = writer
        .create_conversation(&s, Default::default(), vec![item("one")])
        .await
        .unwrap();
    let wal = location.local_wal_dir();
    let reader = Arc::new(
        Store::open_read_only(
            EngineConfig::new(location.clone()),
            wal,
            Duration::from_millis(50),
        )
        .await
        .unwrap(),
    );
    assert!(reader.engine().is_read_only());
    assert_eq!(
        reader.get_conversation(&s, &first.id).await.unwrap().id,
        first.id
    );
    let denied = reader
        .create_conversation(&s, Default::default(), vec![item("x")])
        .await;
    assert!(matches!(denied, Err(StoreError::ReadOnly)), "{denied:?}");
    // The writer moves on; the reader's change log learns of it from the follower.
    let changes = reader.change_log().subscribe();
    let _follow = reader.spawn_follow(Duration::from_millis(50));
    let (second, _) = writer
        .create_conversation(&s, Default::default(), vec![item("two")])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = reader.get_conversation(&s, &second.id).await.is_ok();
        let told = !changes.take_moved().is_empty();
        if seen && told {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seen {seen}, told {told}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.close().await.unwrap();
    writer.close().await.unwrap();
}
