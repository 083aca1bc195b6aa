//! API keys for simple deployments without an identity provider.
//!
//! A key looks like `mnemo_<id>_<secret>`: `id` is 16 hex digits naming the key (safe to log,
//! used to revoke it), `secret` is 32 random bytes in base64url. Only the SHA-256 of the whole
//! key is stored, in a JSON file written atomically (temporary file, fsync, rename, directory
//! fsync) with mode 0600. A key is printed once, when created, and cannot be recovered.
//!
//! The server reads the file through an [`ApiKeyStore`], which notices changes (a key created
//! or revoked by `mnemo keys` while the server runs) within [`RELOAD_INTERVAL`]. The secrets
//! are 256-bit random values, so a plain SHA-256 (no slow password hash) is the right digest:
//! there is nothing to brute-force.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::AuthError;
use crate::metrics_names::FAILURES_TOTAL;
use crate::principal::{Principal, PrincipalKind, MAX_ID_BYTES};

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "mnemo_";
/// How often, at most, an [`ApiKeyStore`] checks whether its file changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
const FILE_VERSION: u32 = 1;

/// Why the key file could not be read or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a key file of a version this build understands.
    #[error("key file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tenant, role or user is empty, too long or contains control characters.
    #[error("invalid {0}: must be 1-256 bytes without control characters")]
    InvalidField(&'static str),
    /// No key with this id exists (or it is already revoked).
    #[error("no active key with id {0}")]
    NoSuchKey(String),
    /// The system's random generator failed.
    #[error("random generator failed")]
    Random,
}

/// One stored key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (16 hex digits), part of the key itself.
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    /// Tenant the key belongs to.
    pub tenant: String,
    /// Roles granted (mapped to permissions like a token's `roles`).
    pub roles: Vec<String>,
    /// When set, the key acts for this user only (like a user token); otherwise it is an
    /// application key that may act for any user of its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Free-form note given at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Revocation time, Unix seconds; a revoked key never authenticates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl ApiKeyRecord {
    /// The principal this key grants.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant: self.tenant.clone(),
            subject: self
                .user
                .clone()
                .unwrap_or_else(|| format!("apikey:{}", self.id)),
            kind: if self.user.is_some() {
                PrincipalKind::User
            } else {
                PrincipalKind::Application
            },
            roles: self.roles.clone(),
            scopes: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<ApiKeyRecord>,
}

/// What [`create_key`] needs.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Tenant of the key.
    pub tenant: String,
    /// Roles granted.
    pub roles: Vec<String>,
    /// Bind the key to one user (a user principal) instead of an application.
    pub user: Option<String>,
    /// Free-form note.
    pub note: Option<String>,
}

fn valid_field(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

fn sha256_hex(data: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_file(path: &Path) -> Result<KeyFile, KeyFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KeyFile {
                version: FILE_VERSION,
                keys: Vec::new(),
            })
        }
        Err(source) => {
            return Err(KeyFileError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| KeyFileError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if file.version != FILE_VERSION {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
            reason: format!("unsupported version {}", file.version),
        });
    }
    Ok(file)
}

fn write_file(path: &Path, file: &KeyFile) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(file).map_err(|e| KeyFileError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Creates a key, appends its record to the file at `path` (created if missing) and returns
/// the key. This is the only time the key exists in clear.
pub fn create_key(path: &Path, new: NewKey) -> Result<(String, ApiKeyRecord), KeyFileError> {
    if !valid_field(&new.tenant) {
        return Err(KeyFileError::InvalidField("tenant"));
    }
    if new.roles.iter().any(|r| !valid_field(r)) {
        return Err(KeyFileError::InvalidField("role"));
    }
    if new.user.as_deref().is_some_and(|u| !valid_field(u)) {
        return Err(KeyFileError::InvalidField("user"));
    }
    let mut file = read_file(path)?;
    let mut random = [0u8; 40];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| KeyFileError::Random)?;
    let id: String = random[..8].iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{KEY_PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(&random[8..]));
    let record = ApiKeyRecord {
        id,
        sha256: sha256_hex(key.as_bytes()),
        tenant: new.tenant,
        roles: new.roles,
        user: new.user,
        note: new.note,
        created_at: unix_now(),
        revoked_at: None,
    };
    file.keys.push(record.clone());
    write_file(path, &file)?;
    Ok((key, record))
}

/// Marks the key `id` revoked in the file at `path`.
pub fn revoke_key(path: &Path, id: &str) -> Result<ApiKeyRecord, KeyFileError> {
    let mut file = read_file(path)?;
    let record = file
        .keys
        .iter_mut()
        .find(|k| k.id == id && k.revoked_at.is_none())
        .ok_or_else(|| KeyFileError::NoSuchKey(id.to_owned()))?;
    record.revoked_at = Some(unix_now());
    let out = record.clone();
    write_file(path, &file)?;
    Ok(out)
}

/// Every record in the file at `path`, revoked ones included.
pub fn list_keys(path: &Path) -> Result<Vec<ApiKeyRecord>, KeyFileError> {
    Ok(read_file(path)?.keys)
}

/// The file's identity for change detection.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Loaded {
    stamp: Stamp,
    checked: Instant,
    by_hash: HashMap<String, ApiKeyRecord>,
}

/// The server side: authenticates keys against the file, reloading it when it changes.
///
/// A file that becomes unreadable or invalid keeps the last good set in force (and logs an
/// error); a file that disappears means no key is valid.
pub struct ApiKeyStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ApiKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn index(keys: Vec<ApiKeyRecord>) -> HashMap<String, ApiKeyRecord> {
    keys.into_iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| (k.sha256.clone(), k))
        .collect()
}

impl ApiKeyStore {
    /// Opens the key file at `path` (a missing file is an empty key set).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KeyFileError> {
        let path = path.into();
        let st = stamp(&path);
        let by_hash = index(read_file(&path)?.keys);
        Ok(Self {
            path,
            loaded: Mutex::new(Loaded {
                stamp: st,
                checked: Instant::now(),
                by_hash,
            }),
        })
    }

    /// Number of active keys.
    pub fn active_keys(&self) -> usize {
        self.lock().by_hash.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reload_if_changed(&self, loaded: &mut Loaded) {
        if loaded.checked.elapsed() < RELOAD_INTERVAL {
            return;
        }
        loaded.checked = Instant::now();
        let st = stamp(&self.path);
        if st == loaded.stamp {
            return;
        }
        match read_file(&self.path) {
            Ok(file) => {
                loaded.by_hash = index(file.keys);
                loaded.stamp = st;
                tracing::info!(keys = loaded.by_hash.len(), "API key file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the API key file; keeping the previous keys")
            }
        }
    }

    /// Authenticates a key taken from `Authorization: Bearer <key>`.
    pub fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
        let result = self.check(key);
        if let Err(e) = &result {
            metrics::counter!(FAILURES_TOTAL, "reason" => e.reason()).increment(1);
            tracing::info!(reason = e.reason(), "authentication failed");
        }
        result
    }

    fn check(&self, key: &str) -> Result<Principal, AuthError> {
        if key.is_empty() {
            return Err(AuthError::Missing);
        }
        if !key.starts_with(KEY_PREFIX) || key.len() > 256 {
            return Err(AuthError::Malformed("not a mnemo API key"));
        }
        let hash = sha256_hex(key.as_bytes());
        let mut loaded = self.lock();
        self.reload_if_changed(&mut loaded);
        loaded
            .by_hash
            .get(&hash)
            .map(ApiKeyRecord::principal)
            .ok_or(AuthError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(tenant: &str, user: Option<&str>) -> NewKey {
        NewKey {
            tenant: tenant.into(),
            roles: vec!["Memory.ReadWrite".into()],
            user: user.map(Into::into),
            note: None,
        }
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = ApiKeyStore::open(&path).unwrap();
        assert_eq!(store.active_keys(), 0);
        let (key, rec) = create_key(&path, new_key("acme", None)).unwrap();
        assert!(key.starts_with("mnemo_"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "the key itself is never stored");
        assert!(text.contains(&rec.sha256));
        // A fresh store sees the key at once; a running one within RELOAD_INTERVAL.
        let p = ApiKeyStore::open(&path)
            .unwrap()
            .authenticate(&key)
            .unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.kind, PrincipalKind::Application);
        assert_eq!(p.subject, format!("apikey:{}", rec.id));
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert!(store.authenticate(&key).is_ok());

        let (user_key, _) = create_key(&path, new_key("acme", Some("alice"))).unwrap();
        let p = ApiKeyStore::open(&path)
            .unwrap()
            .authenticate(&user_key)
            .unwrap();
        assert_eq!((p.kind, p.subject.as_str()), (PrincipalKind::User, "alice"));

        revoke_key(&path, &rec.id).unwrap();
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert_eq!(store.authenticate(&key), Err(AuthError::InvalidApiKey));
        assert!(store.authenticate(&user_key).is_ok());
        assert!(matches!(
            revoke_key(&path, &rec.id),
            Err(KeyFileError::NoSuchKey(_))
        ));
        assert_eq!(list_keys(&path).unwrap().len(), 2);
    }

    #[test]
    fn wrong_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (key, _) = create_key(&path, new_key("acme", None)).unwrap();
        let store = ApiKeyStore::open(&path).unwrap();
        let mut tampered = key.clone();
        tampered.pop();
        tampered.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(store.authenticate(&tampered), Err(AuthError::InvalidApiKey));
        assert!(matches!(
            store.authenticate("eyJhbGciOi.x.y"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(store.authenticate(""), Err(AuthError::Missing));
        assert!(matches!(
            create_key(&path, new_key("", None)),
            Err(KeyFileError::InvalidField("tenant"))
        ));
    }

    #[test]
    fn invalid_file_keeps_previous_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (key, _) = create_key(&path, new_key("acme", None)).unwrap();
        let store = ApiKeyStore::open(&path).unwrap();
        fs::write(&path, b"{ not json").unwrap();
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(50));
        assert!(store.authenticate(&key).is_ok());
        assert!(ApiKeyStore::open(&path).is_err());
    }
}
