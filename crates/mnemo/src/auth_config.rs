//! Authentication settings of `mnemo serve`: command-line flags and environment variables
//! (through clap), over the `[auth]` section of an optional TOML config file, over defaults.

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mnemo_api::auth::{AuthConfig, Authenticator, PermissionMap};
use mnemo_auth::apikeys::ApiKeyStore;
use mnemo_auth::{HmacSecret, JwtConfig, JwtValidator, KeySource, KeyStore, KeyStoreConfig};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer JWTs from an identity provider, validated offline against its signing keys.
    Jwt,
    /// Bearer API keys created with `mnemo keys create`.
    Keys,
    /// No authentication: tenant `default`; allowed only on a loopback address.
    None,
}

/// Authentication flags of `mnemo serve` (each also settable in the config file's `[auth]`
/// section and through its environment variable).
#[derive(Args, Debug, Default)]
pub struct AuthArgs {
    /// Authentication mode. Default: none (loopback only).
    #[arg(long = "auth", value_enum, env = "MNEMO_AUTH")]
    mode: Option<AuthMode>,
    /// Accepted token issuer (repeatable). `{tenantid}` stands for the token's tid.
    #[arg(long = "jwt-issuer", env = "MNEMO_JWT_ISSUER", value_delimiter = ',')]
    jwt_issuer: Vec<String>,
    /// Accepted token audience (repeatable).
    #[arg(
        long = "jwt-audience",
        env = "MNEMO_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    jwt_audience: Vec<String>,
    /// Signing keys: a JWKS URL.
    #[arg(long, env = "MNEMO_JWKS_URL")]
    jwks_url: Option<String>,
    /// Signing keys: an OpenID Connect discovery URL (its jwks_uri is used).
    #[arg(long, env = "MNEMO_OIDC_DISCOVERY_URL")]
    oidc_discovery_url: Option<String>,
    /// Signing keys: a local JWKS file.
    #[arg(long, env = "MNEMO_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// Disk cache of the signing keys. Default: DATA_DIR/jwks-cache.json.
    #[arg(long, env = "MNEMO_JWKS_CACHE_FILE")]
    jwks_cache_file: Option<PathBuf>,
    /// Clock-skew allowance for exp/nbf, in seconds. Default 60.
    #[arg(long, env = "MNEMO_JWT_LEEWAY_SECS")]
    jwt_leeway_secs: Option<u64>,
    /// How long last-known signing keys stay valid while the key endpoint is unreachable,
    /// in hours (default 72, at most 96).
    #[arg(long, env = "MNEMO_JWKS_STALE_WINDOW_HOURS")]
    jwks_stale_window_hours: Option<u64>,
    /// File holding a shared secret (≥ 32 bytes) that enables HS256/384/512 tokens.
    #[arg(long, env = "MNEMO_JWT_HMAC_SECRET_FILE")]
    jwt_hmac_secret_file: Option<PathBuf>,
    /// API key file (for `--auth keys`). Default: DATA_DIR/api-keys.json.
    #[arg(long, env = "MNEMO_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
}

/// The `[auth]` section of the config file: the same settings as the flags, plus the
/// claim-to-permission map.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    mode: Option<AuthMode>,
    #[serde(default)]
    jwt_issuer: Vec<String>,
    #[serde(default)]
    jwt_audience: Vec<String>,
    jwks_url: Option<String>,
    oidc_discovery_url: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_cache_file: Option<PathBuf>,
    jwt_leeway_secs: Option<u64>,
    jwks_stale_window_hours: Option<u64>,
    jwt_hmac_secret_file: Option<PathBuf>,
    api_keys_file: Option<PathBuf>,
    /// Claim value (role or scope) → permission names.
    permissions: Option<HashMap<String, Vec<String>>>,
}

/// The config file (`--config`): an `[auth]` and a `[search]` section.
#[derive(Debug, Default, Deserialize)]
pub struct ConfigFile {
    /// Authentication settings.
    #[serde(default)]
    pub auth: AuthFile,
    /// Search settings.
    #[serde(default)]
    pub search: crate::search_config::SearchFile,
}

/// Reads and parses the config file (all defaults without one).
pub fn read_config(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn pick_list(flag: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

/// The authentication in force, plus the key store to keep refreshed (JWT mode).
pub struct Auth {
    /// What the API uses.
    pub config: AuthConfig,
    /// The signing-key store, refreshed in the background.
    pub key_store: Option<Arc<KeyStore>>,
}

/// Resolves flags over the config file over defaults, and builds the authenticator.
pub async fn build(
    args: AuthArgs,
    file: AuthFile,
    data_dir: &Path,
    listen: SocketAddr,
) -> anyhow::Result<Auth> {
    let permissions = match &file.permissions {
        None => PermissionMap::default(),
        Some(map) => PermissionMap::from_names(map).map_err(anyhow::Error::msg)?,
    };
    let mode = pick(args.mode, file.mode).unwrap_or(AuthMode::None);
    let mut key_store = None;
    let authenticator = match mode {
        AuthMode::None => {
            if !listen.ip().is_loopback() {
                bail!(
                    "--auth none is allowed only on a loopback address; {listen} is not one. \
                     Use --auth jwt or --auth keys"
                );
            }
            Authenticator::None
        }
        AuthMode::Keys => {
            let path = pick(args.api_keys_file, file.api_keys_file)
                .unwrap_or_else(|| data_dir.join("api-keys.json"));
            let keys = ApiKeyStore::open(&path)
                .with_context(|| format!("opening API key file {}", path.display()))?;
            if keys.active_keys() == 0 {
                tracing::warn!(file = %path.display(), "no API keys yet: create one with `mnemo keys create`");
            }
            Authenticator::ApiKeys(Arc::new(keys))
        }
        AuthMode::Jwt => {
            let issuers = pick_list(args.jwt_issuer, file.jwt_issuer);
            let audiences = pick_list(args.jwt_audience, file.jwt_audience);
            if issuers.is_empty() || audiences.is_empty() {
                bail!("--auth jwt needs --jwt-issuer and --jwt-audience");
            }
            let sources = [
                pick(args.jwks_url, file.jwks_url).map(KeySource::JwksUrl),
                pick(args.oidc_discovery_url, file.oidc_discovery_url)
                    .map(KeySource::OidcDiscovery),
                pick(args.jwks_file, file.jwks_file).map(KeySource::File),
            ];
            let mut sources = sources.into_iter().flatten();
            let source = sources.next();
            if sources.next().is_some() {
                bail!("give only one of --jwks-url, --oidc-discovery-url and --jwks-file");
            }
            let hmac = match pick(args.jwt_hmac_secret_file, file.jwt_hmac_secret_file) {
                None => None,
                Some(p) => {
                    let secret = std::fs::read(&p)
                        .with_context(|| format!("reading HMAC secret {}", p.display()))?;
                    Some(HmacSecret::new(secret.trim_ascii().to_vec())?)
                }
            };
            if let Some(source) = source {
                let mut kc = KeyStoreConfig::new(source);
                kc.cache_file = Some(
                    pick(args.jwks_cache_file, file.jwks_cache_file)
                        .unwrap_or_else(|| data_dir.join("jwks-cache.json")),
                );
                if let Some(h) = pick(args.jwks_stale_window_hours, file.jwks_stale_window_hours) {
                    kc.stale_window = Duration::from_secs(h * 3600);
                }
                let store = Arc::new(KeyStore::new(kc)?);
                // Best effort: with a disk cache the node also starts while the provider is
                // down (requests fail closed with 503 until keys are known).
                match store.refresh().await {
                    Ok(n) => tracing::info!(keys = n, "signing keys fetched"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot fetch signing keys at start; using the disk cache if any")
                    }
                }
                key_store = Some(store);
            } else if hmac.is_none() {
                bail!("--auth jwt needs --jwks-url, --oidc-discovery-url or --jwks-file");
            }
            let mut jc = JwtConfig::new(String::new(), String::new());
            jc.issuers = issuers;
            jc.audiences = audiences;
            jc.hmac_secret = hmac;
            if let Some(s) = pick(args.jwt_leeway_secs, file.jwt_leeway_secs) {
                jc.leeway = Duration::from_secs(s);
            }
            Authenticator::Jwt(Arc::new(JwtValidator::new(jc, key_store.clone())?))
        }
    };
    tracing::info!(mode = ?authenticator, "authentication");
    Ok(Auth {
        config: AuthConfig {
            authenticator,
            permissions,
        },
        key_store,
    })
}

/// Keeps the signing keys fresh: checks every minute whether a scheduled refresh is due.
pub fn spawn_refresh(store: Arc<KeyStore>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match store.refresh_if_due().await {
                Some(Ok(n)) => tracing::info!(keys = n, "signing keys refreshed"),
                Some(Err(e)) => tracing::warn!(error = %e, "signing-key refresh failed"),
                None => {}
            }
        }
    });
}
