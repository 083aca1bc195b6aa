//! Parsing and the read-only rule: one statement, and only SELECT, WITH, EXPLAIN, SHOW or
//! DESCRIBE. Named arguments of `search(...)` are put in their positions here, since the
//! planner takes table-function arguments by position.

use crate::functions::SEARCH_ARGS;
use crate::SqlError;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, TableFactor, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use std::ops::ControlFlow;

/// Parses one read-only statement.
pub(crate) fn parse(sql: &str) -> Result<Statement, SqlError> {
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}).map_err(|e| match e {
            datafusion::error::DataFusionError::SQL(e, _) => SqlError::Syntax(e.to_string()),
            e => SqlError::Syntax(e.strip_backtrace()),
        })?;
    if statements.len() != 1 {
        return Err(SqlError::ReadOnly(format!(
            "send exactly one statement per query (got {})",
            statements.len()
        )));
    }
    let Some(mut statement) = statements.pop_front() else {
        return Err(SqlError::ReadOnly("the query is empty".into()));
    };
    check_read_only(&statement)?;
    if let Statement::Statement(s) = &mut statement {
        let _ = s.visit(&mut NamedSearchArgs);
    }
    if let Statement::Explain(e) = &mut statement {
        if let Statement::Statement(s) = e.statement.as_mut() {
            let _ = s.visit(&mut NamedSearchArgs);
        }
    }
    Ok(statement)
}

fn check_read_only(statement: &Statement) -> Result<(), SqlError> {
    let refuse = |what: &str| {
        Err(SqlError::ReadOnly(format!(
            "SQL here is read-only: only SELECT, WITH, EXPLAIN, SHOW and DESCRIBE are allowed, not {what}"
        )))
    };
    match statement {
        Statement::Statement(s) => match s.as_ref() {
            ast::Statement::Query(_)
            | ast::Statement::ShowTables { .. }
            | ast::Statement::ShowColumns { .. }
            | ast::Statement::ShowVariable { .. }
            | ast::Statement::ExplainTable { .. } => Ok(()),
            ast::Statement::Explain {
                statement, analyze, ..
            } => {
                let _ = analyze;
                check_read_only(&Statement::Statement(statement.clone()))
            }
            other => {
                let text = other.to_string();
                let word = text.split_whitespace().next().unwrap_or("this statement");
                refuse(&word.to_uppercase())
            }
        },
        Statement::Explain(e) => check_read_only(&e.statement),
        Statement::CreateExternalTable(_) => refuse("CREATE EXTERNAL TABLE"),
        Statement::CopyTo(_) => refuse("COPY"),
        Statement::Reset(_) => refuse("RESET"),
    }
}

/// Rewrites `search(q, mode => 'x', top_k => 5)` to positional arguments.
struct NamedSearchArgs;

fn null_arg() -> FunctionArg {
    FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Value(
        ValueWithSpan::from(Value::Null),
    )))
}

impl VisitorMut for NamedSearchArgs {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let is_search = name.0.len() == 1
            && name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("search"));
        if !is_search {
            return ControlFlow::Continue(());
        }
        let mut positional: Vec<Option<FunctionArg>> = vec![None; SEARCH_ARGS.len()];
        let mut next = 0;
        for arg in std::mem::take(&mut args.args) {
            let named = match &arg {
                FunctionArg::Named { name, arg, .. } => Some((name.value.clone(), arg.clone())),
                FunctionArg::ExprNamed {
                    name: ast::Expr::Identifier(name),
                    arg,
                    ..
                } => Some((name.value.clone(), arg.clone())),
                _ => None,
            };
            match named {
                Some((name, value)) => {
                    match SEARCH_ARGS
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(&name))
                    {
                        Some(i) => positional[i] = Some(FunctionArg::Unnamed(value)),
                        // Left as it was: the planner reports it.
                        None => {
                            args.args.push(arg);
                            return ControlFlow::Continue(());
                        }
                    }
                }
                None => {
                    if let Some(slot) = positional.get_mut(next) {
                        *slot = Some(arg);
                    }
                    next += 1;
                }
            }
        }
        let last = positional
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        args.args = positional
            .into_iter()
            .take(last)
            .map(|a| a.unwrap_or_else(null_arg))
            .collect();
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_allowed() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "DESCRIBE items",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "DELETE FROM items",
            "INSERT INTO items VALUES (1)",
            "CREATE TABLE x (a int)",
            "DROP TABLE items",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN DELETE FROM items",
            "SELECT 1; SELECT 2",
            "COPY items TO '/tmp/x'",
        ] {
            assert!(
                matches!(parse(bad), Err(SqlError::ReadOnly(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert!(matches!(parse("SELEC 1"), Err(SqlError::Syntax(_))));
    }

    #[test]
    fn named_search_arguments_become_positional() {
        let s = parse("SELECT * FROM search('x', top_k => 3, source => 'memory')").unwrap();
        let text = s.to_string();
        assert!(text.contains("search('x', NULL, 3, 'memory')"), "{text}");
    }
}
