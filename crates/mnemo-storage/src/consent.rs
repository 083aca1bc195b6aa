//! Research consent: whether a user's history may go into research exports.
//!
//! A record lives under `t \0 <tenant> \0 r <user>`. A user without one is decided by the
//! tenant's policy (opt-in or opt-out), which the export applies; the store only keeps what
//! was said and when.

use crate::changelog::{ChangeEntry, ChangeOp};
use crate::clock::now_ms;
use crate::engine::prefix_range;
use crate::ids::{Scope, TenantId};
use crate::records::{from_json, to_json};
use crate::view::{Decode, ReadView, Rows};
use crate::{keys, Result, Store};
use serde::{Deserialize, Serialize};
use slatedb::WriteBatch;

/// What a user said about research use of their history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Consent {
    /// The user.
    pub user: String,
    /// True: their history may be exported for research.
    pub research: bool,
    /// When it was last set, milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

impl Store {
    /// Records `user`'s research consent, with a [`ChangeOp::ConsentSet`] change-log entry in the
    /// same write, and waits until it is durable.
    pub async fn set_consent(
        &self,
        tenant: &TenantId,
        user: &str,
        research: bool,
    ) -> Result<Consent> {
        // The same rule as every user id.
        Scope::user(tenant.clone(), user)?;
        let consent = Consent {
            user: user.to_owned(),
            research,
            updated_ms: now_ms(),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            keys::consent(tenant, user),
            to_json("consent record", &consent)?,
        );
        let entry = ChangeEntry::new(ChangeOp::ConsentSet { research }, Some(user.to_owned()));
        self.change_log()
            .write(tenant, batch, vec![entry])
            .await?
            .durable()
            .await?;
        Ok(consent)
    }

    /// `user`'s research consent, if they ever gave or refused it.
    pub async fn consent(&self, tenant: &TenantId, user: &str) -> Result<Option<Consent>> {
        match self.engine.get(&keys::consent(tenant, user)).await? {
            Some(v) => from_json("consent record", &v).map(Some),
            None => Ok(None),
        }
    }
}

impl ReadView {
    /// `user`'s research consent as of the view, if they ever gave or refused it.
    pub async fn consent(&self, tenant: &TenantId, user: &str) -> Result<Option<Consent>> {
        match self.get(&keys::consent(tenant, user)).await? {
            Some(v) => from_json("consent record", &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every consent record of the tenant, in user order, as of the view.
    pub async fn consents(&self, tenant: &TenantId) -> Result<Rows<Consent>> {
        let decode: Decode<Consent> =
            Box::new(|kv| from_json("consent record", &kv.value).map(Some));
        let range = prefix_range(keys::space(tenant, keys::Space::Consent));
        self.rows(range, None, decode).await
    }
}
