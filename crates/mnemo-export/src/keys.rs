//! Per-tenant pseudonym keys. A tenant's key is made on its first export and kept beside the
//! database in the store's own object store (`<store>/export-keys/<tenant>`), never in a
//! dataset: a server and an `mnemo export` command beside it use the same key.

use crate::pseudonym::{new_key, Pseudonymizer, KEY_BYTES};
use crate::ExportError;
use mnemo_storage::{StoreLocation, TenantId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;

/// The keys of every tenant of one store.
#[derive(Clone)]
pub struct KeyRing {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn store_err(e: object_store::Error) -> ExportError {
    ExportError::Store(format!("export key: {e}"))
}

impl KeyRing {
    /// The keys of the store at `location`.
    pub fn new(location: &StoreLocation) -> KeyRing {
        let prefix = if location.path.is_empty() {
            "export-keys".to_owned()
        } else {
            format!("{}/export-keys", location.path.trim_end_matches('/'))
        };
        KeyRing {
            store: location.object_store.clone(),
            prefix,
        }
    }

    fn path(&self, tenant: &TenantId) -> ObjectPath {
        ObjectPath::from(format!("{}/{}", self.prefix, tenant.as_str()))
    }

    async fn read(&self, path: &ObjectPath) -> Result<Option<[u8; KEY_BYTES]>, ExportError> {
        match self.store.get(path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(store_err)?;
                let key: [u8; KEY_BYTES] = bytes.as_ref().try_into().map_err(|_| {
                    ExportError::Corrupt(format!("export key {path} is not {KEY_BYTES} bytes"))
                })?;
                Ok(Some(key))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// The tenant's pseudonymizer, making and keeping its key first if it has none. Two
    /// processes making a tenant's first key at once agree on one: the key is written only if
    /// absent, and a writer that loses reads the winner's.
    pub async fn pseudonymizer(&self, tenant: &TenantId) -> Result<Pseudonymizer, ExportError> {
        let path = self.path(tenant);
        if let Some(key) = self.read(&path).await? {
            return Ok(Pseudonymizer::new(&key));
        }
        let key = new_key()?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(key.to_vec());
        match self.store.put_opts(&path, payload.clone(), create).await {
            Ok(_) => Ok(Pseudonymizer::new(&key)),
            Err(object_store::Error::AlreadyExists { .. }) => match self.read(&path).await? {
                Some(key) => Ok(Pseudonymizer::new(&key)),
                None => Err(ExportError::Store(format!("export key {path} vanished"))),
            },
            // A store without create-if-absent: a plain write (two first exports of a tenant
            // racing each other could then make different keys).
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&path, payload).await.map_err(store_err)?;
                Ok(Pseudonymizer::new(&key))
            }
            Err(e) => Err(store_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_keeps_one_key() {
        let dir = std::env::temp_dir().join(format!("mnemo-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let loc = StoreLocation::local(&dir).unwrap();
        let ring = KeyRing::new(&loc);
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        let first = ring.pseudonymizer(&a).await.unwrap();
        let again = KeyRing::new(&loc).pseudonymizer(&a).await.unwrap();
        assert_eq!(first.key_id(), again.key_id());
        let other = ring.pseudonymizer(&b).await.unwrap();
        assert_ne!(first.key_id(), other.key_id());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
