//! The signing-key cache ([`KeyStore`]): where keys come from, how long they are trusted,
//! when they are fetched again.
//!
//! See [`KeyStore`] for the rules.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use crate::clock::{age, unix_seconds, Clock, SystemClock};
use crate::error::{AuthError, ConfigError, RefreshError};
use crate::metrics_names::{JWKS_KEYS, JWKS_REFRESH_TOTAL, JWKS_STALE_SECONDS};

/// Default time between scheduled fetches: 12 h.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Default minimum time between fetches triggered by unknown key ids: 5 min.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Default minimum time between scheduled attempts after a failed one: 5 min.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Default time the last-known keys stay usable after the last successful fetch: 72 h.
pub const DEFAULT_STALE_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// Largest allowed stale window: 96 h.
pub const MAX_STALE_WINDOW: Duration = Duration::from_secs(96 * 3600);
/// Default bound on one whole refresh (discovery document plus key set): 10 s.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted discovery document, key set or key file: 1 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// At most this many keys of one key set are kept (the rest are ignored).
pub const MAX_KEYS: usize = 64;
/// Smallest accepted RSA modulus: 2048 bits.
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Version of the on-disk cache format.
const CACHE_FORMAT: u32 = 1;

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document at this URL (`https`, or `http` on loopback).
    JwksUrl(String),
    /// An OpenID Connect discovery document at this URL; its `jwks_uri` is fetched.
    OidcDiscovery(String),
    /// A JWKS document in a local file, read again at every refresh.
    File(PathBuf),
}

impl KeySource {
    /// A stable one-line description, stored in the disk cache: a cache written for another
    /// source is ignored.
    fn describe(&self) -> String {
        match self {
            KeySource::JwksUrl(u) => format!("jwks:{u}"),
            KeySource::OidcDiscovery(u) => format!("oidc:{u}"),
            KeySource::File(p) => format!("file:{}", p.display()),
        }
    }
}

/// Configuration of a [`KeyStore`]. Build with [`KeyStoreConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct KeyStoreConfig {
    /// Where the keys come from.
    pub source: KeySource,
    /// The on-disk cache (JSON), written after every successful fetch and read at start.
    /// `None`: memory only.
    pub cache_file: Option<PathBuf>,
    /// Time between scheduled fetches (default 12 h).
    pub refresh_interval: Duration,
    /// Minimum time between fetches triggered by tokens naming an unknown `kid`
    /// (default 5 min).
    pub unknown_kid_interval: Duration,
    /// Minimum time between scheduled attempts after a failed one (default 5 min).
    pub retry_interval: Duration,
    /// How long after the last successful fetch the keys remain usable while fetching
    /// fails (default 72 h, at most [`MAX_STALE_WINDOW`]).
    pub stale_window: Duration,
    /// Bound on one whole refresh, connection included (default 10 s).
    pub fetch_timeout: Duration,
    /// Allow plain `http` URLs on non-loopback hosts (default false; never in production).
    pub allow_insecure_http: bool,
}

impl KeyStoreConfig {
    /// A configuration with the defaults and no disk cache.
    pub fn new(source: KeySource) -> Self {
        Self {
            source,
            cache_file: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            unknown_kid_interval: DEFAULT_UNKNOWN_KID_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            stale_window: DEFAULT_STALE_WINDOW,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            allow_insecure_http: false,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.stale_window > MAX_STALE_WINDOW {
            return Err(ConfigError::StaleWindowTooLarge(self.stale_window));
        }
        for (name, d) in [
            ("stale_window", self.stale_window),
            ("refresh_interval", self.refresh_interval),
            ("fetch_timeout", self.fetch_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        match &self.source {
            KeySource::JwksUrl(u) | KeySource::OidcDiscovery(u) => {
                check_url(u, self.allow_insecure_http)?;
            }
            KeySource::File(_) => {}
        }
        Ok(())
    }
}

/// Checks that `url` parses and is `https` (or `http` on loopback / when allowed).
fn check_url(url: &str, allow_insecure_http: bool) -> Result<url::Url, ConfigError> {
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_insecure_http || is_loopback(&parsed) => Ok(parsed),
        "http" => Err(ConfigError::InsecureUrl(url.to_owned())),
        other => Err(ConfigError::InvalidUrl {
            url: url.to_owned(),
            reason: format!("unsupported scheme {other}"),
        }),
    }
}

/// Follows at most 3 redirects, and only to URLs [`check_url`] accepts (no downgrade to
/// plain http off loopback).
fn redirect_policy(allow_insecure_http: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 3 {
            attempt.error("too many redirects")
        } else if check_url(attempt.url().as_str(), allow_insecure_http).is_err() {
            attempt.error("redirect to a disallowed URL")
        } else {
            attempt.follow()
        }
    })
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// RSA, 2048 bits or more: RS256.
    Rsa,
    /// EC on P-256: ES256.
    EcP256,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyKind::Rsa, Algorithm::RS256) | (KeyKind::EcP256, Algorithm::ES256)
        )
    }
}

/// One usable public key from a key set.
pub(crate) struct VerifyKey {
    kid: Option<String>,
    kind: KeyKind,
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A JWK as found in a key set; only the members this crate uses.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Why one JWK of a set was skipped (logged, never fatal for the set).
fn parse_jwk(value: &serde_json::Value) -> Result<VerifyKey, &'static str> {
    let jwk: RawJwk = RawJwk::deserialize(value).map_err(|_| "not a JWK object")?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("use is not sig");
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops lacks verify");
        }
    }
    match jwk.kty.as_str() {
        "RSA" => {
            if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
                return Err("RSA key for an algorithm other than RS256");
            }
            let (Some(n), Some(e)) = (jwk.n.as_deref(), jwk.e.as_deref()) else {
                return Err("RSA key without n or e");
            };
            let n_bytes = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| "RSA n is not base64url")?;
            let e_bytes = URL_SAFE_NO_PAD
                .decode(e)
                .map_err(|_| "RSA e is not base64url")?;
            let modulus = n_bytes.iter().skip_while(|b| **b == 0).count();
            if modulus < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus shorter than 2048 bits");
            }
            if e_bytes.is_empty() || e_bytes.len() > 8 {
                return Err("RSA exponent out of range");
            }
            Ok(VerifyKey {
                kid: jwk.kid,
                kind: KeyKind::Rsa,
                key: DecodingKey::from_rsa_raw_components(&n_bytes, &e_bytes),
            })
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err("EC key not on P-256");
            }
            if jwk.alg.as_deref().is_some_and(|a| a != "ES256") {
                return Err("EC key for an algorithm other than ES256");
            }
            let (Some(x), Some(y)) = (jwk.x.as_deref(), jwk.y.as_deref()) else {
                return Err("EC key without x or y");
            };
            let x_bytes = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| "EC x is not base64url")?;
            let y_bytes = URL_SAFE_NO_PAD
                .decode(y)
                .map_err(|_| "EC y is not base64url")?;
            if x_bytes.len() != 32 || y_bytes.len() != 32 {
                return Err("EC coordinates are not 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x_bytes);
            point.extend_from_slice(&y_bytes);
            Ok(VerifyKey {
                kid: jwk.kid,
                kind: KeyKind::EcP256,
                key: DecodingKey::from_ec_der(&point),
            })
        }
        // Symmetric ("oct") keys are never taken from a key set: a shared secret is only ever
        // the one configured locally.
        _ => Err("unsupported key type"),
    }
}

/// The usable keys of one fetched key set, and when it was fetched.
#[derive(Debug)]
pub(crate) struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    fetched_at: SystemTime,
}

impl KeySet {
    /// Parses a JWKS document. A document that is not `{"keys": [...]}` is an error; an
    /// individual key that cannot be used is skipped.
    fn parse(doc: &serde_json::Value, fetched_at: SystemTime) -> Result<Self, RefreshError> {
        let Some(entries) = doc.get("keys").and_then(serde_json::Value::as_array) else {
            return Err(RefreshError::Invalid("no \"keys\" array".to_owned()));
        };
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if keys.len() == MAX_KEYS {
                tracing::warn!(
                    total = entries.len(),
                    "key set has too many keys; the rest are ignored"
                );
                break;
            }
            match parse_jwk(entry) {
                Ok(k) => keys.push(Arc::new(k)),
                Err(why) => tracing::debug!(index = i, why, "skipping a key of the key set"),
            }
        }
        Ok(Self { keys, fetched_at })
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token with this `kid` (any key when the token names none) and
    /// algorithm.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        self.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.kind.verifies(alg))
            .cloned()
            .collect()
    }
}

/// The on-disk cache file.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    source: String,
    fetched_at: u64,
    jwks: serde_json::Value,
}

/// A snapshot of a [`KeyStore`]'s state, for health checks, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStoreStatus {
    /// Number of usable keys in the current set (0 when none was ever loaded).
    pub key_count: usize,
    /// When the current set was fetched (or, for a set loaded from the disk cache, when it
    /// was originally fetched).
    pub fetched_at: Option<SystemTime>,
    /// When the last fetch was attempted by this process.
    pub last_attempt: Option<SystemTime>,
    /// Why the last attempt failed; `None` when it succeeded or none was made.
    pub last_error: Option<RefreshError>,
    /// Whether the current keys may be used now (some exist and they are within the stale
    /// window).
    pub usable: bool,
    /// When the last attempt failed: how long ago the last successful fetch was.
    pub stale_for: Option<Duration>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    last_attempt: Option<SystemTime>,
    last_unknown_kid_fetch: Option<SystemTime>,
    last_error: Option<RefreshError>,
}

/// The signing-key cache shared by all validations. Create one per key source and share it
/// behind an [`Arc`].
///
/// Rules (all times from the store's [`Clock`]):
/// - keys come from a JWKS URL, an OIDC discovery document's `jwks_uri`, or a local file;
/// - they are kept in memory and, when `cache_file` is set, on disk; the disk copy is loaded
///   by [`KeyStore::new`], so a restarted node works while the identity provider is down;
/// - they are fetched again every `refresh_interval` (12 h) — in the background when the
///   current keys are still usable, inline when they are not — and after a failed attempt
///   no sooner than `retry_interval` (5 min);
/// - a token naming an unknown `kid` triggers an immediate fetch, at most once per
///   `unknown_kid_interval` (5 min);
/// - while fetching fails, the last-known keys stay usable until `stale_window` (72 h,
///   at most 96 h) after the last successful fetch; after that every validation fails with
///   [`AuthError::KeysUnavailable`] until a fetch succeeds;
/// - every successful fetch replaces the whole key set, so a key absent from it is
///   distrusted at once.
pub struct KeyStore {
    config: KeyStoreConfig,
    source_id: String,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Held for the duration of a fetch: one fetch at a time, and waiters see its result.
    fetch_lock: tokio::sync::Mutex<()>,
    background_running: AtomicBool,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("source", &self.config.source)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// A key store on the real clock. Loads the disk cache when one is configured and
    /// readable; does not fetch (call [`KeyStore::refresh`] at start, or let the first
    /// validation do it).
    pub fn new(config: KeyStoreConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A key store reading time from `clock`.
    pub fn with_clock(config: KeyStoreConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout)
            // A fetch every few hours: keeping idle connections buys nothing.
            .pool_max_idle_per_host(0)
            .redirect(redirect_policy(config.allow_insecure_http))
            .user_agent(concat!("mnemo-auth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        let source_id = config.source.describe();
        let store = Self {
            config,
            source_id,
            clock,
            http,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            background_running: AtomicBool::new(false),
        };
        store.load_cache();
        Ok(store)
    }

    /// The clock this store reads.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// The configuration in force.
    pub fn config(&self) -> &KeyStoreConfig {
        &self.config
    }

    /// Fetches the key set now (waiting for a fetch already under way, then fetching again)
    /// and returns the number of usable keys in it. On success the new set replaces the old
    /// one entirely and is written to the disk cache; on failure the old set stays.
    pub async fn refresh(&self) -> Result<usize, RefreshError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// Fetches only if a scheduled fetch is due: the keys are older than `refresh_interval`
    /// (or there are none) and no attempt was made within `retry_interval`. Returns `None`
    /// when nothing was due.
    pub async fn refresh_if_due(&self) -> Option<Result<usize, RefreshError>> {
        let _guard = self.fetch_lock.lock().await;
        if !self.is_due(self.clock.now()) {
            return None;
        }
        Some(self.fetch_locked().await)
    }

    /// The current state.
    pub fn status(&self) -> KeyStoreStatus {
        let now = self.clock.now();
        let st = self.lock_state();
        let fetched_at = st.keys.as_ref().map(|k| k.fetched_at);
        KeyStoreStatus {
            key_count: st.keys.as_ref().map_or(0, |k| k.keys.len()),
            fetched_at,
            last_attempt: st.last_attempt,
            last_error: st.last_error.clone(),
            usable: fetched_at.is_some_and(|t| age(now, t) <= self.config.stale_window),
            stale_for: match (&st.last_error, fetched_at) {
                (Some(_), Some(t)) => Some(age(now, t)),
                _ => None,
            },
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fetch is due when there are no keys, or they are older than the refresh interval
    /// or past the stale window (a window shorter than the interval must not let keys lapse
    /// without an attempt), and the last attempt is at least `retry_interval` ago.
    fn is_due(&self, now: SystemTime) -> bool {
        let st = self.lock_state();
        if let Some(keys) = &st.keys {
            let key_age = age(now, keys.fetched_at);
            if key_age < self.config.refresh_interval && key_age <= self.config.stale_window {
                return false;
            }
        }
        st.last_attempt
            .is_none_or(|t| age(now, t) >= self.config.retry_interval)
    }

    /// The current key set if it may be used at `now`; also publishes the stale gauge.
    fn usable(&self, now: SystemTime) -> Result<Arc<KeySet>, AuthError> {
        let st = self.lock_state();
        let Some(keys) = &st.keys else {
            return Err(AuthError::KeysUnavailable(match &st.last_error {
                Some(e) => format!("no signing keys could be fetched ({e})"),
                None => "no signing keys have been fetched yet".to_owned(),
            }));
        };
        let key_age = age(now, keys.fetched_at);
        let stale = if st.last_error.is_some() {
            key_age
        } else {
            Duration::ZERO
        };
        metrics::gauge!(JWKS_STALE_SECONDS).set(stale.as_secs_f64());
        if key_age > self.config.stale_window {
            return Err(AuthError::KeysUnavailable(format!(
                "the signing keys were last fetched {}s ago, beyond the {}s window, and cannot be refreshed",
                key_age.as_secs(),
                self.config.stale_window.as_secs()
            )));
        }
        Ok(Arc::clone(keys))
    }

    /// Keys that may verify a token with this `kid` and `alg`, fetching as the rules say.
    ///
    /// Errors: [`AuthError::KeysUnavailable`] when no key can be trusted now,
    /// [`AuthError::UnknownKey`] when the `kid` is not in the (possibly refreshed) set or no
    /// key fits the algorithm.
    pub(crate) async fn candidates(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<VerifyKey>>, AuthError> {
        let now = self.clock.now();
        if self.is_due(now) {
            if self.usable(now).is_ok() {
                self.spawn_background_refresh();
            } else {
                // Nothing usable: a request can only succeed after a fetch, so wait for it.
                let _ = self.refresh_if_due().await;
            }
        }
        let mut keys = self.usable(self.clock.now())?;
        if let Some(kid) = kid {
            if !keys.has_kid(kid) {
                if self.take_unknown_kid_slot(self.clock.now()) {
                    let kid: String = kid.chars().take(64).collect();
                    tracing::info!(kid, "token names an unknown key id; fetching the key set");
                    let _ = self.refresh().await;
                } else {
                    // A fetch may be under way (started by another request): wait for it.
                    drop(self.fetch_lock.lock().await);
                }
                keys = self.usable(self.clock.now())?;
                if !keys.has_kid(kid) {
                    return Err(AuthError::UnknownKey);
                }
            }
        }
        let found = keys.candidates(kid, alg);
        if found.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        Ok(found)
    }

    fn take_unknown_kid_slot(&self, now: SystemTime) -> bool {
        let mut st = self.lock_state();
        let free = st
            .last_unknown_kid_fetch
            .is_none_or(|t| age(now, t) >= self.config.unknown_kid_interval);
        if free {
            st.last_unknown_kid_fetch = Some(now);
        }
        free
    }

    /// Starts a scheduled fetch in the background (at most one at a time); without a Tokio
    /// runtime nothing happens and a later request will fetch inline.
    fn spawn_background_refresh(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let _ = this.refresh_if_due().await;
            this.background_running.store(false, Ordering::Release);
        });
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<usize, RefreshError> {
        let started = self.clock.now();
        self.lock_state().last_attempt = Some(started);
        let timeout = self.config.fetch_timeout;
        let result = match tokio::time::timeout(timeout, self.fetch_document()).await {
            Ok(r) => r,
            Err(_) => Err(RefreshError::Timeout(timeout)),
        };
        let now = self.clock.now();
        let parsed = result.and_then(|doc| KeySet::parse(&doc, now).map(|set| (doc, set)));
        match parsed {
            Ok((doc, set)) => {
                let count = set.keys.len();
                {
                    let mut st = self.lock_state();
                    st.keys = Some(Arc::new(set));
                    st.last_error = None;
                }
                metrics::counter!(JWKS_REFRESH_TOTAL, "result" => "ok").increment(1);
                metrics::gauge!(JWKS_KEYS).set(count as f64);
                metrics::gauge!(JWKS_STALE_SECONDS).set(0.0);
                tracing::debug!(keys = count, source = %self.source_id, "signing keys fetched");
                self.write_cache(&doc, now);
                Ok(count)
            }
            Err(e) => {
                let fetched_at = {
                    let mut st = self.lock_state();
                    st.last_error = Some(e.clone());
                    st.keys.as_ref().map(|k| k.fetched_at)
                };
                metrics::counter!(JWKS_REFRESH_TOTAL, "result" => "error").increment(1);
                match fetched_at {
                    Some(t) => {
                        let key_age = age(now, t);
                        metrics::gauge!(JWKS_STALE_SECONDS).set(key_age.as_secs_f64());
                        if key_age > self.config.stale_window {
                            tracing::error!(error = %e, age_s = key_age.as_secs(), window_s = self.config.stale_window.as_secs(),
                                "signing keys cannot be fetched and the last-known keys are past the stale window: refusing all tokens");
                        } else {
                            tracing::warn!(error = %e, age_s = key_age.as_secs(), window_s = self.config.stale_window.as_secs(),
                                "signing keys cannot be fetched; using the last-known keys");
                        }
                    }
                    None => {
                        tracing::error!(error = %e, "signing keys cannot be fetched and none are cached: refusing all tokens")
                    }
                }
                Err(e)
            }
        }
    }

    async fn fetch_document(&self) -> Result<serde_json::Value, RefreshError> {
        match &self.config.source {
            KeySource::JwksUrl(url) => self.get_json(url).await,
            KeySource::OidcDiscovery(url) => {
                let discovery = self.get_json(url).await?;
                let Some(jwks_uri) = discovery
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                else {
                    return Err(RefreshError::Invalid(
                        "discovery document has no jwks_uri".to_owned(),
                    ));
                };
                check_url(jwks_uri, self.config.allow_insecure_http)
                    .map_err(|_| RefreshError::InsecureUrl(jwks_uri.to_owned()))?;
                self.get_json(jwks_uri).await
            }
            KeySource::File(path) => read_json_file(path),
        }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, RefreshError> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| RefreshError::Unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(RefreshError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(RefreshError::TooLarge(MAX_DOCUMENT_BYTES));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RefreshError::Unreachable(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(RefreshError::TooLarge(MAX_DOCUMENT_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| RefreshError::Invalid(e.to_string()))
    }

    /// Loads the disk cache, if configured, present, readable and written for this source.
    fn load_cache(&self) {
        let Some(path) = &self.config.cache_file else {
            return;
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the signing-key cache");
                return;
            }
        };
        let cache: CacheFile = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt signing-key cache");
                return;
            }
        };
        if cache.format != CACHE_FORMAT || cache.source != self.source_id {
            tracing::warn!(path = %path.display(), "ignoring a signing-key cache written for another key source");
            return;
        }
        // A cache dated in the future (clock skew, tampering) counts as fetched now, so it
        // can never extend trust beyond one stale window from this moment.
        let fetched_at = (UNIX_EPOCH + Duration::from_secs(cache.fetched_at)).min(self.clock.now());
        match KeySet::parse(&cache.jwks, fetched_at) {
            Ok(set) => {
                tracing::info!(path = %path.display(), keys = set.keys.len(),
                    age_s = age(self.clock.now(), fetched_at).as_secs(), "loaded signing keys from the disk cache");
                self.lock_state().keys = Some(Arc::new(set));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an invalid signing-key cache")
            }
        }
    }

    /// Writes the disk cache atomically (temporary file, fsync, rename). Failures are logged
    /// and otherwise ignored: the in-memory keys are what matters now.
    fn write_cache(&self, jwks: &serde_json::Value, fetched_at: SystemTime) {
        let Some(path) = &self.config.cache_file else {
            return;
        };
        let cache = CacheFile {
            format: CACHE_FORMAT,
            source: self.source_id.clone(),
            fetched_at: unix_seconds(fetched_at),
            jwks: jwks.clone(),
        };
        if let Err(e) = write_atomically(path, &cache) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the signing-key cache");
        }
    }
}

fn write_atomically(path: &Path, cache: &CacheFile) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(cache).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; not every platform can open a directory, so best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn read_json_file(path: &Path) -> Result<serde_json::Value, RefreshError> {
    let meta = std::fs::metadata(path).map_err(|e| RefreshError::File(e.to_string()))?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(RefreshError::TooLarge(MAX_DOCUMENT_BYTES));
    }
    let bytes = std::fs::read(path).map_err(|e| RefreshError::File(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| RefreshError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits() {
        let mut c = KeyStoreConfig::new(KeySource::JwksUrl("https://idp.example/keys".into()));
        assert!(c.validate().is_ok());
        c.stale_window = MAX_STALE_WINDOW;
        assert!(c.validate().is_ok());
        c.stale_window = MAX_STALE_WINDOW + Duration::from_secs(1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::StaleWindowTooLarge(_))
        ));
        c.stale_window = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroDuration("stale_window")));
    }

    #[test]
    fn urls() {
        assert!(check_url("https://idp.example/k", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/k", false).is_ok());
        assert!(check_url("http://[::1]/k", false).is_ok());
        assert!(check_url("http://localhost/k", false).is_ok());
        assert!(matches!(
            check_url("http://idp.example/k", false),
            Err(ConfigError::InsecureUrl(_))
        ));
        assert!(check_url("http://idp.example/k", true).is_ok());
        assert!(matches!(
            check_url("ftp://idp.example/k", true),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            check_url("not a url", false),
            Err(ConfigError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn jwk_filtering() {
        let rsa_n = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let short_n = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        let xy = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": rsa_n, "e": "AQAB", "use": "sig", "alg": "RS256"},
            {"kty": "RSA", "kid": "short", "n": short_n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "n": rsa_n, "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "ps", "n": rsa_n, "e": "AQAB", "alg": "PS256"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": xy, "y": xy},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": xy, "y": xy},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            "garbage"
        ]});
        let set = KeySet::parse(&doc, UNIX_EPOCH).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, vec!["r", "e"]);
        assert_eq!(set.candidates(Some("r"), Algorithm::RS256).len(), 1);
        assert!(set.candidates(Some("r"), Algorithm::ES256).is_empty());
        assert_eq!(set.candidates(None, Algorithm::ES256).len(), 1);
        assert!(KeySet::parse(&serde_json::json!({"nokeys": []}), UNIX_EPOCH).is_err());
    }
}
