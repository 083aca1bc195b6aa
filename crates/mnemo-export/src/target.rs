//! Where a dataset lives: a directory or a prefix of an S3 bucket or Azure container, and
//! the one way a version is committed (its manifest written last).

use crate::dataset::{manifest_of_version, Manifest, MANIFEST};
use crate::ExportError;
use bytes::Bytes;
use futures::TryStreamExt;
use mnemo_storage::{RemotePolicy, StoreLocation};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

/// A dataset's root in an object store.
#[derive(Clone, Debug)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    root: String,
    /// The directory of a local dataset: listed and deleted from directly, so that the
    /// temporary files a killed writer leaves (`<name>#<n>`, which the store library does not
    /// list) are seen and removed too.
    local: Option<std::path::PathBuf>,
    /// The URL, without credentials.
    pub description: String,
}

fn store_err(e: object_store::Error) -> ExportError {
    ExportError::Store(e.to_string())
}

impl Target {
    /// The dataset at `url`: `file:///dir` (or a plain path), `s3://bucket/prefix` or
    /// `az://container/prefix`.
    pub fn open(url: &str) -> Result<Self, ExportError> {
        let local = |dir: &str| -> Result<Self, ExportError> {
            let loc = StoreLocation::local(std::path::Path::new(dir))
                .map_err(|e| ExportError::Invalid(format!("dataset URL {url}: {e}")))?;
            Ok(Target {
                store: loc.object_store,
                root: String::new(),
                local: Some(std::path::PathBuf::from(dir)),
                description: loc.description,
            })
        };
        if !url.contains("://") {
            return local(url);
        }
        if let Some(dir) = url.strip_prefix("file://") {
            return local(dir);
        }
        let loc = StoreLocation::from_url(url, RemotePolicy::default())
            .map_err(|e| ExportError::Invalid(format!("dataset URL {url}: {e}")))?;
        Ok(Target {
            store: loc.object_store,
            root: loc.path,
            local: None,
            description: loc.description,
        })
    }

    fn path(&self, rel: &str) -> ObjectPath {
        if self.root.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.root))
        }
    }

    /// Writes `bytes` at `rel` (relative to the dataset root).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), ExportError> {
        self.store
            .put(&self.path(rel), PutPayload::from(bytes))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// Writes a file given as its parts, in order, at `rel`.
    pub async fn put_parts(&self, rel: &str, parts: Vec<Bytes>) -> Result<(), ExportError> {
        self.store
            .put(&self.path(rel), PutPayload::from_iter(parts))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// Reads `rel`, if it exists.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>, ExportError> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(store_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Deletes `rel` (nothing if it is already gone).
    pub async fn delete(&self, rel: &str) -> Result<(), ExportError> {
        if let Some(dir) = &self.local {
            return match std::fs::remove_file(dir.join(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ExportError::Store(format!("deleting {rel}: {e}"))),
            };
        }
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Every object under the root, as paths relative to it (in a local directory, every
    /// file, temporary ones included).
    pub async fn list(&self) -> Result<Vec<String>, ExportError> {
        if let Some(dir) = &self.local {
            return list_dir(dir);
        }
        let prefix = (!self.root.is_empty()).then(|| ObjectPath::from(self.root.as_str()));
        let metas: Vec<_> = self
            .store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(store_err)?;
        let strip = if self.root.is_empty() {
            0
        } else {
            self.root.len() + 1
        };
        let mut paths: Vec<String> = metas
            .into_iter()
            .map(|m| {
                m.location
                    .as_ref()
                    .get(strip..)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// The current version's manifest, if the dataset has one.
    pub async fn manifest(&self) -> Result<Option<Manifest>, ExportError> {
        match self.get(MANIFEST).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ExportError::Corrupt(format!("{MANIFEST}: {e}"))),
            None => Ok(None),
        }
    }

    /// Commits `manifest`'s version: its copy under `_manifests/` first, then
    /// `_manifest.json`, which readers follow. Every file it names must already be written.
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), ExportError> {
        let bytes = Bytes::from(
            serde_json::to_vec_pretty(manifest)
                .map_err(|e| ExportError::Corrupt(format!("manifest: {e}")))?,
        );
        self.put(&manifest_of_version(manifest.version), bytes.clone())
            .await?;
        self.put(MANIFEST, bytes).await
    }
}

/// Every file under `dir`, relative to it with `/` separators, sorted.
fn list_dir(dir: &std::path::Path) -> Result<Vec<String>, ExportError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ExportError::Store(format!("listing {}: {e}", d.display()))),
        };
        for entry in entries {
            let entry = entry.map_err(|e| ExportError::Store(format!("listing: {e}")))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{FileEntry, ITEMS};

    fn manifest(version: u64, files: Vec<FileEntry>) -> Manifest {
        Manifest {
            version,
            checkpoint: serde_json::json!({}),
            source: "file:///store".into(),
            mnemo_version: "0.1.0".into(),
            filters: serde_json::json!({}),
            consent_policy: "opt-in".into(),
            key_id: "k".into(),
            files,
            committed_at_ms: 0,
            grace_seconds: 0,
        }
    }

    #[tokio::test]
    async fn versions_commit_by_manifest_and_old_ones_stay() {
        let dir = std::env::temp_dir().join(format!("mnemo-target-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Target::open(&format!("file://{}", dir.display())).unwrap();
        assert_eq!(t.manifest().await.unwrap(), None);
        t.put("items/v1-0.parquet", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let f = |p: &str| FileEntry {
            path: p.into(),
            table: ITEMS.into(),
            rows: 1,
            sha256: String::new(),
        };
        t.commit(&manifest(1, vec![f("items/v1-0.parquet")]))
            .await
            .unwrap();
        t.commit(&manifest(2, vec![])).await.unwrap();
        assert_eq!(t.manifest().await.unwrap().unwrap().version, 2);
        assert_eq!(
            t.list().await.unwrap(),
            vec![
                "_manifest.json",
                "_manifests/v1.json",
                "_manifests/v2.json",
                "items/v1-0.parquet"
            ]
        );
        t.delete("items/v1-0.parquet").await.unwrap();
        t.delete("items/v1-0.parquet").await.unwrap();
        assert_eq!(t.get("items/v1-0.parquet").await.unwrap(), None);
        // A killed writer's temporary file is listed and can be deleted.
        std::fs::write(dir.join("items/v1-00001.parquet#3"), b"partial").unwrap();
        assert!(t
            .list()
            .await
            .unwrap()
            .contains(&"items/v1-00001.parquet#3".to_owned()));
        t.delete("items/v1-00001.parquet#3").await.unwrap();
        assert!(!dir.join("items/v1-00001.parquet#3").exists());
        std::fs::write(dir.join(MANIFEST), b"{").unwrap();
        assert!(matches!(t.manifest().await, Err(ExportError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
