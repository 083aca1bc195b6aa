//! Query parameters: JSON values bound to `$1…` as typed constants, never spliced into the
//! text.

use crate::SqlError;
use datafusion::common::ScalarValue;
use serde_json::Value;

/// A JSON value as a parameter: strings, booleans, integers and floats as themselves, an
/// array of numbers as a vector (a list of floats, like `embedding`), an object as its JSON
/// text, `null` as NULL. The planner converts a value to the type the query expects at its
/// position (a string compared with `created_at` becomes a timestamp).
pub fn json_param(v: &Value) -> Result<ScalarValue, SqlError> {
    Ok(match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Value::Array(items) => {
            let mut vector = Vec::with_capacity(items.len());
            for item in items {
                // Vectors are f32, like stored embeddings.
                #[allow(clippy::cast_possible_truncation)]
                let x = item.as_f64().ok_or_else(|| {
                    SqlError::Param("an array parameter must hold only numbers (a vector)".into())
                })? as f32;
                vector.push(x);
            }
            crate::functions::vector_literal(&vector)
        }
        Value::Object(_) => ScalarValue::Utf8(Some(v.to_string())),
    })
}

/// The parameters converted to the types the plan expects at their positions (where the
/// planner inferred one).
pub(crate) fn typed(
    types: &std::collections::HashMap<String, Option<datafusion::arrow::datatypes::DataType>>,
    params: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>, SqlError> {
    if types.len() != params.len() {
        return Err(SqlError::Param(format!(
            "the query has {} parameters but {} values were given",
            types.len(),
            params.len()
        )));
    }
    params
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let name = format!("${}", i + 1);
            match types.get(&name).cloned().flatten() {
                Some(t) if !v.is_null() && v.data_type() != t => v.cast_to(&t).map_err(|_| {
                    SqlError::Param(format!("parameter {name}: {v} cannot be converted to {t}"))
                }),
                Some(t) if v.is_null() => {
                    ScalarValue::try_from(&t).map_err(|e| SqlError::Param(e.strip_backtrace()))
                }
                _ => Ok(v),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_become_typed_constants() {
        assert_eq!(json_param(&json!(3)).unwrap(), ScalarValue::Int64(Some(3)));
        assert_eq!(
            json_param(&json!(1.5)).unwrap(),
            ScalarValue::Float64(Some(1.5))
        );
        assert_eq!(
            json_param(&json!("a")).unwrap(),
            ScalarValue::Utf8(Some("a".into()))
        );
        assert_eq!(json_param(&json!(null)).unwrap(), ScalarValue::Null);
        assert!(matches!(
            json_param(&json!([1, 2])).unwrap(),
            ScalarValue::List(_)
        ));
        assert!(json_param(&json!(["a"])).is_err());
    }
}
