//! A local directory listed in byte order of keys.
//!
//! `object_store`'s `LocalFileSystem::list` walks directories in the order the file system
//! returns them, which is no order at all; merging two listings needs both in byte order of
//! keys. This walk is depth-first and sorts each directory's entries by name, a directory
//! sorting as `name + "/"`: every key under `a/` then lies between `a/` and the next sibling,
//! so the keys come out in byte order (`a-` < `a.b` < `a/b` < `a0`). It holds one sorted
//! directory per level of depth, never the whole tree, runs on a blocking thread and feeds a
//! bounded channel.
//!
//! Skipped, with a log line: files `object_store` is still writing (`name#<digits>`, its
//! staging files), symbolic links to directories (no loops), broken links, and special
//! files. Symbolic links to files are followed. A directory that cannot be read, or a name
//! that is not UTF-8, is reported as [`Listed::Unreadable`] and the walk goes on.

use crate::error::SyncError;
use crate::tree::{Entry, Listed, Listing};
use futures::stream::StreamExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// Listed items buffered between the walking thread and the merge.
const CHANNEL: usize = 1024;

/// Lists every file under `root` in byte order of keys.
pub(crate) fn walk(root: PathBuf) -> Listing {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = walk_into(&root, &tx) {
            // The receiver may be gone already: nothing to do then.
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// A directory entry, ready to sort.
struct DirItem {
    /// The name, with `/` appended for a directory: the sort key.
    sort_key: String,
    kind: ItemKind,
}

enum ItemKind {
    File { size: u64, modified: i64 },
    Dir,
    Bad(String),
}

/// Walks `root`, sending each item; stops early (`Ok`) when the receiver is gone.
fn walk_into(root: &Path, tx: &mpsc::Sender<Result<Listed, SyncError>>) -> Result<(), SyncError> {
    let first = read_sorted(root).map_err(|e| SyncError::io("read directory", root, e))?;
    // One sorted directory per level: (key prefix of its entries, entries left).
    let mut stack = vec![(String::new(), first.into_iter())];
    while let Some((prefix, items)) = stack.last_mut() {
        let Some(item) = items.next() else {
            stack.pop();
            continue;
        };
        let key = format!("{prefix}{}", item.sort_key);
        let listed = match item.kind {
            ItemKind::File { size, modified } => Listed::Entry(Entry {
                key,
                size,
                modified,
                e_tag: None,
            }),
            ItemKind::Dir => {
                let dir = root.join(&key);
                match read_sorted(&dir) {
                    Ok(children) => {
                        stack.push((key, children.into_iter()));
                        continue;
                    }
                    Err(e) => Listed::Unreadable {
                        reason: format!("cannot read directory {}: {e}", dir.display()),
                        key,
                    },
                }
            }
            ItemKind::Bad(reason) => Listed::Unreadable { key, reason },
        };
        if tx.blocking_send(Ok(listed)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The entries of `dir` worth listing, sorted by key.
fn read_sorted(dir: &Path) -> std::io::Result<Vec<DirItem>> {
    let mut items = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            Err(raw) => {
                items.push(DirItem {
                    sort_key: raw.to_string_lossy().into_owned(),
                    kind: ItemKind::Bad(format!("{}: the name is not UTF-8", path.display())),
                });
                continue;
            }
        };
        if is_staging_file(&name) {
            tracing::debug!(path = %path.display(), "skipping an unfinished upload");
            continue;
        }
        let mut file_type = entry.file_type()?;
        let mut metadata = None;
        if file_type.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    file_type = m.file_type();
                    metadata = Some(m);
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "skipping a symbolic link to a directory");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a broken symbolic link");
                    continue;
                }
            }
        }
        let item = if file_type.is_dir() {
            DirItem {
                sort_key: format!("{name}/"),
                kind: ItemKind::Dir,
            }
        } else if file_type.is_file() {
            let kind = match metadata.map_or_else(|| entry.metadata(), Ok) {
                Ok(m) => ItemKind::File {
                    size: m.len(),
                    modified: m.modified().map(unix_seconds).unwrap_or(0),
                },
                Err(e) => ItemKind::Bad(format!("{}: {e}", path.display())),
            };
            DirItem {
                sort_key: name,
                kind,
            }
        } else {
            tracing::warn!(path = %path.display(), "skipping a special file");
            continue;
        };
        items.push(item);
    }
    items.sort_unstable_by(|a, b| a.sort_key.cmp(&b.sort_key));
    Ok(items)
}

/// `LocalFileSystem` writes an object to `name#<digits>` and renames it when complete; such
/// files are unfinished uploads, not objects (`object_store` refuses them as paths).
fn is_staging_file(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((_, digits)) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn keys(root: &Path) -> Vec<String> {
        walk(root.to_path_buf())
            .map_ok(|l| match l {
                Listed::Entry(e) => e.key,
                Listed::Unreadable { key, reason } => panic!("{key}: {reason}"),
            })
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn walks_in_byte_order_of_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "a0",
            "a/b",
            "a.b",
            "a-",
            "b/c",
            "b.c",
            "b-/x",
            "b0",
            "B",
            "empty",
            "d/e/f/g/h",
            "d/e/f/g.h",
            "d/e/f-",
            "ü",
            "u",
            "日本/語",
            "日本語",
            "z z",
            "%41",
        ];
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f.as_bytes()).unwrap();
        }
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::create_dir_all(dir.path().join("no/files/here")).unwrap();
        // Unfinished object_store uploads are not objects; `x#y` is a name like any other.
        std::fs::write(dir.path().join("a0#1"), b"partial").unwrap();
        std::fs::write(dir.path().join("x#y"), b"").unwrap();
        let mut expected: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        expected.push("x#y".into());
        expected.sort();
        let listed = keys(dir.path()).await;
        assert_eq!(listed, expected);
        // Byte order: a directory's keys sit between its lesser and greater siblings.
        assert_eq!(&listed[..6], &["%41", "B", "a-", "a.b", "a/b", "a0"]);
    }

    #[tokio::test]
    async fn reports_sizes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 1000]).unwrap();
        std::fs::write(dir.path().join("e"), b"").unwrap();
        let items: Vec<Listed> = walk(dir.path().to_path_buf()).try_collect().await.unwrap();
        let now = unix_seconds(SystemTime::now());
        match &items[..] {
            [Listed::Entry(e), Listed::Entry(f)] => {
                assert_eq!((e.key.as_str(), e.size), ("e", 0));
                assert_eq!((f.key.as_str(), f.size), ("f", 1000));
                assert!((now - f.modified).abs() < 60);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r: Result<Vec<Listed>, _> = walk(dir.path().join("missing")).try_collect().await;
        assert!(matches!(r, Err(SyncError::Io { .. })), "{r:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn follows_links_to_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("d/f"), dir.path().join("link-f")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("d"), dir.path().join("link-d")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("broken")).unwrap();
        assert_eq!(keys(dir.path()).await, ["d/f", "link-f"]);
    }

    #[test]
    fn staging_files() {
        assert!(is_staging_file("x#1"));
        assert!(is_staging_file("a.b#12"));
        assert!(!is_staging_file("x#"));
        assert!(!is_staging_file("x#1a"));
        assert!(!is_staging_file("x"));
    }
}
