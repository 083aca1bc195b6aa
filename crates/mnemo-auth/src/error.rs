//! Error types: why a token was refused ([`AuthError`]), why a configuration was rejected
//! ([`ConfigError`]) and why a key refresh failed ([`RefreshError`]).
//!
//! No error ever carries the token or any part of it: messages are fixed strings or facts
//! produced by this crate (key ages, HTTP statuses).

use std::time::Duration;

use thiserror::Error;

/// Why a bearer token was refused.
///
/// Every variant maps to an HTTP status through [`AuthError::http_status`]: all are 401
/// (the client's credentials are not acceptable) except [`AuthError::KeysUnavailable`],
/// which is 503 (the server cannot currently check any token, and fails closed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No bearer token was presented (no `Authorization` header, or an empty token).
    #[error("no bearer token was presented")]
    Missing,
    /// The token or the `Authorization` header is not well formed; the text says which part.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with any key that may sign this token.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past, beyond the allowed leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the allowed leeway.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is absent or not one of the accepted issuers.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is absent or names none of the accepted audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The header's `alg` is not allowed: `none`, an unsupported algorithm, or `HS*`
    /// without a configured shared secret.
    #[error("token signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The header names a key id (`kid`) absent from the current key set, even after the
    /// refresh such a token may trigger.
    #[error("token is signed with an unknown key")]
    UnknownKey,
    /// The required `tid` (tenant) claim is absent or empty.
    #[error("token has no tenant (tid) claim")]
    MissingTenant,
    /// Neither `oid` nor `sub` is present, so the token names no subject.
    #[error("token has no subject (oid or sub) claim")]
    MissingSubject,
    /// No signing keys can be trusted right now: none was ever fetched, or the last
    /// successful fetch is older than the configured stale window and the key endpoint
    /// cannot be reached. Validation fails closed; this is the server's fault, not the
    /// client's (503).
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// An API key that is unknown or revoked (the two are indistinguishable on purpose).
    #[error("API key is not valid")]
    InvalidApiKey,
}

impl AuthError {
    /// The HTTP status this error should produce: 503 for [`AuthError::KeysUnavailable`],
    /// 401 for every other variant.
    pub fn http_status(&self) -> u16 {
        if self.is_unavailable() {
            503
        } else {
            401
        }
    }

    /// True when the server, not the token, is at fault (the 503 class): the signing keys
    /// cannot currently be trusted.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }

    /// A short stable label for metrics and logs (`reason` label of
    /// `mnemo_auth_failures_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::MissingTenant => "missing_tenant",
            AuthError::MissingSubject => "missing_subject",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
            AuthError::InvalidApiKey => "invalid_api_key",
        }
    }
}

/// A configuration that cannot be used; returned by the constructors, never at request time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The stale-key window exceeds [`crate::MAX_STALE_WINDOW`] (96 h).
    #[error("stale key window of {0:?} exceeds the maximum of 96 h")]
    StaleWindowTooLarge(Duration),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A URL does not parse.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A URL is not `https` (plain `http` is allowed only on loopback hosts, or everywhere
    /// with `allow_insecure_http`).
    #[error("insecure URL {0}: key endpoints must use https (http only on loopback)")]
    InsecureUrl(String),
    /// No accepted issuer was configured.
    #[error("at least one accepted issuer is required")]
    NoIssuer,
    /// No accepted audience was configured.
    #[error("at least one accepted audience is required")]
    NoAudience,
    /// The shared HMAC secret is shorter than [`crate::MIN_HMAC_SECRET_BYTES`].
    #[error("the shared HMAC secret must be at least 32 bytes")]
    WeakSecret,
    /// Neither a key store nor a shared secret was given, so no token could ever verify.
    #[error("no way to verify tokens: configure a key store or a shared secret")]
    NoKeys,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

/// Why fetching the key set failed. The previous keys stay in use (within the stale window).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The request could not be sent or its body not read (connection refused, DNS, TLS…).
    #[error("key endpoint unreachable: {0}")]
    Unreachable(String),
    /// The whole refresh did not finish within the configured fetch timeout.
    #[error("key endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint answered with a non-success HTTP status.
    #[error("key endpoint answered HTTP {0}")]
    Status(u16),
    /// The response body is larger than [`crate::MAX_DOCUMENT_BYTES`].
    #[error("key endpoint response exceeds {0} bytes")]
    TooLarge(usize),
    /// The document is not valid JSON, not a JWKS, or the discovery document has no
    /// usable `jwks_uri`.
    #[error("invalid key document: {0}")]
    Invalid(String),
    /// The discovery document points at a URL that is not allowed (see
    /// [`ConfigError::InsecureUrl`]).
    #[error("discovery document names a disallowed jwks_uri: {0}")]
    InsecureUrl(String),
    /// The local key file could not be read.
    #[error("cannot read key file: {0}")]
    File(String),
}
