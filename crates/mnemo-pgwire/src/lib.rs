//! The PostgreSQL wire protocol in front of [`mnemo_sql::SqlEngine`]: `psql`, psycopg, JDBC
//! and BI tools connect with the password set to a bearer token or API key, and the
//! connection's user name naming the user the connection acts for (what `X-Mnemo-User` is
//! over HTTP).
//!
//! Startup asks for a cleartext password and verifies it through an [`Authenticate`] given
//! by the server (the same verification as HTTP requests). Every query of the connection then
//! runs with the verified scope. Simple and extended query protocols are served; statements
//! are read-only, and `BEGIN`/`COMMIT`/`ROLLBACK`/`SET`, which drivers send on their own, are
//! accepted and do nothing. There is no TLS: listen on loopback or a private network, or put
//! a TLS-terminating proxy in front.

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::sink::Sink;
use futures::{SinkExt, StreamExt};
use mnemo_sql::arrow::datatypes::{DataType, Schema, TimeUnit};
use mnemo_sql::datafusion::common::ScalarValue;
use mnemo_sql::{Access, SqlEngine, SqlError};
use mnemo_storage::Scope;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;

/// Verifies a connection's credentials: the user name and password of the startup. Returns
/// the scope the connection acts in and the tables it may read, or a message for the client.
pub trait Authenticate: Send + Sync + 'static {
    /// Verifies `password` (a token or API key) and the acting `user`.
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<(Scope, Access), String>>;
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Arc<SqlEngine>, auth: Arc<dyn Authenticate>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a Postgres connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = Arc::new(Connection {
            engine: engine.clone(),
            auth: auth.clone(),
            session: Arc::new(Mutex::new(None)),
        });
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, None, Handlers(handler)).await {
                tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
            }
        });
    }
}

/// The verified identity of a connection.
type Session = Option<(Scope, Access)>;

/// One connection's handlers and state.
struct Connection {
    engine: Arc<SqlEngine>,
    auth: Arc<dyn Authenticate>,
    session: Arc<Mutex<Session>>,
}

struct Handlers(Arc<Connection>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }
}

fn user_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn sql_error(e: &SqlError) -> PgWireError {
    user_error("ERROR", e.sqlstate(), e.to_string())
}

impl Connection {
    fn session(&self) -> PgWireResult<(Scope, Access)> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| user_error("FATAL", "28000", "the connection is not authenticated"))
    }
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                match self.auth.authenticate(&user, &pwd.password).await {
                    Ok(session) => {
                        *self.session.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(session);
                        let mut params = DefaultServerParameterProvider::default();
                        params.server_version = "15.0 (mnemo)".to_owned();
                        params.is_superuser = false;
                        params.default_transaction_read_only = true;
                        finish_authentication(client, &params).await?;
                    }
                    Err(message) => return Err(user_error("FATAL", "28P01", message)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A statement drivers send on their own, answered without running anything.
fn session_statement(sql: &str) -> Option<Response> {
    let word = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .to_ascii_uppercase();
    Some(match word.as_str() {
        "BEGIN" | "START" => Response::TransactionStart(Tag::new("BEGIN")),
        "COMMIT" | "END" => Response::TransactionEnd(Tag::new("COMMIT")),
        "ROLLBACK" | "ABORT" => Response::TransactionEnd(Tag::new("ROLLBACK")),
        "SET" | "RESET" | "DISCARD" | "DEALLOCATE" | "LISTEN" | "UNLISTEN" => {
            Response::Execution(Tag::new(&word))
        }
        _ => return None,
    })
}

/// A query's answer as a Postgres result: columns, then rows as batches arrive.
async fn respond(
    engine: &SqlEngine,
    (scope, access): (Scope, Access),
    sql: &str,
    params: Vec<ScalarValue>,
    format: &Format,
) -> PgWireResult<Response> {
    let answer = engine
        .query(scope, access, sql, params)
        .await
        .map_err(|e| sql_error(&e))?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&answer.schema, format, None)?);
    let rows_fields = fields.clone();
    let rows = answer
        .batches
        .map(move |batch| match batch {
            Ok(batch) => futures::stream::iter(
                encode_recordbatch(rows_fields.clone(), batch).collect::<Vec<_>>(),
            )
            .left_stream(),
            Err(e) => futures::stream::iter(vec![Err(sql_error(&e))]).right_stream(),
        })
        .flatten();
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session()?;
        let sql = query.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        if let Some(r) = session_statement(sql) {
            return Ok(vec![r]);
        }
        Ok(vec![
            respond(&self.engine, session, sql, Vec::new(), &Format::UnifiedText).await?,
        ])
    }
}

/// A prepared statement: its text and what it takes and returns.
#[derive(Clone, Debug)]
pub struct Prepared {
    sql: String,
    params: Vec<Option<DataType>>,
    schema: Option<Arc<Schema>>,
}

/// Parses and describes statements for the extended protocol.
pub struct Parser {
    engine: Arc<SqlEngine>,
    session: Arc<Mutex<Session>>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| user_error("FATAL", "28000", "the connection is not authenticated"))?;
        let sql = sql.trim().trim_end_matches(';').trim().to_owned();
        if sql.is_empty() || session_statement(&sql).is_some() {
            return Ok(Some(Prepared {
                sql,
                params: Vec::new(),
                schema: None,
            }));
        }
        let (scope, access) = session;
        let described = self
            .engine
            .describe(scope, access, &sql)
            .await
            .map_err(|e| sql_error(&e))?;
        Ok(Some(Prepared {
            sql,
            params: described.params,
            schema: Some(described.schema),
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .params
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| into_pg_type(t).ok())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => arrow_schema_to_pg_fields(
                schema,
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            None => Ok(Vec::new()),
        }
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A bound parameter as a constant. Text-format values are passed as text and converted by
/// the planner to the type the query expects; binary ones are decoded by their type.
fn parameter(portal: &Portal<Prepared>, i: usize, ty: &Type) -> PgWireResult<ScalarValue> {
    let Some(Some(raw)) = portal.parameters.get(i) else {
        return Ok(ScalarValue::Null);
    };
    let bad = || {
        user_error(
            "ERROR",
            "22P03",
            format!("parameter ${} is malformed", i + 1),
        )
    };
    if !portal.parameter_format.is_binary(i) {
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        return Ok(ScalarValue::Utf8(Some(text.to_owned())));
    }
    let be8 = |b: &[u8]| -> PgWireResult<[u8; 8]> { b.try_into().map_err(|_| bad()) };
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(raw.first().ok_or_else(bad)? != &0)),
        Type::INT2 => ScalarValue::Int64(Some(i64::from(i16::from_be_bytes(
            raw.as_ref().try_into().map_err(|_| bad())?,
        )))),
        Type::INT4 => ScalarValue::Int64(Some(i64::from(i32::from_be_bytes(
            raw.as_ref().try_into().map_err(|_| bad())?,
        )))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(be8(raw)?))),
        Type::FLOAT4 => ScalarValue::Float64(Some(f64::from(f32::from_be_bytes(
            raw.as_ref().try_into().map_err(|_| bad())?,
        )))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(be8(raw)?))),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = i64::from_be_bytes(be8(raw)?).saturating_add(PG_EPOCH_US);
            ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into()))
        }
        Type::TEXT | Type::VARCHAR | Type::UNKNOWN | Type::NAME | Type::BPCHAR => {
            ScalarValue::Utf8(Some(
                std::str::from_utf8(raw).map_err(|_| bad())?.to_owned(),
            ))
        }
        ref other => {
            return Err(user_error(
                "ERROR",
                "0A000",
                format!(
                    "parameter ${} of type {} in binary format is not supported: send it as text",
                    i + 1,
                    other.name()
                ),
            ))
        }
    })
}

/// The wire type of a parameter: the client's, else the one the planner inferred.
fn parameter_type(stored: &StoredStatement<Prepared>, i: usize) -> Type {
    stored
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .or_else(|| {
            stored
                .statement
                .params
                .get(i)
                .cloned()
                .flatten()
                .and_then(|t| {
                    let t = match t {
                        DataType::Timestamp(_, tz) => {
                            DataType::Timestamp(TimeUnit::Microsecond, tz)
                        }
                        t => t,
                    };
                    into_pg_type(&t).ok()
                })
        })
        .unwrap_or(Type::UNKNOWN)
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser {
            engine: self.engine.clone(),
            session: self.session.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session()?;
        let stmt = &portal.statement.statement;
        if stmt.sql.is_empty() {
            return Ok(Response::EmptyQuery);
        }
        if let Some(r) = session_statement(&stmt.sql) {
            return Ok(r);
        }
        let params = (0..portal.parameter_len())
            .map(|i| parameter(portal, i, &parameter_type(&portal.statement, i)))
            .collect::<PgWireResult<Vec<_>>>()?;
        respond(
            &self.engine,
            session,
            &stmt.sql,
            params,
            &portal.result_column_format,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_session_statements_are_answered_without_running() {
        assert!(matches!(
            session_statement("BEGIN"),
            Some(Response::TransactionStart(_))
        ));
        assert!(matches!(
            session_statement("commit;"),
            Some(Response::TransactionEnd(_))
        ));
        assert!(matches!(
            session_statement("SET extra_float_digits = 3"),
            Some(Response::Execution(_))
        ));
        assert!(session_statement("SELECT 1").is_none());
        assert!(session_statement("DELETE FROM items").is_none());
    }
}
