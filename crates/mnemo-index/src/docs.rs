//! Search documents derived from stored objects: conversation items and memory values.

use mnemo_search::{Doc, Source};
use mnemo_storage::access::kv_owner;
use mnemo_storage::{ConversationRecord, KvEntry, StoreError, StoredItem, TenantId};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub use mnemo_storage::items::{parse_vector, VectorError, MAX_DIMENSIONS};

/// The text of an item's JSON, its text parts joined with newlines: message text (`text`,
/// `refusal`, `transcript`, a string `content`), function-call `arguments` and `output`,
/// reasoning `summary` text. Type tags and other fields are not text.
pub fn item_text(v: &Value) -> String {
    let mut text = String::new();
    text_parts(v, &mut text);
    text
}

/// The keys whose string values are an item's text, at any depth (see [`item_text`]).
pub const ITEM_TEXT_KEYS: [&str; 7] = [
    "text",
    "refusal",
    "transcript",
    "arguments",
    "output",
    "content",
    "summary",
];

/// The key under which nothing is an item's text (a vector).
pub const ITEM_NOT_TEXT_KEY: &str = "embedding";

/// Appends one text part to an item's text, after a newline unless it is the first.
pub fn push_text_part(out: &mut String, part: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(part);
}

fn text_parts(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| text_parts(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    (k, Value::String(s)) if ITEM_TEXT_KEYS.contains(&k) => push_text_part(out, s),
                    (ITEM_NOT_TEXT_KEY, _) => {}
                    (_, Value::Array(_) | Value::Object(_)) => text_parts(x, out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Collects the searchable text of a JSON value: every string under the keys that carry
/// content in OpenAI items (`text`, `content`, `arguments`, `output`, `refusal`,
/// `transcript`, `summary`), or every string of a memory object except `embedding`.
fn collect_text(v: &Value, all: bool, out: &mut String) {
    match v {
        Value::String(s) if all => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, all, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == "embedding" {
                    continue;
                }
                let content = matches!(
                    k.as_str(),
                    "text"
                        | "content"
                        | "arguments"
                        | "output"
                        | "refusal"
                        | "transcript"
                        | "summary"
                );
                collect_text(x, all || content, out);
            }
        }
        _ => {}
    }
}

fn string_metadata(m: &Map<String, Value>) -> BTreeMap<String, String> {
    m.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

/// The item's JSON. Items are stored as validated JSON objects, so one that does not parse
/// is corrupt ([`StoreError::Corrupt`], logged), never an empty document.
pub fn item_json(item: &StoredItem) -> Result<Value, StoreError> {
    serde_json::from_slice(&item.json)
        .map_err(|e| StoreError::corrupt_with(format!("item {}", item.id), e))
}

/// The search document of a stored item.
pub fn item_doc(
    tenant: &TenantId,
    rec: &ConversationRecord,
    item: &StoredItem,
) -> Result<Doc, StoreError> {
    let v = item_json(item)?;
    let mut text = String::new();
    collect_text(&v, false, &mut text);
    Ok(Doc {
        tenant: tenant.as_str().to_owned(),
        source: Source::Items,
        id: item.id.clone(),
        owner: rec.owner.clone(),
        conversation_id: Some(rec.id.clone()),
        role: v.get("role").and_then(Value::as_str).map(str::to_owned),
        created_at: item.created_at_ms / 1000,
        metadata: string_metadata(&rec.metadata),
        text,
        vector: item.vector.clone(),
        expires_at_ms: None,
    })
}

/// The search document of a memory value, if it is a JSON object (other values, JSON or
/// not, are not searchable: that is their meaning, not an error). Its `embedding` field, if
/// a valid vector, is the document's vector; it expires with the value.
pub fn memory_doc(tenant: &TenantId, entry: &KvEntry) -> Option<Doc> {
    let (key, rec) = (entry.key.as_str(), &entry.record);
    let v: Value = serde_json::from_slice(&rec.value).ok()?;
    let obj = v.as_object()?;
    let vector = obj.get("embedding").and_then(|e| parse_vector(e).ok());
    let mut text = String::new();
    collect_text(&v, true, &mut text);
    Some(Doc {
        tenant: tenant.as_str().to_owned(),
        source: Source::Memory,
        id: key.to_owned(),
        owner: kv_owner(key).filter(|o| !o.is_empty()).map(str::to_owned),
        conversation_id: None,
        role: None,
        created_at: rec.updated_at_ms / 1000,
        metadata: BTreeMap::new(),
        text,
        vector,
        expires_at_ms: entry.expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn item_text_is_the_text_parts_only() {
        let v = serde_json::json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "x"},
            {"type": "output_text", "text": "b", "annotations": []}]});
        assert_eq!(item_text(&v), "a\nb");
        let call = serde_json::json!({"type": "function_call", "name": "f", "arguments": "{}"});
        assert_eq!(item_text(&call), "{}");
        assert_eq!(item_text(&serde_json::json!({"content": "plain"})), "plain");
    }

    #[test]
    fn an_item_that_does_not_parse_is_corrupt_not_empty() {
        let rec = ConversationRecord {
            id: "conv_1".into(),
            created_at: 0,
            metadata: Map::new(),
            owner: None,
            last_seq: 1,
            last_item: None,
            updated_ms: None,
        };
        let mut item = StoredItem {
            id: "msg_1".into(),
            seq: 1,
            created_at_ms: 0,
            parent: None,
            json: Bytes::from_static(br#"{"role":"user","content":"hello"}"#),
            vector: None,
            vector_builtin: false,
        };
        let t = TenantId::default_tenant();
        let doc = item_doc(&t, &rec, &item).unwrap();
        assert_eq!(
            (doc.text.as_str(), doc.role.as_deref()),
            ("hello", Some("user"))
        );
        item.json = Bytes::from_static(b"{not json");
        assert!(matches!(
            item_doc(&t, &rec, &item),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
