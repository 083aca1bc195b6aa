//! Tests against the real SlateDB engine on a local directory: crashes (a child process killed
//! with SIGKILL), torn tails, group commit, retirement, readers and the directory lock.

use crate::{segments, SegmentWal, WalOptions};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use slatedb::config::{FlushOptions, FlushType};
use slatedb::object_store::{local::LocalFileSystem, ObjectStore};
use slatedb::wal::WalFileRange;
use slatedb::{Db, DbReader, WriteBatch};
use std::io::{BufRead, BufReader};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CHILD_DIR: &str = "MNEMO_WAL_TEST_DIR";
const CHILD_MODE: &str = "MNEMO_WAL_TEST_MODE";
const CHILD_FROM: &str = "MNEMO_WAL_TEST_FROM";

fn store(root: &Path) -> Arc<dyn ObjectStore> {
    let dir = root.join("store");
    std::fs::create_dir_all(&dir).unwrap();
    Arc::new(
        LocalFileSystem::new_with_prefix(dir)
            .unwrap()
            .with_fsync(true),
    )
}

fn wal_dir(root: &Path) -> PathBuf {
    root.join("wal")
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        memtable_flush_bytes: 64 << 20,
    }
}

async fn open_db(root: &Path, wal: &SegmentWal) -> Db {
    Db::builder("db", store(root))
        .with_wal_writer(wal.writer_init())
        .build()
        .await
        .unwrap()
}

/// Batch `i`: three keys written together.
fn batch(i: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    for part in ["a", "b", "c"] {
        b.put(format!("{i:08}/{part}"), format!("value {i} {part}"));
    }
    b
}

/// How many of batch `i`'s three keys the database holds.
async fn parts_present(db: &Db, i: u64) -> usize {
    let mut n = 0;
    for part in ["a", "b", "c"] {
        let v = db.get(format!("{i:08}/{part}")).await.unwrap();
        if let Some(v) = v {
            assert_eq!(v, Bytes::from(format!("value {i} {part}")));
            n += 1;
        }
    }
    n
}

/// The child process of the crash tests: writes batches and prints each acknowledged one.
/// Mode `concurrent`: 8 writers until killed. Mode `sequential-N`: N batches one after the
/// other, then exit without closing the database (its rows are only in the log).
#[test]
#[ignore = "run by the crash tests as a child process"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let mode = std::env::var(CHILD_MODE).unwrap();
    let from: u64 = std::env::var(CHILD_FROM).unwrap().parse().unwrap();
    if mode == "lock" {
        match SegmentWal::open(&wal_dir(Path::new(&dir)), small()) {
            Ok(_) => println!("opened"),
            Err(e) => println!("{e}"),
        }
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let root = PathBuf::from(dir);
        let wal = SegmentWal::open(&wal_dir(&root), small()).unwrap();
        let db = Arc::new(open_db(&root, &wal).await);
        if let Some(n) = mode.strip_prefix("sequential-") {
            for i in from..from + n.parse::<u64>().unwrap() {
                db.write(batch(i))
                    .await
                    .unwrap()
                    .await_durable()
                    .await
                    .unwrap();
                println!("acked {i}");
            }
            std::process::exit(0);
        }
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let db = Arc::clone(&db);
            tasks.push(tokio::spawn(async move {
                for k in 0.. {
                    let i = from + k * 8 + w;
                    db.write(batch(i))
                        .await
                        .unwrap()
                        .await_durable()
                        .await
                        .unwrap();
                    println!("acked {i}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn child(root: &Path, mode: &str, from: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "tests::child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, root)
        .env(CHILD_MODE, mode)
        .env(CHILD_FROM, from.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The batch a line of the child's output acknowledges (the test harness may print its own
/// text before the first one on the same line).
fn acked_lines(line: &str) -> Option<u64> {
    let at = line.find("acked ")?;
    line[at + 6..].trim().parse().ok()
}

/// kill -9 under 8 concurrent writers, five rounds on one store: every acknowledged batch is
/// present whole, and no batch is present in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut acked = Vec::new();
    for round in 0..5u64 {
        let from = round * 1_000_000;
        let mut proc = child(root, "concurrent", from);
        let stop_after = rng.random_range(50..400);
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < stop_after {
            let Some(line) = lines.next() else { break };
            if let Some(i) = acked_lines(&line.unwrap()) {
                acked.push(i);
                seen += 1;
            }
        }
        proc.kill().unwrap();
        proc.wait().unwrap();
        // Acknowledgements printed before the kill count too.
        for line in lines {
            if let Some(i) = acked_lines(&line.unwrap()) {
                acked.push(i);
            }
        }
        assert!(seen > 0, "round {round}: the child acknowledged nothing");
        let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
        let db = open_db(root, &wal).await;
        for &i in &acked {
            assert_eq!(
                parts_present(&db, i).await,
                3,
                "round {round}: acked batch {i}"
            );
        }
        // Batches the writers may have started but not had acknowledged: whole or absent.
        for w in 0..8 {
            for k in 0..(stop_after as u64 / 8 + 64) {
                let n = parts_present(&db, from + k * 8 + w).await;
                assert!(
                    n == 0 || n == 3,
                    "round {round}: batch {} has {n} parts",
                    from + k * 8 + w
                );
            }
        }
        db.close().await.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A log whose last block was being written when the machine stopped: truncated inside it,
/// a byte of it flipped, or zeros from inside it to the end. Recovery accepts exactly the
/// blocks before it; the store opens, takes new writes, and keeps them across a reopen. And
/// a cut anywhere leaves a prefix of whole batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tails_are_not_written() {
    const K: u64 = 40;
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin");
    let mut proc = child(&origin, &format!("sequential-{K}"), 0);
    let out = BufReader::new(proc.stdout.take().unwrap());
    let acked: Vec<u64> = out
        .lines()
        .filter_map(|l| acked_lines(&l.unwrap()))
        .collect();
    assert!(proc.wait().unwrap().success());
    assert_eq!(acked.len() as u64, K);
    let scans = segments::scan_all(&wal_dir(&origin)).unwrap();
    let with_blocks: Vec<_> = scans.iter().filter(|s| !s.blocks.is_empty()).collect();
    let blocks: usize = with_blocks.iter().map(|s| s.blocks.len()).sum();
    // One sequential writer: one batch per block.
    assert_eq!(blocks as u64, K);
    let last_seg = with_blocks.last().unwrap();
    let last = *last_seg.blocks.last().unwrap();
    let seg_name = last_seg.path.file_name().unwrap().to_owned();
    let size = std::fs::metadata(&last_seg.path).unwrap().len();
    // Batches whose blocks lie wholly in earlier segments.
    let before_last_seg = (blocks - last_seg.blocks.len()) as u64;

    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    for case in 0..48 {
        let root = tmp.path().join(format!("case{case}"));
        copy_dir(&origin, &root);
        let seg = wal_dir(&root).join(&seg_name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let inside = last.offset + rng.random_range(0..last.len);
        // The batches the damaged log must hold: all but the last, or (cut anywhere) those
        // whose blocks end before the cut.
        let expect = match case % 4 {
            0 => {
                f.set_len(inside).unwrap();
                K - 1
            }
            1 => {
                let mut b = [0u8];
                std::os::unix::fs::FileExt::read_at(&f, &mut b, inside).unwrap();
                b[0] ^= 1 << rng.random_range(0..8);
                std::os::unix::fs::FileExt::write_all_at(&f, &b, inside).unwrap();
                K - 1
            }
            2 => {
                let zeros = vec![0u8; (size - inside) as usize];
                std::os::unix::fs::FileExt::write_all_at(&f, &zeros, inside).unwrap();
                K - 1
            }
            _ => {
                let cut = rng.random_range(
                    crate::format::SEGMENT_HEADER_LEN as u64..=last.offset + last.len,
                );
                f.set_len(cut).unwrap();
                let whole = last_seg
                    .blocks
                    .iter()
                    .filter(|b| b.offset + b.len <= cut)
                    .count() as u64;
                before_last_seg + whole
            }
        };
        drop(f);
        let wal = SegmentWal::open(&wal_dir(&root), small()).unwrap();
        let db = open_db(&root, &wal).await;
        for i in 0..K {
            let want = if i < expect { 3 } else { 0 };
            assert_eq!(parts_present(&db, i).await, want, "case {case}: batch {i}");
        }
        db.write(batch(1000))
            .await
            .unwrap()
            .await_durable()
            .await
            .unwrap();
        db.close().await.unwrap();
        drop(wal);
        // The new write landed after the damaged tail and survives a reopen.
        let wal = SegmentWal::open(&wal_dir(&root), small()).unwrap();
        let db = open_db(&root, &wal).await;
        assert_eq!(parts_present(&db, 1000).await, 3, "case {case}");
        assert_eq!(
            parts_present(&db, expect.saturating_sub(1)).await,
            if expect > 0 { 3 } else { 0 }
        );
        db.close().await.unwrap();
    }
}

/// Writes that reach the log while a sync is running share the next one: 50 writes appended
/// while the I/O thread is held make at most two blocks (two syncs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // holding the I/O thread's gate is the point
async fn concurrent_writes_share_one_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    let gate = crate::lock(&wal.shared.gate);
    let mut handles = Vec::new();
    for i in 0..50 {
        handles.push(db.write(batch(i)).await.unwrap());
    }
    drop(gate);
    for h in handles {
        h.await_durable().await.unwrap();
    }
    let blocks: usize = segments::scan_all(&wal_dir(root))
        .unwrap()
        .iter()
        .map(|s| s.blocks.len())
        .sum();
    assert!((1..=2).contains(&blocks), "{blocks} blocks for 50 writes");
    db.close().await.unwrap();
}

fn segment_count(root: &Path) -> usize {
    segments::list(&wal_dir(root)).unwrap().len()
}

/// Once the memtable is flushed to L0, the segments before its replay point go, except those
/// a checkpoint still references; the database reopens with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_retired_once_flushed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    let big = "x".repeat(4096);
    for i in 0..400u64 {
        let mut b = WriteBatch::new();
        b.put(format!("big/{i:05}"), &big);
        db.write(b).await.unwrap().await_durable().await.unwrap();
    }
    let before = segment_count(root);
    assert!(before >= 6, "{before} segments");
    db.flush_with_options(FlushOptions {
        flush_type: FlushType::MemTable,
    })
    .await
    .unwrap();
    let replay_after = db.manifest().replay_after_wal_id();
    assert!(replay_after >= 400, "replay point {replay_after}");
    // A checkpoint referencing blocks 2..=4 keeps the first segment.
    let referenced = vec![
        WalFileRange(Bound::Included(replay_after), Bound::Unbounded),
        WalFileRange(Bound::Excluded(1), Bound::Excluded(5)),
    ];
    wal.gc()
        .collect(referenced.clone(), Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(segment_count(root), before, "a dry run deletes nothing");
    wal.gc()
        .collect(referenced, Duration::ZERO, false)
        .await
        .unwrap();
    let after = segments::scan_all(&wal_dir(root)).unwrap();
    assert!(after.len() <= 4, "{} segments left", after.len());
    assert!(after
        .iter()
        .any(|s| s.blocks.first().map(|b| b.id) == Some(1)));
    db.close().await.unwrap();
    drop(wal);
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    for i in 0..400u64 {
        assert!(
            db.get(format!("big/{i:05}")).await.unwrap().is_some(),
            "{i}"
        );
    }
    db.close().await.unwrap();
}

/// A reader (such as a checkpoint export) sees acknowledged writes still only in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_replay_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    for i in 0..20 {
        db.write(batch(i))
            .await
            .unwrap()
            .await_durable()
            .await
            .unwrap();
    }
    let reader = DbReader::builder("db", store(root))
        .with_wal_reader(wal.reader())
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        let v = reader.get(format!("{i:08}/b")).await.unwrap();
        assert_eq!(v, Some(Bytes::from(format!("value {i} b"))), "{i}");
    }
    // Without the log's reader, SlateDB's default reader finds none of them.
    let blind = DbReader::builder("db", store(root)).build().await.unwrap();
    assert_eq!(blind.get("00000000/b").await.unwrap(), None);
    reader.close().await.unwrap();
    blind.close().await.unwrap();
    db.close().await.unwrap();
}

/// A second process cannot open a log this process holds; a second opening in this process
/// shares it, and its writer fences the first one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_writes_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let first = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let out = child(root, "lock", 0).wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("locked by another process"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let db1 = open_db(root, &first).await;
    db1.write(batch(1))
        .await
        .unwrap()
        .await_durable()
        .await
        .unwrap();
    let second = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db2 = open_db(root, &second).await;
    assert_eq!(parts_present(&db2, 1).await, 3);
    let fenced = match db1.write(batch(2)).await {
        Ok(h) => h.await_durable().await.is_err(),
        Err(_) => true,
    };
    assert!(fenced, "the older writer still acknowledged a write");
    db2.write(batch(3))
        .await
        .unwrap()
        .await_durable()
        .await
        .unwrap();
    db2.close().await.unwrap();
    drop((first, second, db1));
    let out = child(root, "lock", 0).wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("opened"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A failed fdatasync is final: the write waiting for it fails, the log takes no further
/// write (nothing retries the sync), and the database reopened on the same log recovers:
/// every acknowledged write is there, the failed one is whole or absent, new writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_closes_the_log_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    db.write(batch(1))
        .await
        .unwrap()
        .await_durable()
        .await
        .unwrap();
    wal.shared
        .fail_next_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = db.write(batch(2)).await.unwrap().await_durable().await;
    assert!(
        failed.is_err(),
        "a write whose sync failed was acknowledged"
    );
    let after = match db.write(batch(3)).await {
        Ok(h) => h.await_durable().await.is_err(),
        Err(_) => true,
    };
    assert!(after, "the log took a write after a failed sync");
    drop(db);
    let db = open_db(root, &wal).await;
    assert_eq!(parts_present(&db, 1).await, 3);
    let n = parts_present(&db, 2).await;
    assert!(n == 0 || n == 3, "the failed batch has {n} parts");
    assert_eq!(parts_present(&db, 3).await, 0);
    db.write(batch(4))
        .await
        .unwrap()
        .await_durable()
        .await
        .unwrap();
    db.close().await.unwrap();
    drop(wal);
    let wal = SegmentWal::open(&wal_dir(root), small()).unwrap();
    let db = open_db(root, &wal).await;
    assert_eq!(parts_present(&db, 1).await, 3);
    assert_eq!(parts_present(&db, 4).await, 3);
    db.close().await.unwrap();
}
