//! Which users' history an export may include: each user's own answer, or the tenant's
//! policy for users who never gave one.

use mnemo_storage::Consent;

/// The policy for users without a consent record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsentPolicy {
    /// Nothing of a user is exported until they say yes.
    #[default]
    OptIn,
    /// A user is exported unless they say no.
    OptOut,
}

impl ConsentPolicy {
    /// `opt-in` or `opt-out`.
    pub fn name(self) -> &'static str {
        match self {
            ConsentPolicy::OptIn => "opt-in",
            ConsentPolicy::OptOut => "opt-out",
        }
    }

    /// The policy of a name (`opt-in`, `opt-out`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "opt-in" => Some(ConsentPolicy::OptIn),
            "opt-out" => Some(ConsentPolicy::OptOut),
            _ => None,
        }
    }

    /// Whether a user with this record (or none) may be exported.
    pub fn allows(self, record: Option<&Consent>) -> bool {
        match record {
            Some(c) => c.research,
            None => self == ConsentPolicy::OptOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_answer_wins_over_the_policy() {
        let yes = Consent {
            user: "a".into(),
            research: true,
            updated_ms: 0,
        };
        let no = Consent {
            research: false,
            ..yes.clone()
        };
        for p in [ConsentPolicy::OptIn, ConsentPolicy::OptOut] {
            assert!(p.allows(Some(&yes)));
            assert!(!p.allows(Some(&no)));
            assert_eq!(ConsentPolicy::parse(p.name()), Some(p));
        }
        assert!(!ConsentPolicy::OptIn.allows(None));
        assert!(ConsentPolicy::OptOut.allows(None));
    }
}
