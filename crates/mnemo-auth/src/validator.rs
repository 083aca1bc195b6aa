//! Offline JWT validation ([`JwtValidator`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::clock::{unix_seconds, Clock, SystemClock};
use crate::error::{AuthError, ConfigError};
use crate::jwks::KeyStore;
use crate::metrics_names::FAILURES_TOTAL;
use crate::principal::{numeric_date, Claims, Principal};

/// Default clock-skew allowance for `exp` and `nbf`: 60 s.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Longest accepted token, in bytes: 16 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Shortest accepted shared HMAC secret, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Placeholder in a configured issuer that stands for the token's `tid` (Entra ID
/// multi-tenant issuers look like `https://login.microsoftonline.com/{tenantid}/v2.0`).
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// A shared secret for `HS256`/`HS384`/`HS512` tokens. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct HmacSecret(Vec<u8>);

impl HmacSecret {
    /// Wraps a secret of at least [`MIN_HMAC_SECRET_BYTES`] bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let secret = secret.into();
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(ConfigError::WeakSecret);
        }
        Ok(Self(secret))
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSecret(<redacted>)")
    }
}

/// What a valid token must say. Build with [`JwtConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Accepted `iss` values (at least one). An entry may contain [`TENANT_PLACEHOLDER`],
    /// replaced by the token's `tid` before comparing.
    pub issuers: Vec<String>,
    /// Accepted audiences (at least one); a token's `aud` must name one of them.
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf` (default 60 s).
    pub leeway: Duration,
    /// A shared secret enabling `HS256`/`HS384`/`HS512` tokens; `None` (the default)
    /// rejects every `HS*` token. Keys from a key set are never used as HMAC secrets.
    pub hmac_secret: Option<HmacSecret>,
}

impl JwtConfig {
    /// One accepted issuer and audience, the default leeway, no shared secret.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuers: vec![issuer.into()],
            audiences: vec![audience.into()],
            leeway: DEFAULT_LEEWAY,
            hmac_secret: None,
        }
    }
}

/// The JOSE header members this crate reads.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Validates bearer JWTs offline and turns them into [`Principal`]s.
///
/// Accepts `RS256` and `ES256` tokens signed by a key of the [`KeyStore`], and `HS*`
/// tokens only when a shared secret is configured (verified against that secret alone).
/// Checks, in order: header and algorithm, signature, `iss`, `aud`, `exp` (required), `nbf`
/// (when present), `tid` (required), `oid`/`sub`. Every refusal is counted in
/// `mnemo_auth_failures_total{reason}` and logged with its reason, never with the token.
pub struct JwtValidator {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway_secs: i64,
    hmac: Option<DecodingKey>,
    keys: Option<Arc<KeyStore>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway_secs", &self.leeway_secs)
            .field("hmac", &self.hmac.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// A validator for `config`, verifying signatures with the keys of `keys` (and the shared
    /// secret, if configured). It reads time from the key store's clock (the system clock
    /// when there is no key store).
    pub fn new(config: JwtConfig, keys: Option<Arc<KeyStore>>) -> Result<Self, ConfigError> {
        let issuers: Vec<String> = config
            .issuers
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if issuers.is_empty() {
            return Err(ConfigError::NoIssuer);
        }
        let audiences: Vec<String> = config
            .audiences
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(ConfigError::NoAudience);
        }
        if keys.is_none() && config.hmac_secret.is_none() {
            return Err(ConfigError::NoKeys);
        }
        let clock = keys
            .as_ref()
            .map_or_else(|| Arc::new(SystemClock) as Arc<dyn Clock>, |k| k.clock());
        Ok(Self {
            issuers,
            audiences,
            leeway_secs: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            hmac: config.hmac_secret.map(|s| DecodingKey::from_secret(&s.0)),
            keys,
            clock,
        })
    }

    /// Replaces the clock used for `exp`/`nbf` (the key store keeps its own).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key store, if any.
    pub fn key_store(&self) -> Option<&Arc<KeyStore>> {
        self.keys.as_ref()
    }

    /// Validates the value of an `Authorization` header (`Bearer <token>`); `None` when the
    /// request has no such header.
    pub async fn validate_authorization(
        &self,
        header: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match bearer_token(header) {
            Ok(token) => self.validate(token).await,
            Err(e) => Err(record_failure(e)),
        }
    }

    /// Validates a compact JWS token and returns the principal it grants.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        self.validate_inner(token).await.map_err(record_failure)
    }

    async fn validate_inner(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed("token is too large"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "not a compact JWS (three dot-separated parts)",
            ));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed("header has critical extensions"));
        }
        let alg = header
            .alg
            .as_deref()
            .ok_or(AuthError::Malformed("header has no alg"))?;
        let alg = self.allowed_algorithm(alg)?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        if signature_b64.is_empty() {
            return Err(AuthError::BadSignature);
        }

        let verified = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let key = self.hmac.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?;
            verify(signature_b64, signing_input, key, alg)
        } else {
            let store = self.keys.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?;
            let candidates = store.candidates(header.kid.as_deref(), alg).await?;
            candidates
                .iter()
                .any(|k| verify(signature_b64, signing_input, &k.key, alg))
        };
        if !verified {
            return Err(AuthError::BadSignature);
        }

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| {
            AuthError::Malformed("payload is not a JSON object of the expected claim types")
        })?;
        self.check_claims(&claims)?;
        claims.into_principal()
    }

    fn allowed_algorithm(&self, alg: &str) -> Result<Algorithm, AuthError> {
        let has_keys = self.keys.is_some();
        let has_secret = self.hmac.is_some();
        match alg {
            "RS256" if has_keys => Ok(Algorithm::RS256),
            "ES256" if has_keys => Ok(Algorithm::ES256),
            "HS256" if has_secret => Ok(Algorithm::HS256),
            "HS384" if has_secret => Ok(Algorithm::HS384),
            "HS512" if has_secret => Ok(Algorithm::HS512),
            // `none` (in any spelling) and everything else.
            _ => Err(AuthError::AlgorithmNotAllowed),
        }
    }

    fn check_claims(&self, claims: &Claims) -> Result<(), AuthError> {
        let iss = claims.iss.as_deref().ok_or(AuthError::WrongIssuer)?;
        let issuer_ok = self.issuers.iter().any(|accepted| {
            if accepted.contains(TENANT_PLACEHOLDER) {
                match claims.tid.as_deref() {
                    Some(tid) if !tid.is_empty() => {
                        accepted.replace(TENANT_PLACEHOLDER, tid) == iss
                    }
                    _ => false,
                }
            } else {
                accepted == iss
            }
        });
        if !issuer_ok {
            return Err(AuthError::WrongIssuer);
        }
        let aud = claims.aud.as_ref().ok_or(AuthError::WrongAudience)?;
        if !self.audiences.iter().any(|a| aud.contains(a)) {
            return Err(AuthError::WrongAudience);
        }

        let now = i64::try_from(unix_seconds(self.clock.now())).unwrap_or(i64::MAX);
        let exp = claims
            .exp
            .as_ref()
            .ok_or(AuthError::Malformed("token has no exp claim"))?;
        let exp = numeric_date(exp).ok_or(AuthError::Malformed("exp is not a valid time"))?;
        if now >= exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = &claims.nbf {
            let nbf = numeric_date(nbf).ok_or(AuthError::Malformed("nbf is not a valid time"))?;
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        Ok(())
    }
}

fn verify(signature_b64: &str, signing_input: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    matches!(
        jsonwebtoken::crypto::verify(signature_b64, signing_input.as_bytes(), key, alg),
        Ok(true)
    )
}

fn record_failure(e: AuthError) -> AuthError {
    metrics::counter!(FAILURES_TOTAL, "reason" => e.reason()).increment(1);
    if e.is_unavailable() {
        tracing::warn!(reason = e.reason(), error = %e, "authentication failed");
    } else {
        tracing::info!(reason = e.reason(), error = %e, "authentication failed");
    }
    e
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive). `None` or an empty value is [`AuthError::Missing`]; another scheme or
/// a token containing spaces is [`AuthError::Malformed`].
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(AuthError::Missing)?;
    if value.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed(
        "authorization header is not \"Bearer <token>\"",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("authorization scheme is not Bearer"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.contains(char::is_whitespace) {
        return Err(AuthError::Malformed(
            "authorization header is not \"Bearer <token>\"",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("  ")), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Bearer   ")), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("BEARER  a.b.c ")), Ok("a.b.c"));
        assert!(matches!(
            bearer_token(Some("Basic dXNlcg==")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(Some("Bearer a b")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(Some("a.b.c")),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn config_checks() {
        let c = JwtConfig::new("iss", "aud");
        assert_eq!(
            JwtValidator::new(c.clone(), None).err(),
            Some(ConfigError::NoKeys)
        );
        let mut no_iss = c.clone();
        no_iss.issuers = vec![String::new()];
        assert_eq!(
            JwtValidator::new(no_iss, None).err(),
            Some(ConfigError::NoIssuer)
        );
        let mut no_aud = c.clone();
        no_aud.audiences.clear();
        assert_eq!(
            JwtValidator::new(no_aud, None).err(),
            Some(ConfigError::NoAudience)
        );
        assert_eq!(
            HmacSecret::new(vec![1u8; 31]).err(),
            Some(ConfigError::WeakSecret)
        );
        let secret = HmacSecret::new(vec![1u8; 32]).unwrap();
        assert_eq!(format!("{secret:?}"), "HmacSecret(<redacted>)");
        let mut with_secret = c;
        with_secret.hmac_secret = Some(secret);
        assert!(JwtValidator::new(with_secret, None).is_ok());
    }
}
