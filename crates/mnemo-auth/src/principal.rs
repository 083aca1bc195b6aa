//! Who a verified token speaks for.

use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// Longest accepted tenant or subject, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Whether a principal is a signed-in user or an application acting on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A user (delegated) token: it carries `scp`, or no `roles`. It acts for its own subject.
    User,
    /// An application (client-credentials) token: it carries `roles` and no `scp`.
    Application,
}

/// The identity a verified token grants.
///
/// Built only by [`crate::JwtValidator`] after the signature and every claim check passed,
/// so `tenant` always comes from a verified `tid` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The tenant: the `tid` claim.
    pub tenant: String,
    /// The subject: the `oid` claim, or `sub` when there is no `oid`.
    pub subject: String,
    /// User or application (see [`PrincipalKind`]).
    pub kind: PrincipalKind,
    /// The `roles` claim (app roles), empty when absent.
    pub roles: Vec<String>,
    /// The `scp` claim split on spaces (delegated scopes), empty when absent.
    pub scopes: Vec<String>,
}

impl Principal {
    /// True for an application principal.
    pub fn is_application(&self) -> bool {
        self.kind == PrincipalKind::Application
    }

    /// True when `roles` contains `role` (exact, case-sensitive).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// True when `scopes` contains `scope` (exact, case-sensitive).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A claim that may be one string or an array of strings (`aud`, `roles`, `scp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn contains(&self, wanted: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == wanted,
            OneOrMany::Many(v) => v.iter().any(|s| s == wanted),
        }
    }

    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The claims this crate reads. Unknown claims are ignored; a known claim of the wrong JSON
/// type makes the token malformed.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: Option<String>,
    pub(crate) aud: Option<OneOrMany>,
    pub(crate) exp: Option<serde_json::Number>,
    pub(crate) nbf: Option<serde_json::Number>,
    pub(crate) tid: Option<String>,
    pub(crate) oid: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) roles: Option<OneOrMany>,
    pub(crate) scp: Option<OneOrMany>,
}

/// A NumericDate as whole seconds (fractions dropped); `None` when out of range.
pub(crate) fn numeric_date(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    if f.is_finite() && f.abs() < 1e15 {
        // Truncation toward zero is intended: JWT times are whole seconds.
        #[allow(clippy::cast_possible_truncation)]
        Some(f.floor() as i64)
    } else {
        None
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

impl Claims {
    /// The principal these (already verified) claims describe.
    pub(crate) fn into_principal(self) -> Result<Principal, AuthError> {
        let tenant = match self.tid {
            Some(t) if !t.is_empty() => t,
            _ => return Err(AuthError::MissingTenant),
        };
        if !valid_id(&tenant) {
            return Err(AuthError::Malformed("tid claim is not a valid tenant id"));
        }
        let subject = match self.oid.filter(|s| !s.is_empty()).or(self.sub) {
            Some(s) if !s.is_empty() => s,
            _ => return Err(AuthError::MissingSubject),
        };
        if !valid_id(&subject) {
            return Err(AuthError::Malformed("oid/sub claim is not a valid subject"));
        }
        let kind = if self.roles.is_some() && self.scp.is_none() {
            PrincipalKind::Application
        } else {
            PrincipalKind::User
        };
        let roles = self.roles.map(OneOrMany::into_vec).unwrap_or_default();
        let scopes = match self.scp {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(Principal {
            tenant,
            subject,
            kind,
            roles,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn user_with_scopes() {
        let p = claims(serde_json::json!({"tid": "t1", "oid": "u1", "sub": "s1", "scp": "Conversations.Read  Memory.Read"}))
            .into_principal()
            .unwrap();
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(p.subject, "u1");
        assert_eq!(p.scopes, vec!["Conversations.Read", "Memory.Read"]);
        assert!(p.roles.is_empty());
    }

    #[test]
    fn application_has_roles_and_no_scp() {
        let p = claims(serde_json::json!({"tid": "t1", "sub": "app", "roles": ["Admin"]}))
            .into_principal()
            .unwrap();
        assert_eq!(p.kind, PrincipalKind::Application);
        assert_eq!(p.subject, "app");
        assert!(p.has_role("Admin"));
        // roles together with scp: a user token with app roles assigned.
        let p =
            claims(serde_json::json!({"tid": "t1", "oid": "u", "roles": ["Admin"], "scp": "x"}))
                .into_principal()
                .unwrap();
        assert_eq!(p.kind, PrincipalKind::User);
    }

    #[test]
    fn tenant_and_subject_required_and_sane() {
        let e = claims(serde_json::json!({"oid": "u"})).into_principal();
        assert_eq!(e, Err(AuthError::MissingTenant));
        let e = claims(serde_json::json!({"tid": "", "oid": "u"})).into_principal();
        assert_eq!(e, Err(AuthError::MissingTenant));
        let e = claims(serde_json::json!({"tid": "t"})).into_principal();
        assert_eq!(e, Err(AuthError::MissingSubject));
        let e = claims(serde_json::json!({"tid": "a\u{0}b", "oid": "u"})).into_principal();
        assert!(matches!(e, Err(AuthError::Malformed(_))));
        // empty oid falls back to sub
        let p = claims(serde_json::json!({"tid": "t", "oid": "", "sub": "s"}))
            .into_principal()
            .unwrap();
        assert_eq!(p.subject, "s");
    }

    #[test]
    fn numeric_dates() {
        let n = |v: serde_json::Value| numeric_date(&serde_json::from_value(v).unwrap());
        assert_eq!(n(serde_json::json!(17)), Some(17));
        assert_eq!(n(serde_json::json!(17.9)), Some(17));
        assert_eq!(n(serde_json::json!(1e300)), None);
    }
}
