//! Authentication for mnemo: offline validation of bearer JWTs issued by an identity provider
//! such as Entra ID (Azure AD), the signing-key cache behind it, and the [`Principal`] a valid
//! token grants.
//!
//! - [`JwtValidator`] checks a token entirely offline: `RS256`/`ES256` signatures against the
//!   keys of a [`KeyStore`] (`alg: none` is always refused; `HS*` only with a configured shared
//!   secret, never with a public key as the secret), then `iss`, `aud`, `exp`/`nbf` (with
//!   leeway, default 60 s) and the required `tid`.
//! - [`KeyStore`] keeps the identity provider's JWKS in memory and on disk, refreshes it every
//!   12 h and on unknown key ids (at most once per 5 min), keeps trusting the last-known keys
//!   for a bounded window (default 72 h, at most 96 h) while the provider is unreachable, and
//!   then fails closed with [`AuthError::KeysUnavailable`] (a 503).
//! - Every refusal is an [`AuthError`] whose [`AuthError::http_status`] is 401 or 503. Errors
//!   and logs never contain the token.
//!
//! Time is read from an injectable [`Clock`] so tests can simulate days passing.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use mnemo_auth::{JwtConfig, JwtValidator, KeySource, KeyStore, KeyStoreConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut keys = KeyStoreConfig::new(KeySource::OidcDiscovery(
//!     "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration".into(),
//! ));
//! keys.cache_file = Some("/var/lib/mnemo/jwks-cache.json".into());
//! let store = Arc::new(KeyStore::new(keys)?);
//! // Best effort at start: with a disk cache the node also starts while the provider is down.
//! if let Err(e) = store.refresh().await {
//!     eprintln!("cannot fetch signing keys yet: {e}");
//! }
//!
//! let config = JwtConfig::new(
//!     "https://login.microsoftonline.com/{tenantid}/v2.0",
//!     "api://mnemo",
//! );
//! let validator = JwtValidator::new(config, Some(store))?;
//! match validator.validate_authorization(Some("Bearer eyJhbGciOi...")).await {
//!     Ok(principal) => println!("tenant {} acts as {}", principal.tenant, principal.subject),
//!     Err(e) => println!("refused ({}): {e}", e.http_status()),
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod apikeys;
mod clock;
mod error;
mod jwks;
mod principal;
mod validator;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AuthError, ConfigError, RefreshError};
pub use jwks::{
    KeySource, KeyStore, KeyStoreConfig, KeyStoreStatus, DEFAULT_FETCH_TIMEOUT,
    DEFAULT_REFRESH_INTERVAL, DEFAULT_RETRY_INTERVAL, DEFAULT_STALE_WINDOW,
    DEFAULT_UNKNOWN_KID_INTERVAL, MAX_DOCUMENT_BYTES, MAX_KEYS, MAX_STALE_WINDOW,
};
pub use principal::{Principal, PrincipalKind, MAX_ID_BYTES};
pub use validator::{
    bearer_token, HmacSecret, JwtConfig, JwtValidator, DEFAULT_LEEWAY, MAX_TOKEN_BYTES,
    MIN_HMAC_SECRET_BYTES, TENANT_PLACEHOLDER,
};

/// Names of the metrics this crate records (through the `metrics` facade; the binary
/// installs the exporter).
pub mod metrics_names {
    /// Counter, label `reason` ([`crate::AuthError::reason`]): refused tokens.
    pub const FAILURES_TOTAL: &str = "mnemo_auth_failures_total";
    /// Gauge: seconds since the last successful key fetch while the latest attempt failed
    /// (0 when the latest attempt succeeded). The warning signal of a stale key set.
    pub const JWKS_STALE_SECONDS: &str = "mnemo_auth_jwks_stale_seconds";
    /// Counter, label `result` (`ok` or `error`): key-set fetch attempts.
    pub const JWKS_REFRESH_TOTAL: &str = "mnemo_auth_jwks_refresh_total";
    /// Gauge: usable keys in the current key set.
    pub const JWKS_KEYS: &str = "mnemo_auth_jwks_keys";
}

/// Registers descriptions of this crate's metrics with the installed recorder. Optional;
/// call once after installing the exporter.
pub fn describe_metrics() {
    use metrics_names::*;
    metrics::describe_counter!(FAILURES_TOTAL, "Bearer tokens refused, by reason.");
    metrics::describe_gauge!(
        JWKS_STALE_SECONDS,
        metrics::Unit::Seconds,
        "Age of the signing keys while they cannot be refreshed (0 when fresh)."
    );
    metrics::describe_counter!(JWKS_REFRESH_TOTAL, "Signing-key fetch attempts, by result.");
    metrics::describe_gauge!(JWKS_KEYS, "Usable keys in the current signing-key set.");
}
