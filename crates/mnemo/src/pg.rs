//! `serve --pg-listen`: the PostgreSQL wire protocol, authenticated like HTTP requests.

use anyhow::Context;
use futures::future::BoxFuture;
use mnemo_api::auth::{authenticate_credential, AuthConfig, Authenticator};
use mnemo_sql::{Access, SqlEngine};
use mnemo_storage::Scope;
use std::net::SocketAddr;
use std::sync::Arc;

/// The user name of a connection that acts for no user (an application over its whole
/// tenant). Any other name is the user the connection acts for.
pub const TENANT_WIDE_USER: &str = "mnemo";

/// Verifies a connection's password as a bearer token or API key, and its user name as the
/// acting user (`X-Mnemo-User`).
struct PgAuth {
    config: AuthConfig,
}

impl mnemo_pgwire::Authenticate for PgAuth {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<(Scope, Access), String>> {
        Box::pin(async move {
            let identity = authenticate_credential(&self.config, password)
                .await
                .map_err(|e| e.message)?;
            let acting = (!user.is_empty() && user != TENANT_WIDE_USER).then_some(user);
            let scope = identity
                .scope(acting.map(str::as_bytes))
                .map_err(|e| e.message)?;
            Ok((scope, mnemo_api::sql::sql_access(&identity)))
        })
    }
}

/// A running listener; dropping it stops accepting connections.
pub struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` and serves the wire protocol on it.
pub async fn start(
    addr: SocketAddr,
    engine: Arc<SqlEngine>,
    auth: &AuthConfig,
) -> anyhow::Result<Listener> {
    if matches!(auth.authenticator, Authenticator::None) && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--auth none is allowed only on a loopback address; --pg-listen {addr} is not one"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --pg-listen {addr}"))?;
    tracing::info!(listen = %listener.local_addr()?, "PostgreSQL protocol ready");
    let auth: Arc<dyn mnemo_pgwire::Authenticate> = Arc::new(PgAuth {
        config: auth.clone(),
    });
    Ok(Listener(tokio::spawn(mnemo_pgwire::serve(
        listener, engine, auth,
    ))))
}
