"""A test identity provider: RSA and EC signing keys, a JWKS endpoint on 127.0.0.1 that can be
stopped, restarted and rotated, and tokens minted with any claims (Entra ID shaped)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://login.test/{tenantid}/v2.0"
AUDIENCE = "api://mnemo-test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    def __init__(self, kid: str, kind: str = "rsa"):
        self.kid = kid
        self.kind = kind
        if kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            self.jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        self.jwk.update({"kid": kid, "alg": self.alg, "use": "sig"})

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(tenant: str = "tenant-x", subject: Optional[str] = "alice", *, scp: Optional[str] = None,
           roles: Optional[list] = None, **over) -> dict:
    """Entra-shaped claims; a user token has `scp`, an application token `roles` and no `scp`."""
    now = int(time.time())
    c = {"iss": ISSUER.replace("{tenantid}", tenant), "aud": AUDIENCE, "tid": tenant,
         "iat": now, "nbf": now - 5, "exp": now + 3600}
    if subject is not None:
        c["oid"] = subject
    if scp is not None:
        c["scp"] = scp
    if roles is not None:
        c["roles"] = roles
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


class IdentityProvider:
    """Serves `/jwks` and `/.well-known/openid-configuration`; mints tokens."""

    def __init__(self):
        self.keys = [SigningKey("rsa-1"), SigningKey("ec-1", "ec")]
        self.published = list(self.keys)
        self.fetches = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self.port: Optional[int] = None

    # --------------------------------------------------------------- endpoint control
    def start(self) -> "IdentityProvider":
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/jwks":
                    idp.fetches += 1
                    body = json.dumps({"keys": [k.jwk for k in idp.published]}).encode()
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": ISSUER, "jwks_uri": idp.jwks_url}).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def server_args(self) -> list:
        return ["--auth", "jwt", "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
                "--jwks-url", self.jwks_url]

    # --------------------------------------------------------------- tokens
    def mint(self, c: dict, key: Optional[SigningKey] = None, headers: Optional[dict] = None) -> str:
        key = key or self.keys[0]
        h = {"kid": key.kid}
        h.update(headers or {})
        return jwt.encode(c, key.private, algorithm=key.alg, headers=h)

    def user(self, subject: str, tenant: str = "tenant-x",
             scp: str = "Conversations.ReadWrite Memory.ReadWrite Search") -> str:
        return self.mint(claims(tenant, subject, scp=scp))

    def app(self, roles: list, tenant: str = "tenant-x", subject: str = "app-1") -> str:
        return self.mint(claims(tenant, subject, roles=roles))


def unsigned_token(c: dict) -> str:
    """`alg: none`."""
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(c).encode())}."


def hs256_token(secret: bytes, c: dict, kid: Optional[str] = None) -> str:
    """HS256 signed with an arbitrary secret (e.g. the RSA public key PEM: the classic confusion)."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(c).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"
