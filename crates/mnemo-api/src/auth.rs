//! Who is calling, and what they may do: authentication, permissions (RBAC) and the scope a
//! request acts in (ABAC).
//!
//! Every data handler takes a [`Caller<P>`] extractor, where `P` names the [`Permission`]
//! the route needs. Extracting it authenticates the request (JWT, API key, or nothing in
//! `none` mode), maps the principal's `roles` and `scp` claims to permissions through the
//! [`PermissionMap`], refuses with 403 when `P` is missing, and resolves the [`Scope`] from
//! the verified tenant and subject. A handler cannot obtain a scope any other way, so the
//! tenant of every storage key comes from a verified token.
//!
//! Scope rules:
//! - a user principal acts for its own subject; `X-Mnemo-User` naming anyone else is 403;
//! - an application principal acts for the whole tenant, or for the user it names in
//!   `X-Mnemo-User` (its route permission is what lets it touch that user's data);
//! - with `--auth none` the tenant is `default` and `X-Mnemo-User` is trusted as before.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use mnemo_auth::apikeys::ApiKeyStore;
use mnemo_auth::{bearer_token, AuthError, JwtValidator, Principal, PrincipalKind};
use mnemo_storage::{Scope, TenantId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// Header naming the end user a request acts for.
pub const USER_HEADER: &str = "x-mnemo-user";

/// A permission a route can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read conversations and items.
    ConversationsRead,
    /// Create, update and delete conversations and items.
    ConversationsWrite,
    /// Read and list memory keys.
    MemoryRead,
    /// Write and delete memory keys.
    MemoryWrite,
    /// Search.
    Search,
    /// Administration of the tenant (erase users, read the audit log).
    Admin,
    /// Read the change feed.
    ChangesRead,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::ConversationsRead,
        Permission::ConversationsWrite,
        Permission::MemoryRead,
        Permission::MemoryWrite,
        Permission::Search,
        Permission::Admin,
        Permission::ChangesRead,
    ];

    /// The name used in configuration files (`conversations.read`, …).
    pub fn name(self) -> &'static str {
        match self {
            Permission::ConversationsRead => "conversations.read",
            Permission::ConversationsWrite => "conversations.write",
            Permission::MemoryRead => "memory.read",
            Permission::MemoryWrite => "memory.write",
            Permission::Search => "search",
            Permission::Admin => "admin",
            Permission::ChangesRead => "changes.read",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(name: &str) -> Option<Permission> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    /// Every permission.
    pub fn all() -> Self {
        Permission::ALL.into_iter().collect()
    }

    /// True when `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Permissions(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

/// Maps `roles` and `scp` claim values to permissions.
///
/// The default map (used unless configured otherwise):
///
/// | claim value | permissions |
/// |---|---|
/// | `Conversations.Read` | conversations.read |
/// | `Conversations.ReadWrite` | conversations.read, conversations.write |
/// | `Memory.Read` | memory.read |
/// | `Memory.ReadWrite` | memory.read, memory.write |
/// | `Search` | search |
/// | `Admin` | admin |
/// | `Changes.Read` | changes.read |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionMap(HashMap<String, Permissions>);

impl Default for PermissionMap {
    fn default() -> Self {
        use Permission::*;
        let entries: [(&str, &[Permission]); 7] = [
            ("Conversations.Read", &[ConversationsRead]),
            (
                "Conversations.ReadWrite",
                &[ConversationsRead, ConversationsWrite],
            ),
            ("Memory.Read", &[MemoryRead]),
            ("Memory.ReadWrite", &[MemoryRead, MemoryWrite]),
            ("Search", &[Search]),
            ("Admin", &[Admin]),
            ("Changes.Read", &[ChangesRead]),
        ];
        PermissionMap(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.iter().copied().collect()))
                .collect(),
        )
    }
}

impl PermissionMap {
    /// A map from claim values to permission names; an unknown name is an error.
    pub fn from_names(map: &HashMap<String, Vec<String>>) -> Result<Self, String> {
        map.iter()
            .map(|(claim, names)| {
                let perms = names
                    .iter()
                    .map(|n| {
                        Permission::from_name(n)
                            .ok_or_else(|| format!("unknown permission {n:?} for {claim:?}"))
                    })
                    .collect::<Result<Permissions, String>>()?;
                Ok((claim.clone(), perms))
            })
            .collect::<Result<_, _>>()
            .map(PermissionMap)
    }

    /// The permissions a principal's roles and scopes grant.
    pub fn grant(&self, principal: &Principal) -> Permissions {
        let mut bits = 0;
        for claim in principal.roles.iter().chain(&principal.scopes) {
            if let Some(p) = self.0.get(claim) {
                bits |= p.0;
            }
        }
        Permissions(bits)
    }
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    /// No authentication (loopback only): tenant `default`, every permission.
    None,
    /// Bearer JWTs validated offline.
    Jwt(Arc<JwtValidator>),
    /// Bearer API keys from a key file.
    ApiKeys(Arc<ApiKeyStore>),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Authenticator::None => "none",
            Authenticator::Jwt(_) => "jwt",
            Authenticator::ApiKeys(_) => "keys",
        })
    }
}

/// Authentication and authorization settings of a server.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// How callers are authenticated.
    pub authenticator: Authenticator,
    /// Claim values to permissions.
    pub permissions: PermissionMap,
}

impl AuthConfig {
    /// No authentication: for loopback development and tests.
    pub fn none() -> Self {
        AuthConfig {
            authenticator: Authenticator::None,
            permissions: PermissionMap::default(),
        }
    }
}

/// What kind of caller a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerKind {
    /// A user token (or user-bound API key): acts for its own subject only.
    User,
    /// An application token (or application API key): acts for its tenant.
    Application,
    /// No authentication (`--auth none`).
    Local,
}

impl CallerKind {
    /// `user`, `application` or `local`.
    pub fn name(self) -> &'static str {
        match self {
            CallerKind::User => "user",
            CallerKind::Application => "application",
            CallerKind::Local => "local",
        }
    }
}

/// The verified identity behind a request.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The tenant, from the verified token.
    pub tenant: TenantId,
    /// The subject (`oid`/`sub`, or the API key's user or id).
    pub subject: String,
    /// User, application or local.
    pub kind: CallerKind,
    /// What the caller may do.
    pub permissions: Permissions,
}

/// Marker types naming the permission a route needs (the `P` of [`Caller<P>`]).
pub mod need {
    use super::Permission;

    /// A permission marker.
    pub trait Need: Send + Sync + 'static {
        /// The permission required.
        const PERMISSION: Permission;
    }

    macro_rules! marker {
        ($($name:ident => $perm:ident),* $(,)?) => {$(
            #[doc = concat!("Requires [`Permission::", stringify!($perm), "`].")]
            pub struct $name;
            impl Need for $name {
                const PERMISSION: Permission = Permission::$perm;
            }
        )*};
    }
    marker! {
        ConversationsRead => ConversationsRead,
        ConversationsWrite => ConversationsWrite,
        MemoryRead => MemoryRead,
        MemoryWrite => MemoryWrite,
        Search => Search,
        Admin => Admin,
        ChangesRead => ChangesRead,
    }
}

/// An authenticated, authorized caller holding permission `P`, and the scope it acts in.
pub struct Caller<P> {
    /// Who is calling.
    pub identity: Identity,
    /// Whom the request acts for: the tenant, and the user if any.
    pub scope: Scope,
    _need: PhantomData<P>,
}

fn auth_error(e: &AuthError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let (kind, code) = if e.is_unavailable() {
        ("service_unavailable", "auth_unavailable")
    } else {
        ("authentication_error", "invalid_token")
    };
    ApiError::new(status, kind, e.to_string()).with_code(code)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).with_code("forbidden")
}

/// Authenticates a request and returns its identity.
pub async fn authenticate(config: &AuthConfig, parts: &Parts) -> ApiResult<Identity> {
    let header =
        match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                auth_error(&AuthError::Malformed("authorization header is not ASCII"))
            })?),
        };
    authenticate_header(config, header).await
}

/// Authenticates a credential given outside HTTP (the password of a Postgres connection): a
/// bearer token or API key, verified exactly like an `Authorization: Bearer` header.
pub async fn authenticate_credential(config: &AuthConfig, credential: &str) -> ApiResult<Identity> {
    authenticate_header(config, Some(&format!("Bearer {credential}"))).await
}

async fn authenticate_header(config: &AuthConfig, header: Option<&str>) -> ApiResult<Identity> {
    let principal = match &config.authenticator {
        Authenticator::None => {
            return Ok(Identity {
                tenant: TenantId::default_tenant(),
                subject: "local".to_owned(),
                kind: CallerKind::Local,
                permissions: Permissions::all(),
            })
        }
        Authenticator::Jwt(v) => v.validate_authorization(header).await,
        Authenticator::ApiKeys(keys) => match bearer_token(header) {
            Ok(key) => keys.authenticate(key),
            Err(e) => Err(e),
        },
    }
    .map_err(|e| auth_error(&e))?;
    let tenant = TenantId::new(principal.tenant.clone()).map_err(|_| {
        auth_error(&AuthError::Malformed(
            "tenant (tid) is not a valid mnemo tenant id",
        ))
    })?;
    Ok(Identity {
        tenant,
        permissions: config.permissions.grant(&principal),
        kind: match principal.kind {
            PrincipalKind::User => CallerKind::User,
            PrincipalKind::Application => CallerKind::Application,
        },
        subject: principal.subject,
    })
}

impl Identity {
    /// Refuses with 403 unless the caller holds `p`.
    pub fn require(&self, p: Permission) -> ApiResult<()> {
        if self.permissions.contains(p) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this operation needs the {p} permission"
            )))
        }
    }

    /// The scope of a request, given the `X-Mnemo-User` header value.
    pub fn scope(&self, acting_user: Option<&[u8]>) -> ApiResult<Scope> {
        let named = acting_user
            .map(|v| {
                std::str::from_utf8(v)
                    .map_err(|_| ApiError::invalid_param(USER_HEADER, "X-Mnemo-User must be UTF-8"))
            })
            .transpose()?;
        let user =
            match (self.kind, named) {
                (CallerKind::User, Some(u)) if u != self.subject => return Err(forbidden(
                    "a user token acts only for its own subject; X-Mnemo-User names another user",
                )),
                (CallerKind::User, _) => Some(self.subject.as_str()),
                (_, named) => named,
            };
        let scope = match (user, self.kind) {
            (None, _) => return Ok(Scope::tenant(self.tenant.clone())),
            // A user token acts as that user: shared memory is read-only to it.
            (Some(u), CallerKind::User) => Scope::as_user(self.tenant.clone(), u),
            (Some(u), _) => Scope::user(self.tenant.clone(), u),
        };
        scope.map_err(|e| ApiError::invalid_param(USER_HEADER, e.to_string()))
    }
}

impl<S, P> FromRequestParts<S> for Caller<P>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    P: need::Need,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let st = AppState::from_ref(state);
        let identity = authenticate(&st.auth, parts).await?;
        if let Err(e) = identity.require(P::PERMISSION) {
            tracing::info!(
                tenant = %identity.tenant,
                subject = %identity.subject,
                permission = %P::PERMISSION,
                "permission denied"
            );
            metrics::counter!("mnemo_auth_denied_total", "permission" => P::PERMISSION.name())
                .increment(1);
            return Err(e);
        }
        let scope = identity.scope(parts.headers.get(USER_HEADER).map(|v| v.as_bytes()))?;
        Ok(Caller {
            identity,
            scope,
            _need: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_grants_by_role_and_scope() {
        let map = PermissionMap::default();
        let p = Principal {
            tenant: "t".into(),
            subject: "u".into(),
            kind: PrincipalKind::User,
            roles: vec![],
            scopes: vec!["Conversations.ReadWrite".into(), "Unknown".into()],
        };
        let g = map.grant(&p);
        assert!(g.contains(Permission::ConversationsRead));
        assert!(g.contains(Permission::ConversationsWrite));
        assert!(!g.contains(Permission::MemoryRead));
        assert!(!g.contains(Permission::Admin));
    }

    #[test]
    fn configured_map_rejects_unknown_names() {
        let mut m = HashMap::new();
        m.insert("Reader".to_owned(), vec!["memory.read".to_owned()]);
        let map = PermissionMap::from_names(&m).unwrap();
        assert_ne!(map, PermissionMap::default());
        m.insert("Bad".to_owned(), vec!["memory.everything".to_owned()]);
        assert!(PermissionMap::from_names(&m).is_err());
    }

    #[test]
    fn user_principals_act_only_for_themselves() {
        let id = Identity {
            tenant: TenantId::new("t").unwrap(),
            subject: "alice".into(),
            kind: CallerKind::User,
            permissions: Permissions::all(),
        };
        assert_eq!(id.scope(None).unwrap().user.as_deref(), Some("alice"));
        assert!(id.scope(None).unwrap().is_user_principal());
        assert!(id.scope(Some(b"alice")).is_ok());
        assert_eq!(
            id.scope(Some(b"bob")).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let app = Identity {
            kind: CallerKind::Application,
            ..id
        };
        assert_eq!(app.scope(None).unwrap().user, None);
        assert_eq!(
            app.scope(Some(b"bob")).unwrap().user.as_deref(),
            Some("bob")
        );
        assert!(!app.scope(Some(b"bob")).unwrap().is_user_principal());
    }
}
