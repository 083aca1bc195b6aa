//! Conversation items as the OpenAI Conversations API defines them: validation of the
//! `ResponseInputItemParam` union and normalisation into the stored form.

use crate::{ids, NewItem};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// An item that is not a valid `ResponseInputItemParam`: which request field, and why. The
/// API answers it as a 400 `invalid_request_error` naming `param`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ItemError {
    /// The request field at fault (`items[2].content[0].type`).
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

impl ItemError {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ItemError {
            param: param.into(),
            message: message.into(),
        }
    }
}

type ItemResult<T> = Result<T, ItemError>;

/// Largest vector accepted from a client, in dimensions.
pub const MAX_DIMENSIONS: usize = 4096;

/// Why a client-supplied vector was refused (the messages are the API's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    /// Not a JSON array of numbers.
    #[error("embedding must be an array of numbers")]
    NotAnArray,
    /// Empty, or longer than [`MAX_DIMENSIONS`].
    #[error("embedding must have 1-4096 numbers")]
    Length,
    /// A value is not a finite number.
    #[error("embedding values must be finite numbers")]
    NotFinite,
}

/// Parses a client-supplied vector: 1–[`MAX_DIMENSIONS`] finite numbers (as f32).
pub fn parse_vector(v: &Value) -> Result<Vec<f32>, VectorError> {
    let arr = v.as_array().ok_or(VectorError::NotAnArray)?;
    if arr.is_empty() || arr.len() > MAX_DIMENSIONS {
        return Err(VectorError::Length);
    }
    arr.iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .ok_or(VectorError::NotFinite)
        })
        .collect()
}

/// Most items in one create or append request.
pub const MAX_ITEMS_PER_REQUEST: usize = 20;

/// The JSON type a required field must have.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Arr,
    Obj,
    Bool,
    /// A string or an array of content parts (tool outputs).
    StrOrArr,
    /// Any JSON value except null.
    Any,
}

impl Kind {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Arr => v.is_array(),
            Kind::Obj => v.is_object(),
            Kind::Bool => v.is_boolean(),
            Kind::StrOrArr => v.is_string() || v.is_array(),
            Kind::Any => !v.is_null(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Arr => "an array",
            Kind::Obj => "an object",
            Kind::Bool => "a boolean",
            Kind::StrOrArr => "a string or an array",
            Kind::Any => "present",
        }
    }
}

use Kind::{Any, Arr, Bool, Obj, Str, StrOrArr};

/// An item type: its name, id prefix, required fields with their JSON types (besides `id`,
/// `status`, `type`), and whether a missing `status` is filled in as `completed`.
struct ItemType {
    name: &'static str,
    prefix: &'static str,
    required: &'static [(&'static str, Kind)],
    has_status: bool,
}

const fn t(
    name: &'static str,
    prefix: &'static str,
    required: &'static [(&'static str, Kind)],
    has_status: bool,
) -> ItemType {
    ItemType {
        name,
        prefix,
        required,
        has_status,
    }
}

/// Every item type of the SDK's `ResponseInputItemParam` union except `item_reference`.
const ITEM_TYPES: &[ItemType] = &[
    t(
        "message",
        "msg_",
        &[("role", Str), ("content", StrOrArr)],
        true,
    ),
    t(
        "function_call",
        "fc_",
        &[("call_id", Str), ("name", Str), ("arguments", Str)],
        true,
    ),
    t(
        "function_call_output",
        "fco_",
        &[("call_id", Str), ("output", StrOrArr)],
        true,
    ),
    t("reasoning", "rs_", &[("summary", Arr)], false),
    t("file_search_call", "fs_", &[("queries", Arr)], true),
    t("web_search_call", "ws_", &[("action", Obj)], true),
    t(
        "computer_call",
        "cu_",
        &[("call_id", Str), ("pending_safety_checks", Arr)],
        true,
    ),
    t(
        "computer_call_output",
        "cuo_",
        &[("call_id", Str), ("output", Obj)],
        true,
    ),
    t("image_generation_call", "ig_", &[("result", Any)], true),
    t(
        "code_interpreter_call",
        "ci_",
        &[("code", Any), ("container_id", Str), ("outputs", Any)],
        true,
    ),
    t(
        "local_shell_call",
        "lsh_",
        &[("action", Obj), ("call_id", Str)],
        true,
    ),
    t(
        "local_shell_call_output",
        "lsho_",
        &[("output", Str)],
        false,
    ),
    t(
        "shell_call",
        "sh_",
        &[("action", Obj), ("call_id", Str)],
        true,
    ),
    t(
        "shell_call_output",
        "sho_",
        &[("call_id", Str), ("output", Any)],
        true,
    ),
    t(
        "apply_patch_call",
        "apc_",
        &[("call_id", Str), ("operation", Obj)],
        true,
    ),
    t(
        "apply_patch_call_output",
        "apco_",
        &[("call_id", Str)],
        true,
    ),
    t("tool_search_call", "tsc_", &[("arguments", Any)], true),
    t("tool_search_output", "tso_", &[("tools", Arr)], true),
    t(
        "additional_tools",
        "adt_",
        &[("role", Str), ("tools", Arr)],
        false,
    ),
    t("configuration_update", "cfg_", &[], false),
    t("compaction", "cmp_", &[("encrypted_content", Str)], false),
    t("compaction_trigger", "cmpt_", &[], false),
    t(
        "mcp_list_tools",
        "mcpl_",
        &[("server_label", Str), ("tools", Arr)],
        false,
    ),
    t(
        "mcp_approval_request",
        "mcpr_",
        &[("server_label", Str), ("name", Str), ("arguments", Str)],
        false,
    ),
    t(
        "mcp_approval_response",
        "mcpa_",
        &[("approval_request_id", Str), ("approve", Bool)],
        false,
    ),
    t(
        "mcp_call",
        "mcp_",
        &[("server_label", Str), ("name", Str), ("arguments", Str)],
        false,
    ),
    t(
        "custom_tool_call",
        "ctc_",
        &[("call_id", Str), ("name", Str), ("input", Str)],
        false,
    ),
    t(
        "custom_tool_call_output",
        "ctco_",
        &[("call_id", Str), ("output", StrOrArr)],
        false,
    ),
    t(
        "program",
        "prg_",
        &[("call_id", Str), ("code", Str), ("fingerprint", Str)],
        false,
    ),
    t(
        "program_output",
        "prgo_",
        &[("call_id", Str), ("result", Any)],
        true,
    ),
];

const ROLES: &[&str] = &["user", "assistant", "system", "developer"];

/// Validates the `items` array of a request (1–20 items unless `allow_empty`) and turns each
/// into its stored form.
pub fn parse_items(items: Vec<Value>, allow_empty: bool) -> ItemResult<Vec<NewItem>> {
    if items.len() > MAX_ITEMS_PER_REQUEST {
        return Err(ItemError::new(
            "items",
            format!(
                "at most {MAX_ITEMS_PER_REQUEST} items per request, got {}",
                items.len()
            ),
        ));
    }
    if items.is_empty() && !allow_empty {
        return Err(ItemError::new("items", "at least one item is required"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| normalize(v, &format!("items[{i}]")))
        .collect()
}

/// Validates one item and normalises it (id, status, string message content).
fn normalize(item: Value, param: &str) -> ItemResult<NewItem> {
    let Value::Object(mut obj) = item else {
        return Err(ItemError::new(param, "an item must be a JSON object"));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) if obj.contains_key("role") => "message".to_string(),
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => {
            return Err(ItemError::new(format!("{param}.type"), "missing item type"))
        }
        Some(_) => {
            return Err(ItemError::new(
                format!("{param}.type"),
                "type must be a string",
            ))
        }
    };
    if kind == "item_reference" {
        return Err(ItemError::new(
            format!("{param}.type"),
            "item_reference is not supported: a conversation stores items, add the item itself",
        ));
    }
    let spec = ITEM_TYPES.iter().find(|t| t.name == kind).ok_or_else(|| {
        ItemError::new(
            format!("{param}.type"),
            format!("unknown item type {kind:?}"),
        )
    })?;
    for (field, want) in spec.required {
        match obj.get(*field) {
            None | Some(Value::Null) => {
                return Err(ItemError::new(
                    format!("{param}.{field}"),
                    format!("missing required field {field:?} for a {kind} item"),
                ))
            }
            Some(v) if !want.accepts(v) => {
                return Err(ItemError::new(
                    format!("{param}.{field}"),
                    format!("{field:?} of a {kind} item must be {}", want.name()),
                ))
            }
            Some(_) => {}
        }
    }
    obj.insert("type".into(), Value::String(kind.clone()));
    if kind == "message" {
        normalize_message(&mut obj, param)?;
    }
    default_item_fields(&kind, &mut obj);
    if spec.has_status && obj.get("status").is_none_or(Value::is_null) {
        obj.insert("status".into(), Value::String("completed".into()));
    }
    let (id, client_id) = match obj.get("id") {
        None | Some(Value::Null) => (ids::generate(spec.prefix), false),
        Some(Value::String(s)) if ids::is_valid_id(s) => (s.clone(), true),
        Some(_) => {
            return Err(ItemError::new(
                format!("{param}.id"),
                "id must be 1-128 characters of [A-Za-z0-9_-]",
            ))
        }
    };
    obj.insert("id".into(), Value::String(id.clone()));
    // A client-supplied embedding is stored beside the item, not inside it.
    let vector = obj
        .remove("embedding")
        .filter(|v| !v.is_null())
        .map(|v| {
            parse_vector(&v)
                .map_err(|e| ItemError::new(format!("{param}.embedding"), e.to_string()))
        })
        .transpose()?;
    let json = serde_json::to_vec(&obj)
        .map_err(|e| ItemError::new(param, format!("cannot encode item: {e}")))?;
    Ok(NewItem {
        id,
        client_id,
        json: Bytes::from(json),
        vector,
    })
}

fn normalize_message(obj: &mut Map<String, Value>, param: &str) -> ItemResult<()> {
    let role = match obj.get("role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
        _ => {
            return Err(ItemError::new(
                format!("{param}.role"),
                "role must be one of user, assistant, system, developer",
            ))
        }
    };
    let content = match obj.remove("content") {
        Some(Value::String(text)) if role == "assistant" => {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        }
        Some(Value::String(text)) => json!([{"type": "input_text", "text": text}]),
        Some(Value::Array(mut parts)) => {
            for (j, part) in parts.iter_mut().enumerate() {
                let Some(part) = part.as_object_mut() else {
                    return Err(part_type_error(param, j));
                };
                match part.get("type").and_then(Value::as_str).map(str::to_owned) {
                    Some(kind) => default_part_fields(&kind, part),
                    None => return Err(part_type_error(param, j)),
                }
            }
            Value::Array(parts)
        }
        _ => {
            return Err(ItemError::new(
                format!("{param}.content"),
                "content must be a string or an array of content parts",
            ))
        }
    };
    obj.insert("content".into(), content);
    Ok(())
}

/// Fills in the fields OpenAI's item schemas require that an item given by a client may
/// leave out (each nullable or with a fixed default), as OpenAI's own answers carry them.
fn default_item_fields(kind: &str, obj: &mut Map<String, Value>) {
    let null = || Value::Null;
    match kind {
        "shell_call" => {
            obj.entry("environment").or_insert_with(null);
            if let Some(action) = obj.get_mut("action").and_then(Value::as_object_mut) {
                action.entry("timeout_ms").or_insert_with(null);
                action.entry("max_output_length").or_insert_with(null);
            }
        }
        "shell_call_output" => {
            obj.entry("max_output_length").or_insert_with(null);
        }
        "tool_search_call" | "tool_search_output" => {
            obj.entry("call_id").or_insert_with(null);
            obj.entry("execution").or_insert_with(|| json!("server"));
        }
        _ => {}
    }
}

fn part_type_error(param: &str, j: usize) -> ItemError {
    ItemError::new(
        format!("{param}.content[{j}].type"),
        "each content part must be an object with a string type",
    )
}

/// Fills in what OpenAI's content part types require and OpenAI itself fills in when a client
/// leaves it out: an `output_text` part's `annotations` and `logprobs` (empty) and an
/// `input_image` part's `detail` (`auto`), so stored items parse with clients generated from
/// OpenAI's published schemas.
fn default_part_fields(kind: &str, part: &mut Map<String, Value>) {
    match kind {
        "output_text" => {
            part.entry("annotations").or_insert_with(|| json!([]));
            part.entry("logprobs").or_insert_with(|| json!([]));
        }
        "input_image" => {
            part.entry("detail").or_insert_with(|| json!("auto"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: Value) -> ItemResult<Value> {
        let it = parse_items(vec![v], false)?.remove(0);
        Ok(serde_json::from_slice(&it.json).unwrap())
    }

    #[test]
    fn string_content_becomes_parts() {
        let u = one(json!({"role": "user", "content": "hi"})).unwrap();
        assert_eq!(u["type"], "message");
        assert_eq!(u["content"], json!([{"type": "input_text", "text": "hi"}]));
        assert_eq!(u["status"], "completed");
        assert!(u["id"].as_str().unwrap().starts_with("msg_"));
        let a = one(json!({"type": "message", "role": "assistant", "content": "yo"})).unwrap();
        assert_eq!(a["content"][0]["type"], "output_text");
    }

    #[test]
    fn content_parts_get_the_fields_openai_requires() {
        let a = one(json!({"role": "assistant", "content": [
            {"type": "output_text", "text": "yo"},
            {"type": "output_text", "text": "kept", "annotations": [{"type": "x"}], "logprobs": [1]},
        ]}))
        .unwrap();
        assert_eq!(
            a["content"][0],
            json!({"type": "output_text", "text": "yo", "annotations": [], "logprobs": []})
        );
        assert_eq!(a["content"][1]["annotations"], json!([{"type": "x"}]));
        assert_eq!(a["content"][1]["logprobs"], json!([1]));
        let u = one(json!({"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/y.png"},
            {"type": "input_text", "text": "what is it?"},
        ]}))
        .unwrap();
        assert_eq!(u["content"][0]["detail"], "auto");
        assert_eq!(
            u["content"][1],
            json!({"type": "input_text", "text": "what is it?"})
        );
    }

    #[test]
    fn rejects_bad_items() {
        assert!(one(json!({"type": "nope"})).is_err());
        assert!(one(json!({"type": "item_reference", "id": "msg_1"})).is_err());
        assert!(one(json!({"role": "robot", "content": "x"})).is_err());
        assert!(one(json!({"type": "function_call", "name": "f"})).is_err());
        assert!(one(json!({"role": "user", "content": "x", "id": "a b"})).is_err());
        assert!(
            one(json!({"type": "function_call", "call_id": 1, "name": "f",
                            "arguments": "{}"}))
            .is_err()
        );
        assert!(
            one(json!({"type": "function_call", "call_id": "c", "name": "f",
                            "arguments": {"x": 1}}))
            .is_err()
        );
        assert!(one(json!({"type": "reasoning", "summary": "not a list"})).is_err());
        assert!(one(json!([1])).is_err());
        assert!(parse_items(vec![], false).is_err());
        assert!(parse_items(vec![json!({"role":"user","content":"x"}); 21], false).is_err());
    }

    #[test]
    fn keeps_other_fields_and_client_ids() {
        let f = one(
            json!({"type": "function_call", "call_id": "c1", "name": "f",
                           "arguments": "{}", "id": "fc_mine"}),
        )
        .unwrap();
        assert_eq!(f["id"], "fc_mine");
        assert_eq!(f["call_id"], "c1");
    }

    #[test]
    fn vectors_are_validated() {
        assert_eq!(
            parse_vector(&serde_json::json!([1, 2.5])),
            Ok(vec![1.0, 2.5])
        );
        assert_eq!(
            parse_vector(&serde_json::json!("x")),
            Err(VectorError::NotAnArray)
        );
        assert_eq!(
            parse_vector(&serde_json::json!([])),
            Err(VectorError::Length)
        );
        assert_eq!(
            parse_vector(&serde_json::json!([1, "a"])),
            Err(VectorError::NotFinite)
        );
        assert_eq!(
            parse_vector(&serde_json::json!([1e300])),
            Err(VectorError::NotFinite)
        );
    }
}
