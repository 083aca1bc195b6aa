//! A test identity provider: signing keys generated at test time (RSA 2048 and EC P-256),
//! tokens minted with any header and claims, and a JWKS / OIDC discovery HTTP endpoint on
//! 127.0.0.1 that a test can stop, restart and give another key set.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the test identity provider.
pub enum TestKey {
    Rsa { kid: String, pair: RsaKeyPair },
    Ec { kid: String, pair: EcdsaKeyPair },
}

impl TestKey {
    /// A fresh RSA 2048 key.
    pub fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa keygen");
        TestKey::Rsa {
            kid: kid.to_owned(),
            pair,
        }
    }

    /// A fresh EC P-256 key.
    pub fn ec(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec keygen");
        TestKey::Ec {
            kid: kid.to_owned(),
            pair,
        }
    }

    pub fn kid(&self) -> &str {
        match self {
            TestKey::Rsa { kid, .. } | TestKey::Ec { kid, .. } => kid,
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Rsa { .. } => "RS256",
            TestKey::Ec { .. } => "ES256",
        }
    }

    /// The public key as a JWK, as an identity provider publishes it.
    pub fn jwk(&self) -> Value {
        match self {
            TestKey::Rsa { kid, pair } => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            TestKey::Ec { kid, pair } => {
                let point = pair.public_key().as_ref();
                assert_eq!(point.len(), 65);
                json!({
                    "kty": "EC", "use": "sig", "crv": "P-256", "kid": kid,
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
        }
    }

    /// The public key's DER bytes (PKCS#1 for RSA, the SEC1 point for EC).
    pub fn public_der(&self) -> Vec<u8> {
        match self {
            TestKey::Rsa { pair, .. } => pair.public_key().as_ref().to_vec(),
            TestKey::Ec { pair, .. } => pair.public_key().as_ref().to_vec(),
        }
    }

    /// The public key in PEM, as an attacker would feed it to an HMAC.
    pub fn public_pem(&self) -> String {
        let label = match self {
            TestKey::Rsa { .. } => "RSA PUBLIC KEY",
            TestKey::Ec { .. } => "PUBLIC KEY",
        };
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(self.public_der())
        )
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Rsa { pair, .. } => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("rsa sign");
                sig
            }
            TestKey::Ec { pair, .. } => {
                pair.sign(&rng, message).expect("ec sign").as_ref().to_vec()
            }
        }
    }

    /// A token signed by this key with the usual header (`alg`, `typ`, `kid`).
    pub fn mint(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid()});
        self.mint_with_header(&header, claims)
    }

    /// A token with an arbitrary header, signed by this key.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// `base64url(header).base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).expect("json")),
        b64(&serde_json::to_vec(claims).expect("json"))
    )
}

/// A token with an arbitrary header and a raw signature (possibly empty).
pub fn mint_raw(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}", signing_input(header, claims), b64(signature))
}

/// An HMAC-SHA256 token signed with `secret`.
pub fn mint_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// A JWKS document publishing `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

struct ServerState {
    addr: SocketAddr,
    jwks: Mutex<Value>,
    jwks_uri_override: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// The identity provider's key endpoint: `GET /jwks` and
/// `GET /.well-known/openid-configuration` on 127.0.0.1.
pub struct JwksServer {
    state: Arc<ServerState>,
    running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl JwksServer {
    /// Starts serving `jwks` on a free port.
    pub async fn start(jwks: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Self {
            state: Arc::new(ServerState {
                addr,
                jwks: Mutex::new(jwks),
                jwks_uri_override: Mutex::new(None),
                jwks_fetches: AtomicUsize::new(0),
                discovery_fetches: AtomicUsize::new(0),
            }),
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(Arc::clone(&self.state));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        *self.running.lock().unwrap() = Some((tx, handle));
    }

    /// Stops serving: from now on connections are refused.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some((tx, handle)) = running {
            let _ = tx.send(());
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("server did not stop")
                .expect("server task");
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.state.addr)
            .await
            .expect("rebind");
        self.serve(listener);
    }

    /// Publishes another key set.
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    /// Makes the discovery document name another `jwks_uri`.
    pub fn set_jwks_uri(&self, uri: &str) {
        *self.state.jwks_uri_override.lock().unwrap() = Some(uri.to_owned());
    }

    /// How many times `/jwks` was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.state.addr)
    }

    pub fn discovery_url(&self) -> String {
        format!(
            "http://{}/.well-known/openid-configuration",
            self.state.addr
        )
    }
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Json<Value> {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(state.jwks.lock().unwrap().clone())
}

async fn serve_discovery(State(state): State<Arc<ServerState>>) -> Json<Value> {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let jwks_uri = state
        .jwks_uri_override
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("http://{}/jwks", state.addr));
    Json(json!({"issuer": "https://idp.test/tenant/v2.0", "jwks_uri": jwks_uri}))
}
