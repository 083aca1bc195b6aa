//! Errors of the SQL engine: each says whose fault it is, so the HTTP and wire front ends
//! can map it to a status (or SQLSTATE) without parsing messages.

use datafusion::error::DataFusionError;
use mnemo_index::IndexError;
use mnemo_storage::StoreError;

/// A query that could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text is not valid SQL. The message names the line and column.
    #[error("{0}")]
    Syntax(String),
    /// A statement other than SELECT, WITH, EXPLAIN, SHOW or DESCRIBE, or more than one
    /// statement.
    #[error("{0}")]
    ReadOnly(String),
    /// The query refers to a table, column or function that does not exist, has mistyped
    /// arguments, or is otherwise invalid.
    #[error("{0}")]
    Invalid(String),
    /// A parameter cannot be bound (wrong count or an unsupported JSON value).
    #[error("{0}")]
    Param(String),
    /// The caller lacks the permission a table needs.
    #[error("reading {table} needs the {permission} permission")]
    Forbidden {
        /// The table.
        table: &'static str,
        /// The permission it needs.
        permission: &'static str,
    },
    /// The query ran past its time limit and was stopped.
    #[error("the query ran longer than the limit of {ms} ms and was stopped")]
    Timeout {
        /// The limit.
        ms: u64,
    },
    /// The query needed more memory than its limit.
    #[error("the query needed more memory than its limit of {limit_bytes} bytes: {detail}")]
    MemoryLimit {
        /// The limit.
        limit_bytes: usize,
        /// What ran out.
        detail: String,
    },
    /// Search inside SQL is not available (no search service), or the index failed.
    #[error(transparent)]
    Search(#[from] IndexError),
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A shard of a query over several shards could not be read (its owner is unreachable
    /// or moving): the query may succeed when retried.
    #[error("{0}")]
    Shard(String),
    /// A defect in the engine.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SqlError {
    /// A short, stable code for clients (the JSON error's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "sql_syntax_error",
            SqlError::ReadOnly(_) => "sql_read_only",
            SqlError::Invalid(_) => "sql_invalid",
            SqlError::Param(_) => "sql_invalid_param",
            SqlError::Forbidden { .. } => "forbidden",
            SqlError::Timeout { .. } => "sql_timeout",
            SqlError::MemoryLimit { .. } => "sql_memory_limit",
            SqlError::Search(_) => "sql_search_failed",
            SqlError::Store(_) => "store_error",
            SqlError::Shard(_) => "shard_unavailable",
            SqlError::Internal(_) => "internal_error",
        }
    }

    /// The PostgreSQL SQLSTATE closest to this error, for the wire protocol.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "42601",
            SqlError::ReadOnly(_) => "25006",
            SqlError::Invalid(m) if m.contains("not found") && m.contains("table") => "42P01",
            SqlError::Invalid(_) => "42000",
            SqlError::Param(_) => "22023",
            SqlError::Forbidden { .. } => "42501",
            SqlError::Timeout { .. } => "57014",
            SqlError::MemoryLimit { .. } => "53200",
            SqlError::Search(_) | SqlError::Store(_) => "58000",
            SqlError::Shard(_) => "57P03",
            SqlError::Internal(_) => "XX000",
        }
    }

    /// Classifies an error DataFusion returned, recovering ours from inside it.
    pub(crate) fn from_datafusion(e: DataFusionError, memory_limit: usize) -> SqlError {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<SqlError>() {
                Ok(ours) => *ours,
                Err(other) => match other.downcast::<StoreError>() {
                    Ok(store) => SqlError::Store(*store),
                    Err(other) => SqlError::Internal(other.to_string()),
                },
            },
            DataFusionError::Context(ctx, inner) => {
                match SqlError::from_datafusion(*inner, memory_limit) {
                    SqlError::Invalid(m) => SqlError::Invalid(format!("{ctx}: {m}")),
                    other => other,
                }
            }
            DataFusionError::Shared(inner) => {
                SqlError::from_datafusion(clone_shared(&inner), memory_limit)
            }
            DataFusionError::SQL(e, _) => SqlError::Syntax(e.to_string()),
            DataFusionError::Diagnostic(_, inner) => {
                SqlError::from_datafusion(*inner, memory_limit)
            }
            DataFusionError::Collection(mut errors) if !errors.is_empty() => {
                SqlError::from_datafusion(errors.swap_remove(0), memory_limit)
            }
            DataFusionError::ResourcesExhausted(m) => SqlError::MemoryLimit {
                limit_bytes: memory_limit,
                detail: m,
            },
            DataFusionError::Plan(m) => SqlError::Invalid(m),
            DataFusionError::NotImplemented(m) => SqlError::Invalid(format!("not supported: {m}")),
            e @ (DataFusionError::SchemaError(..)
            | DataFusionError::Configuration(_)
            | DataFusionError::Execution(_)
            | DataFusionError::ArrowError(..)) => SqlError::Invalid(e.strip_backtrace()),
            other => SqlError::Internal(other.strip_backtrace()),
        }
    }
}

/// A shared DataFusion error re-expressed as an owned one (its message is kept).
fn clone_shared(e: &std::sync::Arc<DataFusionError>) -> DataFusionError {
    match e.as_ref() {
        DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(m.clone()),
        DataFusionError::Plan(m) => DataFusionError::Plan(m.clone()),
        DataFusionError::External(inner) => match inner.downcast_ref::<SqlError>() {
            Some(SqlError::Timeout { ms }) => {
                DataFusionError::External(Box::new(SqlError::Timeout { ms: *ms }))
            }
            _ => DataFusionError::Execution(inner.to_string()),
        },
        other => DataFusionError::Execution(other.strip_backtrace()),
    }
}

impl From<SqlError> for DataFusionError {
    fn from(e: SqlError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
