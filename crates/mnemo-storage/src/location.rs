//! Where the durable copy lives: a store URL turned into an `object_store` client.
//!
//! | URL | backend |
//! |---|---|
//! | none, or `file:///abs/dir` | local directory, every write fsynced (file and directory) |
//! | `s3://bucket/prefix` | Amazon S3 or compatible; standard `AWS_*` env vars, `AWS_ENDPOINT_URL` to override |
//! | `az://container/prefix` | Azure Blob; standard `AZURE_STORAGE_*` env vars, `AZURE_STORAGE_USE_EMULATOR=true` for Azurite |
//!
//! Remote clients get a bounded retry policy and request timeouts, so an outage surfaces as
//! an error within seconds instead of a hang. [`object_store_from_url`] builds such a client
//! for any remote URL; `mnemo sync` (crate `mnemo-sync`) uses it for raw trees of objects.

use crate::{Result, StoreError};
use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An object store plus the path of the database inside it.
#[derive(Clone, Debug)]
pub struct StoreLocation {
    /// The object store client.
    pub object_store: Arc<dyn ObjectStore>,
    /// Path of the database inside the store.
    pub path: String,
    /// Human-readable description (the URL, with no secrets).
    pub description: String,
    /// True for a remote (network) store, where a local read cache pays off.
    pub remote: bool,
    /// The directory of a local store (`None` for a remote one).
    pub local_dir: Option<std::path::PathBuf>,
}

/// Retry and timeout policy for remote object stores.
#[derive(Clone, Copy, Debug)]
pub struct RemotePolicy {
    /// Retries of one request before it fails.
    pub max_retries: usize,
    /// Give up retrying one request after this long.
    pub retry_timeout: Duration,
    /// Timeout of a single HTTP request.
    pub request_timeout: Duration,
}

impl Default for RemotePolicy {
    fn default() -> Self {
        RemotePolicy {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl StoreLocation {
    /// A local directory (created if missing); writes are fsynced.
    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", dir.display())))?
            .with_fsync(true);
        Ok(StoreLocation {
            object_store: Arc::new(fs),
            path: "db".to_string(),
            description: format!("file://{}", dir.display()),
            remote: false,
            local_dir: Some(dir.to_path_buf()),
        })
    }

    /// Parses a store URL (`file://`, `s3://`, `az://`).
    pub fn from_url(url: &str, policy: RemotePolicy) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::Invalid(format!("store URL {url}: {e}")))?;
        if parsed.scheme() == "file" {
            return Self::local(Path::new(parsed.path()));
        }
        let (object_store, parts) = object_store_from_url(url, policy)?;
        let path = if parts.path.is_empty() {
            "mnemo".to_string()
        } else {
            parts.path
        };
        Ok(StoreLocation {
            object_store,
            path,
            description: format!("{}://{}/", parts.scheme, parts.bucket),
            remote: true,
            local_dir: None,
        })
    }

    /// Where a local store keeps its write-ahead log: segment files beside the database
    /// (`<dir>/<path>/local-wal`). `None` for a remote store, whose log is in the object store
    /// unless the server is given a WAL directory.
    pub fn local_wal_dir(&self) -> Option<std::path::PathBuf> {
        self.local_dir
            .as_ref()
            .map(|d| d.join(&self.path).join("local-wal"))
    }
}

/// The parts of a remote store URL `scheme://bucket/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlParts {
    /// `s3` or `az` (`azure` is read as `az`).
    pub scheme: String,
    /// The S3 bucket or Azure container.
    pub bucket: String,
    /// The path inside the bucket as written in the URL (percent-encoded, no leading or
    /// trailing `/`; empty for the bucket's root).
    pub path: String,
}

/// Builds the client of a remote store URL (`s3://bucket/path`, `az://container/path`): the
/// bucket comes from the URL; endpoint, region and credentials from the standard environment
/// variables (`AWS_*`, `AZURE_STORAGE_*`); `policy` bounds retries and request times. The
/// returned client addresses the whole bucket: callers put `UrlParts::path` in front of their
/// keys. Local directories (`file://`) are not handled here.
pub fn object_store_from_url(
    url: &str,
    policy: RemotePolicy,
) -> Result<(Arc<dyn ObjectStore>, UrlParts)> {
    let parsed =
        url::Url::parse(url).map_err(|e| StoreError::Invalid(format!("store URL {url}: {e}")))?;
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    let scheme = match parsed.scheme() {
        "s3" => "s3",
        "az" | "azure" => "az",
        other => {
            return Err(StoreError::Invalid(format!(
                "unsupported store scheme {other:?} (use file://, s3:// or az://)"
            )))
        }
    };
    if bucket.is_empty() {
        return Err(StoreError::Invalid(format!(
            "store URL {url} names no bucket or container"
        )));
    }
    // Set as config keys (not `with_client_options`, which would drop the client settings
    // `from_env` read, such as `AWS_ALLOW_HTTP`).
    let timeout = format!("{}ms", policy.request_timeout.as_millis());
    let connect_timeout = "5s";
    let retry = RetryConfig {
        max_retries: policy.max_retries,
        retry_timeout: policy.retry_timeout,
        ..Default::default()
    };
    let bad = |e: object_store::Error| StoreError::Invalid(format!("store URL {url}: {e}"));
    let object_store: Arc<dyn ObjectStore> = if scheme == "s3" {
        Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    &timeout,
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    connect_timeout,
                )
                .with_retry(retry)
                .build()
                .map_err(bad)?,
        )
    } else {
        Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&bucket)
                .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                .with_config(
                    AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    connect_timeout,
                )
                .with_retry(retry)
                .build()
                .map_err(bad)?,
        )
    };
    let parts = UrlParts {
        scheme: scheme.to_string(),
        bucket,
        path: parsed.path().trim_matches('/').to_string(),
    };
    Ok((object_store, parts))
}
