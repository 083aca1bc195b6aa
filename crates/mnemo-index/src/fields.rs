//! Reads the fields SQL and exports take from an item's stored JSON (`type`, `role` and
//! `text`) without building a `serde_json::Value`: strings are borrowed from the stored
//! bytes where they have no escapes, and objects are flat lists rather than maps.
//!
//! `text` must equal what the search index extracts (`crate::item_text`, over a
//! `serde_json::Value`): the same keys, objects visited in key order, and the last of
//! duplicate keys winning, as a `Value` would have them.

use crate::{push_text_part, ITEM_NOT_TEXT_KEY, ITEM_TEXT_KEYS};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A JSON value whose strings borrow from the input where they can.
enum Json<'a> {
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
    /// A number, boolean or null: nothing an item column reads.
    Other,
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element()? {
            list.push(v);
        }
        Ok(Json::Array(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        // As a `serde_json::Map` holds them: in key order, the last duplicate kept.
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, earlier| later.0 == earlier.0);
        }
        Ok(Json::Object(entries))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// An object key, borrowed where it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor)? {
            Json::Str(s) => Ok(Key(s)),
            _ => Err(serde::de::Error::custom("an object key is not a string")),
        }
    }
}

/// The columns of one item read from its JSON.
pub struct ItemFields<'a> {
    /// `type`
    pub kind: Option<Cow<'a, str>>,
    /// `role`
    pub role: Option<Cow<'a, str>>,
    /// `text`, when asked for.
    pub text: Option<String>,
}

/// Reads `type`, `role` and (when `text`) the text of an item; `None` when the bytes are
/// not a JSON object.
pub fn read_fields(json: &[u8], text: bool) -> Option<ItemFields<'_>> {
    let Json::Object(entries) = serde_json::from_slice::<Json>(json).ok()? else {
        return None;
    };
    let field = |name: &str| {
        entries.iter().find_map(|(k, v)| match v {
            Json::Str(s) if k == name => Some(s.clone()),
            _ => None,
        })
    };
    let kind = field("type");
    let role = field("role");
    let text = text.then(|| {
        let mut out = String::new();
        for (k, v) in &entries {
            text_entry(k, v, &mut out);
        }
        out
    });
    Some(ItemFields { kind, role, text })
}

/// The text parts under one object entry, by the rule of `crate::item_text`.
fn text_entry(key: &str, v: &Json, out: &mut String) {
    match (key, v) {
        (k, Json::Str(s)) if ITEM_TEXT_KEYS.contains(&k) => push_text_part(out, s),
        (ITEM_NOT_TEXT_KEY, _) => {}
        (_, Json::Array(_) | Json::Object(_)) => text_parts(v, out),
        _ => {}
    }
}

fn text_parts(v: &Json, out: &mut String) {
    match v {
        Json::Array(list) => list.iter().for_each(|x| text_parts(x, out)),
        Json::Object(entries) => entries.iter().for_each(|(k, x)| text_entry(k, x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn reads_what_a_value_would_give() {
        let cases = [
            r#"{"content":[{"text":"hello","type":"input_text"}],"id":"msg_1","role":"user","type":"message"}"#,
            r#"{"type":"message","role":"assistant","content":[{"type":"output_text","text":"a \"quoted\"\nline é"},{"type":"refusal","refusal":"no"}]}"#,
            r#"{"type":"function_call","name":"f","arguments":"{\"x\":1}","call_id":"c"}"#,
            r#"{"type":"function_call_output","output":"42","z":{"content":"deep","embedding":"skip"}}"#,
            r#"{"type":"reasoning","summary":[{"text":"s1"},{"text":"s2"}],"content":null,"n":1.5,"b":true}"#,
            r#"{"role":"first","type":"x","role":"second","text":"a","text":"b"}"#,
            r#"{"type":"message","content":"plain string","embedding":[0.1,0.2]}"#,
            r#"{"z":"no text","a":{"output":{"text":"nested"}}}"#,
            r#"{"type":"message","content":[]}"#,
            r#"{}"#,
        ];
        for case in cases {
            let v: Value = serde_json::from_str(case).unwrap();
            let got = read_fields(case.as_bytes(), true).unwrap();
            assert_eq!(
                got.text.as_deref(),
                Some(crate::item_text(&v).as_str()),
                "{case}"
            );
            assert_eq!(
                got.kind.as_deref(),
                v.get("type").and_then(Value::as_str),
                "{case}"
            );
            assert_eq!(
                got.role.as_deref(),
                v.get("role").and_then(Value::as_str),
                "{case}"
            );
        }
        assert!(read_fields(b"[1]", true).is_none());
        assert!(read_fields(b"{", true).is_none());
        assert!(read_fields(br#"{"type":"message"}"#, false)
            .unwrap()
            .text
            .is_none());
    }
}
