//! The authentication matrix of issue 4 against a test identity provider (see `idp`).

mod idp;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use idp::{jwks, mint_hs256, mint_raw, JwksServer, TestKey};
use mnemo_auth::{
    AuthError, Clock, ConfigError, HmacSecret, JwtConfig, JwtValidator, KeySource, KeyStore,
    KeyStoreConfig, ManualClock, PrincipalKind, RefreshError,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const ISSUER: &str = "https://idp.test/tenant/v2.0";
const AUDIENCE: &str = "api://mnemo";
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    server: JwksServer,
    clock: Arc<ManualClock>,
    store: Arc<KeyStore>,
    validator: JwtValidator,
    dir: TempDir,
}

impl Fixture {
    /// An identity provider publishing one RSA and one EC key, a key store (with a disk
    /// cache) that fetched them once, and a validator.
    async fn new() -> Self {
        let rsa = TestKey::rsa("rsa-1");
        let ec = TestKey::ec("ec-1");
        let server = JwksServer::start(jwks(&[&rsa, &ec])).await;
        let clock = Arc::new(ManualClock::starting_now());
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(KeyStore::with_clock(store_config(&server, &dir), clock.clone()).unwrap());
        assert_eq!(store.refresh().await, Ok(2));
        let validator = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
        Fixture {
            rsa,
            ec,
            server,
            clock,
            store,
            validator,
            dir,
        }
    }

    fn now(&self) -> i64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Claims of a valid user token, one hour to live.
    fn claims(&self) -> Value {
        let now = self.now();
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "tid": "tenant-a", "oid": "user-1", "sub": "pairwise-1",
            "scp": "Conversations.ReadWrite Memory.Read", "iat": now, "nbf": now - 5, "exp": now + 3600,
        })
    }

    fn claims_with(&self, changes: Value) -> Value {
        let mut c = self.claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    async fn check(&self, token: &str) -> Result<mnemo_auth::Principal, AuthError> {
        self.validator.validate(token).await
    }
}

fn store_config(server: &JwksServer, dir: &TempDir) -> KeyStoreConfig {
    let mut config = KeyStoreConfig::new(KeySource::JwksUrl(server.jwks_url()));
    config.cache_file = Some(dir.path().join("jwks-cache.json"));
    config.fetch_timeout = Duration::from_secs(5);
    config
}

fn validator(store: &Arc<KeyStore>, config: JwtConfig) -> JwtValidator {
    JwtValidator::new(config, Some(store.clone())).unwrap()
}

fn assert_401(result: Result<mnemo_auth::Principal, AuthError>, expected: AuthError) {
    let err = result.expect_err("token must be refused");
    assert_eq!(err, expected);
    assert_eq!(err.http_status(), 401);
}

fn assert_unavailable(result: Result<mnemo_auth::Principal, AuthError>) {
    let err = result.expect_err("token must be refused");
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "got {err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(err.is_unavailable());
}

#[tokio::test]
async fn valid_rs256_token_is_accepted() {
    let f = Fixture::new().await;
    let p = f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    assert_eq!(p.tenant, "tenant-a");
    assert_eq!(p.subject, "user-1");
    assert_eq!(p.kind, PrincipalKind::User);
    assert_eq!(p.scopes, vec!["Conversations.ReadWrite", "Memory.Read"]);
    // Through the Authorization header too.
    let header = format!("Bearer {}", f.rsa.mint(&f.claims()));
    assert_eq!(
        f.validator
            .validate_authorization(Some(&header))
            .await
            .unwrap(),
        p
    );
    assert_401(
        f.validator.validate_authorization(None).await,
        AuthError::Missing,
    );
}

#[tokio::test]
async fn valid_es256_token_is_accepted() {
    let f = Fixture::new().await;
    let p = f.check(&f.ec.mint(&f.claims())).await.unwrap();
    assert_eq!(
        (p.tenant.as_str(), p.subject.as_str()),
        ("tenant-a", "user-1")
    );
    // A token without kid is checked against every key of its algorithm.
    let token = f.ec.mint_with_header(&json!({"alg": "ES256"}), &f.claims());
    assert!(f.check(&token).await.is_ok());
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let f = Fixture::new().await;
    let now = f.now();
    let token = f.rsa.mint(&f.claims_with(json!({"exp": now - 61})));
    assert_401(f.check(&token).await, AuthError::Expired);
    // A token valid now expires when the clock passes exp + leeway.
    let token = f.rsa.mint(&f.claims_with(json!({"exp": now + 10})));
    assert!(f.check(&token).await.is_ok());
    f.clock.advance(Duration::from_secs(71));
    assert_401(f.check(&token).await, AuthError::Expired);
    // exp is required.
    let token = f.rsa.mint(&f.claims_with(json!({"exp": null})));
    assert!(matches!(
        f.check(&token).await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected() {
    let f = Fixture::new().await;
    let token = f.rsa.mint(&f.claims_with(json!({"nbf": f.now() + 120})));
    assert_401(f.check(&token).await, AuthError::NotYetValid);
    f.clock.advance(MINUTE);
    assert!(
        f.check(&token).await.is_ok(),
        "valid once nbf - leeway is reached"
    );
}

#[tokio::test]
async fn leeway_tolerates_small_clock_skew() {
    let f = Fixture::new().await;
    let now = f.now();
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"exp": now - 30, "nbf": now + 30})));
    assert!(
        f.check(&token).await.is_ok(),
        "30 s either side is within the 60 s default"
    );
    let token = f.rsa.mint(&f.claims_with(json!({"exp": now - 60})));
    assert_401(f.check(&token).await, AuthError::Expired);
    // A configured leeway of zero is strict.
    let mut config = JwtConfig::new(ISSUER, AUDIENCE);
    config.leeway = Duration::ZERO;
    let strict = validator(&f.store, config);
    let token = f.rsa.mint(&f.claims_with(json!({"exp": now - 1})));
    assert_eq!(strict.validate(&token).await, Err(AuthError::Expired));
    let token = f.rsa.mint(&f.claims_with(json!({"nbf": now + 1})));
    assert_eq!(strict.validate(&token).await, Err(AuthError::NotYetValid));
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let f = Fixture::new().await;
    let token = f.rsa.mint(&f.claims_with(json!({"aud": "api://other"})));
    assert_401(f.check(&token).await, AuthError::WrongAudience);
    let token = f.rsa.mint(&f.claims_with(json!({"aud": null})));
    assert_401(f.check(&token).await, AuthError::WrongAudience);
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"aud": ["api://other", AUDIENCE]})));
    assert!(
        f.check(&token).await.is_ok(),
        "an aud array naming us is accepted"
    );
}

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let f = Fixture::new().await;
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"iss": "https://evil.test/tenant/v2.0"})));
    assert_401(f.check(&token).await, AuthError::WrongIssuer);
    let token = f.rsa.mint(&f.claims_with(json!({"iss": null})));
    assert_401(f.check(&token).await, AuthError::WrongIssuer);
}

#[tokio::test]
async fn issuer_template_binds_the_tenant() {
    let f = Fixture::new().await;
    let multi = validator(
        &f.store,
        JwtConfig::new("https://idp.test/{tenantid}/v2.0", AUDIENCE),
    );
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"iss": "https://idp.test/tenant-a/v2.0"})));
    assert_eq!(multi.validate(&token).await.unwrap().tenant, "tenant-a");
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"iss": "https://idp.test/tenant-b/v2.0"})));
    assert_eq!(multi.validate(&token).await, Err(AuthError::WrongIssuer));
}

#[tokio::test]
async fn missing_tid_is_rejected() {
    let f = Fixture::new().await;
    let token = f.rsa.mint(&f.claims_with(json!({"tid": null})));
    assert_401(f.check(&token).await, AuthError::MissingTenant);
    let token = f.rsa.mint(&f.claims_with(json!({"tid": ""})));
    assert_401(f.check(&token).await, AuthError::MissingTenant);
    let token = f
        .rsa
        .mint(&f.claims_with(json!({"oid": null, "sub": null})));
    assert_401(f.check(&token).await, AuthError::MissingSubject);
    let token = f.rsa.mint(&f.claims_with(json!({"tid": 7})));
    assert!(matches!(
        f.check(&token).await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let f = Fixture::new().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        let token = mint_raw(&header, &f.claims(), b"");
        assert_401(f.check(&token).await, AuthError::AlgorithmNotAllowed);
        // Even with a genuine signature appended.
        let token = f.rsa.mint_with_header(&header, &f.claims());
        assert_401(f.check(&token).await, AuthError::AlgorithmNotAllowed);
    }
    // Algorithms outside RS256/ES256 are refused too.
    for alg in ["RS384", "RS512", "PS256", "ES384", "EdDSA"] {
        let token = mint_raw(&json!({"alg": alg, "kid": "rsa-1"}), &f.claims(), b"sig");
        assert_401(f.check(&token).await, AuthError::AlgorithmNotAllowed);
    }
    let token = mint_raw(&json!({"kid": "rsa-1"}), &f.claims(), b"sig");
    assert!(matches!(
        f.check(&token).await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let f = Fixture::new().await;
    let jwk_text = serde_json::to_vec(&f.rsa.jwk()).unwrap();
    let secrets: [Vec<u8>; 3] = [
        f.rsa.public_der(),
        f.rsa.public_pem().into_bytes(),
        jwk_text,
    ];
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"});
    for secret in &secrets {
        let token = mint_hs256(secret, &header, &f.claims());
        assert_401(f.check(&token).await, AuthError::AlgorithmNotAllowed);
    }
    // With a shared secret configured, HS256 is verified against that secret only.
    let shared = b"0123456789abcdef0123456789abcdef-shared".to_vec();
    let mut config = JwtConfig::new(ISSUER, AUDIENCE);
    config.hmac_secret = Some(HmacSecret::new(shared.clone()).unwrap());
    let with_secret = validator(&f.store, config);
    for secret in &secrets {
        let token = mint_hs256(secret, &header, &f.claims());
        assert_eq!(
            with_secret.validate(&token).await,
            Err(AuthError::BadSignature)
        );
    }
    let token = mint_hs256(&shared, &json!({"alg": "HS256"}), &f.claims());
    assert_eq!(
        with_secret.validate(&token).await.unwrap().subject,
        "user-1"
    );
    // RS256 still works beside it.
    assert!(with_secret.validate(&f.rsa.mint(&f.claims())).await.is_ok());
}

#[tokio::test]
async fn forged_or_tampered_tokens_are_rejected() {
    let f = Fixture::new().await;
    // Claims changed after signing.
    let token = f.rsa.mint(&f.claims());
    let forged = f.rsa.mint(&f.claims_with(json!({"tid": "tenant-b"})));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
    assert_401(f.check(&tampered).await, AuthError::BadSignature);
    // Signed by an attacker's key that claims a trusted kid.
    let attacker = TestKey::rsa("rsa-1");
    assert_401(
        f.check(&attacker.mint(&f.claims())).await,
        AuthError::BadSignature,
    );
    let attacker = TestKey::ec("ec-1");
    assert_401(
        f.check(&attacker.mint(&f.claims())).await,
        AuthError::BadSignature,
    );
    // An ES256 header naming the RSA key: no key of that kid fits the algorithm.
    let token =
        f.ec.mint_with_header(&json!({"alg": "ES256", "kid": "rsa-1"}), &f.claims());
    assert_401(f.check(&token).await, AuthError::UnknownKey);
    // Empty signature.
    let token = mint_raw(&json!({"alg": "RS256", "kid": "rsa-1"}), &f.claims(), b"");
    assert_401(f.check(&token).await, AuthError::BadSignature);
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let f = Fixture::new().await;
    let valid = f.rsa.mint(&f.claims());
    let too_big = "a".repeat(mnemo_auth::MAX_TOKEN_BYTES + 1);
    let with_crit = f.rsa.mint_with_header(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
        &f.claims(),
    );
    let cases = [
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{valid}.extra"),
        "!!!.e30.sig".to_owned(),
        format!("{}.e30.sig", idp_b64(b"not json")),
        too_big,
        with_crit,
    ];
    for token in &cases {
        assert!(
            matches!(f.check(token).await, Err(AuthError::Malformed(_))),
            "{token:.40}"
        );
    }
    assert_401(f.check("").await, AuthError::Missing);
}

fn idp_b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn errors_never_contain_the_token() {
    let f = Fixture::new().await;
    let now = f.now();
    let tokens = [
        f.rsa.mint(&f.claims_with(json!({"exp": now - 3600}))),
        f.rsa.mint(&f.claims_with(json!({"aud": "x"}))),
        f.rsa.mint(&f.claims_with(json!({"tid": "a\u{1}b"}))),
        TestKey::ec("zzz").mint(&f.claims()),
        mint_raw(&json!({"alg": "none"}), &f.claims(), b""),
    ];
    for token in &tokens {
        let err = f.check(token).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!shown.contains(part), "error {shown} leaks the token");
        }
        assert!(!shown.contains("user-1") && !shown.contains("tenant-a"));
    }
}

#[tokio::test]
async fn principals_are_classified_as_user_or_application() {
    let f = Fixture::new().await;
    let user = f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    assert_eq!(user.kind, PrincipalKind::User);
    assert!(!user.is_application());

    let app_claims = f.claims_with(
        json!({"scp": null, "oid": "app-sp-1", "roles": ["Conversations.ReadWrite", "Admin"]}),
    );
    let app = f.check(&f.rsa.mint(&app_claims)).await.unwrap();
    assert_eq!(app.kind, PrincipalKind::Application);
    assert_eq!(app.subject, "app-sp-1");
    assert_eq!(app.roles, vec!["Conversations.ReadWrite", "Admin"]);
    assert!(app.scopes.is_empty());
    assert!(app.has_role("Admin"));

    // A user token carrying app roles as well as scp stays a user.
    let both = f.claims_with(json!({"roles": ["Admin"]}));
    assert_eq!(
        f.check(&f.rsa.mint(&both)).await.unwrap().kind,
        PrincipalKind::User
    );
    // No oid: the subject is sub.
    let no_oid = f.claims_with(json!({"oid": null}));
    assert_eq!(
        f.check(&f.ec.mint(&no_oid)).await.unwrap().subject,
        "pairwise-1"
    );
}

#[tokio::test]
async fn unknown_kid_triggers_one_refresh_then_rotation_is_accepted() {
    let f = Fixture::new().await;
    assert_eq!(f.server.jwks_fetches(), 1);

    // The identity provider rotates in a new key; the first token naming it triggers a fetch.
    let rsa2 = TestKey::rsa("rsa-2");
    f.server.set_jwks(jwks(&[&f.rsa, &f.ec, &rsa2]));
    let p = f.check(&rsa2.mint(&f.claims())).await.unwrap();
    assert_eq!(p.subject, "user-1");
    assert_eq!(f.server.jwks_fetches(), 2);
    // Known keys need no fetch.
    f.check(&rsa2.mint(&f.claims())).await.unwrap();
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    assert_eq!(f.server.jwks_fetches(), 2);

    // Another new key within 5 minutes: no second fetch, the token is refused.
    let ec2 = TestKey::ec("ec-2");
    f.server.set_jwks(jwks(&[&f.rsa, &f.ec, &rsa2, &ec2]));
    f.clock.advance(4 * MINUTE);
    assert_401(f.check(&ec2.mint(&f.claims())).await, AuthError::UnknownKey);
    assert_401(
        f.check(&TestKey::ec("random").mint(&f.claims())).await,
        AuthError::UnknownKey,
    );
    assert_eq!(f.server.jwks_fetches(), 2);

    // Once 5 minutes have passed since the last unknown-kid fetch, the next one fetches again.
    f.clock.advance(MINUTE);
    f.check(&ec2.mint(&f.claims())).await.unwrap();
    assert_eq!(f.server.jwks_fetches(), 3);
}

#[tokio::test]
async fn key_removed_from_the_jwks_is_distrusted_at_once() {
    let f = Fixture::new().await;
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();

    // Emergency rotation: rsa-1 is withdrawn and rsa-2 published. The first rsa-2 token
    // fetches the new set, after which rsa-1 is refused without any further fetch.
    let rsa2 = TestKey::rsa("rsa-2");
    f.server.set_jwks(jwks(&[&f.ec, &rsa2]));
    f.check(&rsa2.mint(&f.claims())).await.unwrap();
    assert_eq!(f.server.jwks_fetches(), 2);
    assert_401(
        f.check(&f.rsa.mint(&f.claims())).await,
        AuthError::UnknownKey,
    );
    assert_eq!(f.server.jwks_fetches(), 2);

    // An explicit (or scheduled) refresh has the same effect.
    f.check(&f.ec.mint(&f.claims())).await.unwrap();
    f.server.set_jwks(jwks(&[&rsa2]));
    assert_eq!(f.store.refresh().await, Ok(1));
    assert_401(
        f.check(&f.ec.mint(&f.claims())).await,
        AuthError::UnknownKey,
    );
    f.check(&rsa2.mint(&f.claims())).await.unwrap();
}

#[tokio::test]
async fn endpoint_down_keys_stay_valid_within_the_window_then_fail_closed() {
    let f = Fixture::new().await;
    f.server.stop().await;

    // Down for 1 hour: nothing is even due.
    f.clock.advance(HOUR);
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    assert_eq!(f.store.status().last_error, None);

    // 13 hours: the scheduled refresh fails, the last-known keys are still used.
    f.clock.advance(12 * HOUR);
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    let _ = f.store.refresh_if_due().await; // settle the background attempt
    let status = f.store.status();
    assert!(
        matches!(status.last_error, Some(RefreshError::Unreachable(_))),
        "{status:?}"
    );
    assert_eq!(status.stale_for, Some(13 * HOUR));
    assert!(status.usable);
    f.check(&f.ec.mint(&f.claims())).await.unwrap();

    // 71 hours 59 minutes after the last successful fetch: still inside the 72 h window.
    f.clock.advance(58 * HOUR + 59 * MINUTE);
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();

    // Past the window: every token is refused with the 503-class error, fail closed.
    f.clock.advance(2 * MINUTE);
    assert_unavailable(f.check(&f.rsa.mint(&f.claims())).await);
    assert_unavailable(f.check(&f.ec.mint(&f.claims())).await);
    assert!(!f.store.status().usable);

    // The endpoint comes back: the next attempt (after the retry interval) recovers.
    f.server.restart().await;
    f.clock.advance(5 * MINUTE);
    f.check(&f.rsa.mint(&f.claims())).await.unwrap();
    let status = f.store.status();
    assert!(status.usable && status.last_error.is_none() && status.stale_for.is_none());
    assert_eq!(f.server.jwks_fetches(), 2);
}

#[tokio::test]
async fn stale_window_is_configurable_and_bounded() {
    let f = Fixture::new().await;
    let mut config = store_config(&f.server, &f.dir);
    config.stale_window = 97 * HOUR;
    assert_eq!(
        KeyStore::new(config.clone()).err(),
        Some(ConfigError::StaleWindowTooLarge(97 * HOUR))
    );
    config.stale_window = 2 * HOUR;
    config.cache_file = None;
    let store = Arc::new(KeyStore::with_clock(config, f.clock.clone()).unwrap());
    store.refresh().await.unwrap();
    let short = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    f.server.stop().await;
    f.clock.advance(HOUR);
    short.validate(&f.rsa.mint(&f.claims())).await.unwrap();
    f.clock.advance(HOUR + MINUTE);
    assert_unavailable(short.validate(&f.rsa.mint(&f.claims())).await);
}

#[tokio::test]
async fn disk_cache_lets_a_new_node_start_with_the_endpoint_down() {
    let f = Fixture::new().await;
    let cache = f.dir.path().join("jwks-cache.json");
    let written: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(written["jwks"]["keys"].as_array().unwrap().len(), 2);
    let fetched_at = f.store.status().fetched_at;
    f.server.stop().await;

    // A new node (new store, same cache file) an hour later, identity provider down.
    f.clock.advance(HOUR);
    let store =
        Arc::new(KeyStore::with_clock(store_config(&f.server, &f.dir), f.clock.clone()).unwrap());
    assert_eq!(
        store.status().fetched_at,
        fetched_at,
        "keys keep their original fetch time"
    );
    let fresh = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    fresh.validate(&f.rsa.mint(&f.claims())).await.unwrap();
    fresh.validate(&f.ec.mint(&f.claims())).await.unwrap();
    assert_eq!(f.server.jwks_fetches(), 1);

    // The cache does not extend trust: a node started after the window fails closed.
    f.clock.advance(72 * HOUR);
    let store =
        Arc::new(KeyStore::with_clock(store_config(&f.server, &f.dir), f.clock.clone()).unwrap());
    let late = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    assert_unavailable(late.validate(&f.rsa.mint(&f.claims())).await);

    // A cache written for another key source is ignored.
    let mut other = store_config(&f.server, &f.dir);
    other.source = KeySource::JwksUrl(format!("{}-other", f.server.jwks_url()));
    f.clock.set(fetched_at.unwrap() + MINUTE);
    let store = Arc::new(KeyStore::with_clock(other, f.clock.clone()).unwrap());
    assert_eq!(store.status().key_count, 0);
    let other_validator = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    assert_unavailable(other_validator.validate(&f.rsa.mint(&f.claims())).await);
}

#[tokio::test]
async fn no_keys_at_start_fails_closed_until_the_endpoint_answers() {
    let f = Fixture::new().await;
    f.server.stop().await;
    let mut config = store_config(&f.server, &f.dir);
    config.cache_file = None;
    let store = Arc::new(KeyStore::with_clock(config, f.clock.clone()).unwrap());
    let v = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    assert_unavailable(v.validate(&f.rsa.mint(&f.claims())).await);
    f.server.restart().await;
    // Attempts are spaced by the retry interval (5 min).
    assert_unavailable(v.validate(&f.rsa.mint(&f.claims())).await);
    f.clock.advance(5 * MINUTE);
    v.validate(&f.rsa.mint(&f.claims())).await.unwrap();
}

#[tokio::test]
async fn oidc_discovery_names_the_jwks() {
    let f = Fixture::new().await;
    let mut config = KeyStoreConfig::new(KeySource::OidcDiscovery(f.server.discovery_url()));
    config.fetch_timeout = Duration::from_secs(5);
    let store = Arc::new(KeyStore::with_clock(config, f.clock.clone()).unwrap());
    assert_eq!(store.refresh().await, Ok(2));
    assert_eq!(f.server.discovery_fetches(), 1);
    validator(&store, JwtConfig::new(ISSUER, AUDIENCE))
        .validate(&f.ec.mint(&f.claims()))
        .await
        .unwrap();
    // A discovery document pointing at plain http off loopback is refused.
    f.server.set_jwks_uri("http://keys.example.com/jwks");
    assert!(matches!(
        store.refresh().await,
        Err(RefreshError::InsecureUrl(_))
    ));
    // And the configured URLs themselves must be https (or loopback http).
    let bad = KeyStoreConfig::new(KeySource::JwksUrl("http://idp.example.com/keys".into()));
    assert!(matches!(
        KeyStore::new(bad),
        Err(ConfigError::InsecureUrl(_))
    ));
}

#[tokio::test]
async fn local_file_source() {
    let f = Fixture::new().await;
    let path = f.dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&jwks(&[&f.rsa])).unwrap()).unwrap();
    let store = Arc::new(
        KeyStore::with_clock(
            KeyStoreConfig::new(KeySource::File(path.clone())),
            f.clock.clone(),
        )
        .unwrap(),
    );
    let v = validator(&store, JwtConfig::new(ISSUER, AUDIENCE));
    // The first validation loads the file (no explicit refresh).
    v.validate(&f.rsa.mint(&f.claims())).await.unwrap();
    std::fs::write(&path, serde_json::to_vec(&jwks(&[&f.ec])).unwrap()).unwrap();
    assert_eq!(store.refresh().await, Ok(1));
    assert_eq!(
        v.validate(&f.rsa.mint(&f.claims())).await,
        Err(AuthError::UnknownKey)
    );
    v.validate(&f.ec.mint(&f.claims())).await.unwrap();
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(
        store.refresh().await,
        Err(RefreshError::Invalid(_))
    ));
    v.validate(&f.ec.mint(&f.claims())).await.unwrap();
}
