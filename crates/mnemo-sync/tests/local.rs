//! sync, check and copy_object on local directories and in-memory stores.

use mnemo_sync::{
    check, copy_object, sync, CheckOptions, CheckReport, CopyParams, DifferenceKind, NoProgress,
    Summary, SyncError, SyncOptions, Tree,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Files of the test tree: awkward names (byte order around `/`, unicode, spaces, `%`),
/// empty files, deep paths.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a0", b"a0".to_vec()),
        ("a.b", b"a.b".to_vec()),
        ("a-", Vec::new()),
        ("a/b", b"a/b".to_vec()),
        ("a/b c/%41", vec![1; 3000]),
        ("deep/1/2/3/4/5/6/7/leaf", b"leaf".to_vec()),
        ("empty", Vec::new()),
        ("Ünïcödé/名前.txt", "日本語のテキスト".as_bytes().to_vec()),
        ("z", (0..=255u8).cycle().take(100_000).collect()),
    ]
}

fn write_tree(root: &FsPath, files: &[(&str, Vec<u8>)]) {
    for (name, data) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

/// Every file under `root`, relative name → content.
fn read_tree(root: &FsPath) -> BTreeMap<String, Vec<u8>> {
    fn visit(root: &FsPath, dir: &FsPath, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(root, &path, out);
            } else {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        visit(root, root, &mut out);
    }
    out
}

fn tree(path: &FsPath) -> Tree {
    Tree::parse(path.to_str().unwrap()).unwrap()
}

async fn run(src: &FsPath, dst: &FsPath, options: SyncOptions) -> Summary {
    sync(&tree(src), &tree(dst), &options, &NoProgress)
        .await
        .unwrap()
}

async fn check_dirs(src: &FsPath, dst: &FsPath) -> CheckReport {
    check(
        &tree(src),
        &tree(dst),
        &CheckOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap()
}

/// Sets a file's modification time `secs` seconds from now.
fn touch(path: &FsPath, secs: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

#[tokio::test]
async fn copies_a_tree_then_copies_nothing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dst = dst.path().join("new/dir");
    write_tree(src.path(), &files());
    let first = run(src.path(), &dst, SyncOptions::default()).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!(first.copied.objects, files().len() as u64);
    assert_eq!(
        first.copied.bytes,
        files().iter().map(|f| f.1.len() as u64).sum::<u64>()
    );
    assert_eq!(read_tree(&dst), read_tree(src.path()));
    assert!(check_dirs(src.path(), &dst).await.identical());

    let second = run(src.path(), &dst, SyncOptions::default()).await;
    assert!(second.succeeded(), "{second:?}");
    assert_eq!(second.copied.objects, 0);
    assert_eq!(second.skipped.objects, files().len() as u64);
    let with_checksum = SyncOptions {
        checksum: true,
        ..Default::default()
    };
    let third = run(src.path(), &dst, with_checksum).await;
    assert_eq!((third.copied.objects, third.skipped.objects), (0, 9));
}

#[tokio::test]
async fn copies_what_changed_and_deletes_what_went() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tree(src.path(), &files());
    assert!(run(src.path(), dst.path(), SyncOptions::default())
        .await
        .succeeded());
    // Same size, newer; bigger; new; gone.
    std::fs::write(src.path().join("a.b"), b"A.B").unwrap();
    touch(&src.path().join("a.b"), 5);
    std::fs::write(src.path().join("a/b"), b"longer now").unwrap();
    std::fs::write(src.path().join("a/new"), b"new").unwrap();
    std::fs::remove_file(src.path().join("deep/1/2/3/4/5/6/7/leaf")).unwrap();

    let without_delete = run(
        src.path(),
        dst.path(),
        SyncOptions {
            dry_run: true,
            delete: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(without_delete.copied.objects, 3, "{without_delete:?}");
    assert_eq!(without_delete.deleted.objects, 1);
    let report = check_dirs(src.path(), dst.path()).await;
    assert!(!report.identical());
    assert_eq!(report.content_differs.objects, 1, "{report:?}");
    assert_eq!(report.size_differs.objects, 1);
    assert_eq!(report.missing_on_destination.objects, 1);
    assert_eq!(report.missing_on_source.objects, 1);

    let second = run(
        src.path(),
        dst.path(),
        SyncOptions {
            delete: true,
            ..Default::default()
        },
    )
    .await;
    assert!(second.succeeded(), "{second:?}");
    assert_eq!(second.copied.objects, 3);
    assert_eq!(second.deleted.objects, 1);
    assert_eq!(second.skipped.objects, files().len() as u64 - 3);
    assert_eq!(read_tree(dst.path()), read_tree(src.path()));
    // The directories the deleted file left empty are gone too.
    assert!(!dst.path().join("deep").exists());
    assert!(check_dirs(src.path(), dst.path()).await.identical());
}

#[tokio::test]
async fn the_default_rule_misses_what_checksum_finds() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tree(src.path(), &files());
    assert!(run(src.path(), dst.path(), SyncOptions::default())
        .await
        .succeeded());
    // Same size, different content, destination newer: the default rule calls it the same.
    std::fs::write(dst.path().join("a.b"), b"xxx").unwrap();
    touch(&dst.path().join("a.b"), 5);
    let report = check_dirs(src.path(), dst.path()).await;
    assert_eq!(report.content_differs.objects, 1, "{report:?}");
    assert_eq!(report.differences[0].path, "a.b");
    assert_eq!(report.differences[0].kind, DifferenceKind::ContentDiffers);
    assert!(!report.identical());
    let plain = run(src.path(), dst.path(), SyncOptions::default()).await;
    assert_eq!(plain.copied.objects, 0);
    let checksum = run(
        src.path(),
        dst.path(),
        SyncOptions {
            checksum: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(checksum.copied.objects, 1, "{checksum:?}");
    assert!(check_dirs(src.path(), dst.path()).await.identical());
}

#[cfg(unix)]
#[tokio::test]
async fn deletes_nothing_after_an_error() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tree(src.path(), &files());
    assert!(run(src.path(), dst.path(), SyncOptions::default())
        .await
        .succeeded());
    std::fs::write(dst.path().join("extra"), b"only here").unwrap();
    // A name no object store takes (a control character): that object fails.
    std::fs::write(src.path().join("bad\u{1}name"), b"x").unwrap();
    let summary = run(
        src.path(),
        dst.path(),
        SyncOptions {
            delete: true,
            ..Default::default()
        },
    )
    .await;
    assert!(!summary.succeeded());
    assert_eq!(summary.errors.objects, 1, "{summary:?}");
    assert_eq!(summary.error_list[0].path.as_deref(), Some("bad\u{1}name"));
    assert!(summary.error_list[0].error.contains("invalid object name"));
    assert!(summary.delete_skipped);
    assert_eq!(summary.deleted.objects, 0);
    assert_eq!(summary.extra.objects, 1);
    assert!(dst.path().join("extra").exists());
    // The other objects were all considered.
    assert_eq!(summary.skipped.objects, files().len() as u64);
    // Once the error is gone, the extra object goes.
    std::fs::remove_file(src.path().join("bad\u{1}name")).unwrap();
    let summary = run(
        src.path(),
        dst.path(),
        SyncOptions {
            delete: true,
            ..Default::default()
        },
    )
    .await;
    assert!(summary.succeeded(), "{summary:?}");
    assert_eq!(summary.deleted.objects, 1);
    assert!(!dst.path().join("extra").exists());
}

#[tokio::test]
async fn multipart_copies_with_a_tiny_threshold() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    write_tree(
        src.path(),
        &[
            ("big", big.clone()),
            ("small", vec![5; 999]),
            ("edge", vec![6; 1000]),
        ],
    );
    let options = SyncOptions {
        copy: CopyParams {
            multipart_threshold: 1000,
            part_size: 4096,
            parts_in_flight: 3,
        },
        ..Default::default()
    };
    let summary = run(src.path(), dst.path(), options).await;
    assert!(summary.succeeded(), "{summary:?}");
    assert_eq!(read_tree(dst.path()), read_tree(src.path()));
    // No staging file (`name#N`) is left behind.
    assert_eq!(read_tree(dst.path()).len(), 3);
}

/// An in-memory store that counts how objects are written.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemory,
    puts: AtomicUsize,
    multipart: AtomicUsize,
    copies: AtomicUsize,
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.multipart.fetch_add(1, Ordering::Relaxed);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn copy_object_picks_put_multipart_or_server_side_copy() {
    let src = Arc::new(Counting::default());
    let dst = Arc::new(Counting::default());
    let (src_dyn, dst_dyn): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) =
        (src.clone(), dst.clone());
    let params = CopyParams {
        multipart_threshold: 10_000,
        part_size: 3000,
        parts_in_flight: 2,
    };
    let big: Vec<u8> = (0..25_000u32).map(|i| (i % 253) as u8).collect();
    let (small_path, big_path) = (Path::from("s"), Path::from("dir/big"));
    src.put(&small_path, vec![1u8; 10_000].into())
        .await
        .unwrap();
    src.put(&big_path, big.clone().into()).await.unwrap();

    copy_object(
        &src_dyn,
        &small_path,
        &dst_dyn,
        &small_path,
        10_000,
        &params,
    )
    .await
    .unwrap();
    copy_object(&src_dyn, &big_path, &dst_dyn, &big_path, 25_000, &params)
        .await
        .unwrap();
    assert_eq!(dst.puts.load(Ordering::Relaxed), 1);
    assert_eq!(dst.multipart.load(Ordering::Relaxed), 1);
    let got = dst.get(&big_path).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), big.as_slice());

    // The same client on both sides: the store copies.
    let copy_path = Path::from("copy/of/big");
    copy_object(&src_dyn, &big_path, &src_dyn, &copy_path, 25_000, &params)
        .await
        .unwrap();
    assert_eq!(src.copies.load(Ordering::Relaxed), 1);
    assert_eq!(src.multipart.load(Ordering::Relaxed), 0);
    let got = src.get(&copy_path).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), big.as_slice());

    // A source whose size is not the listed one: nothing is written, either way.
    for size in [100, 20_000] {
        let to = Path::from(format!("changed-{size}"));
        let err = copy_object(&src_dyn, &big_path, &dst_dyn, &to, size, &params)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::SourceChanged { .. }), "{err}");
        assert!(dst.head(&to).await.is_err());
    }
    assert!(matches!(
        copy_object(
            &src_dyn,
            &Path::from("missing"),
            &dst_dyn,
            &Path::from("m"),
            1,
            &params
        )
        .await,
        Err(SyncError::Store { op: "read", .. })
    ));
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tree(src.path(), &files());
    std::fs::write(dst.path().join("extra"), b"x").unwrap();
    let options = SyncOptions {
        dry_run: true,
        delete: true,
        ..Default::default()
    };
    let summary = run(src.path(), dst.path(), options).await;
    assert!(summary.succeeded());
    assert_eq!(summary.copied.objects, files().len() as u64);
    assert_eq!(summary.deleted.objects, 1);
    assert_eq!(read_tree(dst.path()).len(), 1);
    // A missing destination is an empty tree, and is not created.
    let missing = dst.path().join("missing");
    let summary = run(src.path(), &missing, options).await;
    assert_eq!(summary.copied.objects, files().len() as u64);
    assert!(!missing.exists());
}

#[tokio::test]
async fn refuses_what_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let options = SyncOptions::default();
    for url in ["gs://bucket", "s3://", "", "s3://b/a//b"] {
        assert!(
            matches!(Tree::parse(url), Err(SyncError::InvalidUrl { .. })),
            "{url}"
        );
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("missing");
    let err = sync(&tree(&missing), &tree(dir.path()), &options, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let err = sync(&tree(dir.path()), &tree(&inner), &options, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");
    let err = check(
        &tree(dir.path()),
        &tree(&missing),
        &CheckOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
