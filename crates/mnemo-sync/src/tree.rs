//! Trees of objects named by URLs, their clients and their sorted listings.

use crate::error::SyncError;
use crate::walk;
use futures::stream::{BoxStream, StreamExt};
use mnemo_storage::RemotePolicy;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;

/// A tree of objects: every object under a prefix of a bucket or container, or every file
/// under a local directory.
///
/// | URL | tree |
/// |---|---|
/// | `file:///dir` or a plain path (`./dir`, `/dir`) | every file under the directory |
/// | `s3://bucket` or `s3://bucket/prefix` | every object of the bucket, or under `prefix/` |
/// | `az://container` or `az://container/prefix` (also `azure://`) | every blob, or under `prefix/` |
///
/// Keys are relative to the tree: the object `s3://b/p/x/y` of the tree `s3://b/p` has the
/// key `x/y`, like the file `dir/x/y` of the tree `dir`. Endpoints and credentials of remote
/// trees come from the environment (`AWS_*`, `AZURE_STORAGE_*`), as for `mnemo serve
/// --store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    url: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Local(PathBuf),
    Remote {
        scheme: String,
        bucket: String,
        prefix: Path,
    },
}

/// The kind of store a tree lives in: ETags are comparable only between trees of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Local,
    S3,
    Azure,
}

impl Tree {
    /// Parses a tree URL (see [`Tree`]). Nothing is read or created yet.
    pub fn parse(url: &str) -> Result<Tree, SyncError> {
        let bad = |reason: &str| SyncError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(bad("empty"));
        }
        if !url.contains("://") {
            return Ok(Tree {
                url: url.to_string(),
                kind: Kind::Local(PathBuf::from(url)),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let kind = match parsed.scheme() {
            "file" => {
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return Err(bad("a file URL has no query or fragment"));
                }
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not a local path (file:///absolute/dir)"))?;
                Kind::Local(dir)
            }
            scheme @ ("s3" | "az" | "azure") => {
                let bucket = parsed.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(bad("names no bucket or container"));
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return Err(bad("a tree URL has no query or fragment"));
                }
                let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(&e.to_string()))?;
                Kind::Remote {
                    scheme: if scheme == "s3" { "s3" } else { "az" }.to_string(),
                    bucket: bucket.to_string(),
                    prefix,
                }
            }
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?} (use a path, file://, s3:// or az://)"
                )))
            }
        };
        Ok(Tree {
            url: url.to_string(),
            kind,
        })
    }

    /// The URL the tree was parsed from.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn backend(&self) -> Backend {
        match &self.kind {
            Kind::Local(_) => Backend::Local,
            Kind::Remote { scheme, .. } if scheme == "s3" => Backend::S3,
            Kind::Remote { .. } => Backend::Azure,
        }
    }

    /// True when both trees are in one bucket (or container) of one backend. Both clients are
    /// built from the same environment, so they also share endpoint and credentials.
    fn same_bucket(&self, other: &Tree) -> bool {
        match (&self.kind, &other.kind) {
            (
                Kind::Remote { scheme, bucket, .. },
                Kind::Remote {
                    scheme: s2,
                    bucket: b2,
                    ..
                },
            ) => scheme == s2 && bucket == b2,
            _ => false,
        }
    }

    /// Refuses trees that contain each other: a sync would copy into what it lists.
    fn check_disjoint(&self, other: &Tree) -> Result<(), SyncError> {
        let overlap = match (&self.kind, &other.kind) {
            (Kind::Local(a), Kind::Local(b)) => {
                let (a, b) = (canonical(a), canonical(b));
                a.starts_with(&b) || b.starts_with(&a)
            }
            (Kind::Remote { prefix: a, .. }, Kind::Remote { prefix: b, .. }) => {
                self.same_bucket(other) && (a.prefix_matches(b) || b.prefix_matches(a))
            }
            _ => false,
        };
        if overlap {
            return Err(SyncError::InvalidOptions(format!(
                "{} and {} overlap (one contains the other)",
                self.url, other.url
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// A directory's canonical path, or its absolute path when it does not exist (yet).
fn canonical(dir: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// How a side of a run is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Open {
    /// The tree must exist (a source, a tree to check).
    Existing,
    /// A missing local directory is created (a destination).
    Create,
    /// A missing local directory is an empty tree, and nothing is created (a dry run's
    /// destination).
    EmptyIfMissing,
}

/// An opened tree: its client and where its objects are.
#[derive(Clone, Debug)]
pub(crate) struct Side {
    pub(crate) tree: Tree,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Every key of the tree is under this prefix of `store`.
    prefix: Path,
    /// The directory of a local tree, listed by [`walk`] (in key order, unlike
    /// `LocalFileSystem::list`); `None` for a remote tree, or a missing one.
    local_dir: Option<PathBuf>,
}

impl Side {
    /// The full path of `key` in [`Side::store`].
    pub(crate) fn path(&self, key: &str) -> Result<Path, SyncError> {
        let full = if self.prefix.is_root() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| SyncError::BadName {
            path: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// The tree's objects in byte order of keys, streamed.
    pub(crate) fn list(&self) -> Listing {
        if let Some(dir) = &self.local_dir {
            return walk::walk(dir.clone());
        }
        let prefix = self.prefix.clone();
        let start = if prefix.is_root() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let listed = if prefix.is_root() {
            self.store.list(None)
        } else {
            self.store.list(Some(&prefix))
        };
        listed
            .map(move |r| match r {
                Ok(meta) => match meta.location.as_ref().strip_prefix(start.as_str()) {
                    Some(key) if !key.is_empty() => Ok(Listed::Entry(Entry {
                        key: key.to_string(),
                        size: meta.size,
                        modified: meta.last_modified.timestamp(),
                        e_tag: meta.e_tag,
                    })),
                    _ => Ok(Listed::Unreadable {
                        key: meta.location.to_string(),
                        reason: format!("listed outside the prefix {start:?}"),
                    }),
                },
                Err(e) => Err(SyncError::store("list", &prefix, e)),
            })
            .boxed()
    }
}

/// An object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The key, relative to the tree.
    pub(crate) key: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Last modification, whole seconds since the Unix epoch (the precision S3 and Azure
    /// report).
    pub(crate) modified: i64,
    /// The store's ETag (`None` for local files).
    pub(crate) e_tag: Option<String>,
}

/// One item of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Listed {
    /// An object.
    Entry(Entry),
    /// Something under the tree that could not be listed (a directory that cannot be read,
    /// a file name that is not UTF-8): an error for that path, the listing goes on.
    Unreadable { key: String, reason: String },
}

/// A listing, in byte order of keys. An `Err` ends it.
pub(crate) type Listing = BoxStream<'static, Result<Listed, SyncError>>;

/// Opens the two sides of a run. When both trees are in one bucket, the destination shares
/// the source's client, so [`crate::copy_object`] copies on the server.
pub(crate) fn open_pair(
    src: &Tree,
    dst: &Tree,
    dst_open: Open,
    policy: RemotePolicy,
    fsync: bool,
) -> Result<(Side, Side), SyncError> {
    let src_side = open(src, Open::Existing, policy, fsync)?;
    src.check_disjoint(dst)?;
    let dst_side = if src.same_bucket(dst) {
        Side {
            tree: dst.clone(),
            store: src_side.store.clone(),
            prefix: match &dst.kind {
                Kind::Remote { prefix, .. } => prefix.clone(),
                Kind::Local(_) => Path::default(),
            },
            local_dir: None,
        }
    } else {
        open(dst, dst_open, policy, fsync)?
    };
    Ok((src_side, dst_side))
}

fn open(tree: &Tree, how: Open, policy: RemotePolicy, fsync: bool) -> Result<Side, SyncError> {
    match &tree.kind {
        Kind::Local(dir) => {
            if !dir.exists() {
                match how {
                    Open::Existing => {
                        return Err(SyncError::InvalidOptions(format!(
                            "directory {} does not exist",
                            dir.display()
                        )))
                    }
                    Open::EmptyIfMissing => {
                        return Ok(Side {
                            tree: tree.clone(),
                            store: Arc::new(object_store::memory::InMemory::new()),
                            prefix: Path::default(),
                            local_dir: None,
                        })
                    }
                    Open::Create => std::fs::create_dir_all(dir)
                        .map_err(|e| SyncError::io("create directory", dir, e))?,
                }
            }
            if !dir.is_dir() {
                return Err(SyncError::InvalidOptions(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            // Written files are fsynced (file and directory) unless the caller opts out, so a
            // finished sync survives a power cut, as an object store's acknowledged PUT does.
            // Deleting a file also removes the directories it leaves empty.
            let fs = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| SyncError::store("open", dir.display(), e))?
                .with_fsync(fsync)
                .with_automatic_cleanup(true);
            Ok(Side {
                tree: tree.clone(),
                store: Arc::new(fs),
                prefix: Path::default(),
                local_dir: Some(dir.clone()),
            })
        }
        Kind::Remote { prefix, .. } => {
            let (store, _) =
                mnemo_storage::object_store_from_url(&tree.url, policy).map_err(|e| {
                    SyncError::InvalidUrl {
                        url: tree.url.clone(),
                        reason: e.to_string(),
                    }
                })?;
            Ok(Side {
                tree: tree.clone(),
                store,
                prefix: prefix.clone(),
                local_dir: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Tree::parse("s3://bucket/some/prefix/").unwrap();
        assert_eq!(t.backend(), Backend::S3);
        assert!(matches!(&t.kind, Kind::Remote { bucket, prefix, .. }
            if bucket == "bucket" && prefix.as_ref() == "some/prefix"));
        let t = Tree::parse("az://c").unwrap();
        assert_eq!(t.backend(), Backend::Azure);
        assert!(matches!(&t.kind, Kind::Remote { prefix, .. } if prefix.is_root()));
        let t = Tree::parse("azure://c/%E6%97%A5%20x").unwrap();
        assert!(matches!(&t.kind, Kind::Remote { prefix, .. } if prefix.as_ref() == "日 x"));
        let t = Tree::parse("file:///tmp/x%20y").unwrap();
        assert_eq!(t.kind, Kind::Local(PathBuf::from("/tmp/x y")));
        let t = Tree::parse("relative/dir").unwrap();
        assert_eq!(t.kind, Kind::Local(PathBuf::from("relative/dir")));
        for bad in [
            "",
            "s3://",
            "s3:///prefix",
            "gs://bucket",
            "s3://b/a//b",
            "file://host/dir",
        ] {
            assert!(
                matches!(Tree::parse(bad), Err(SyncError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn overlapping_trees_are_refused() {
        let a = Tree::parse("s3://b/x").unwrap();
        let b = Tree::parse("s3://b/x/y").unwrap();
        let c = Tree::parse("s3://b/xy").unwrap();
        let d = Tree::parse("az://b/x/y").unwrap();
        assert!(a.check_disjoint(&b).is_err());
        assert!(b.check_disjoint(&a).is_err());
        assert!(a.check_disjoint(&a).is_err());
        assert!(a.check_disjoint(&c).is_ok());
        assert!(a.check_disjoint(&d).is_ok());
        let l1 = Tree::parse("/tmp/mnemo-sync-x").unwrap();
        let l2 = Tree::parse("/tmp/mnemo-sync-x/sub").unwrap();
        assert!(l1.check_disjoint(&l2).is_err());
    }
}
