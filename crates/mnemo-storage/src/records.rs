//! Encodings of stored values. Binary records start with a version byte; conversation
//! records and log entries are JSON ([`to_json`], [`from_json`]).

use crate::{Result, StoreError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest string in a binary record (ids, parents, content types): its length is a `u16`.
pub const MAX_RECORD_STRING_BYTES: usize = u16::MAX as usize;
/// Most dimensions of an item's vector: the count is a `u16`.
pub const MAX_VECTOR_DIMENSIONS: usize = u16::MAX as usize;

/// Encodes a JSON record. A failure is [`StoreError::Encode`], a server defect, never
/// reported as corrupt data.
pub(crate) fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        what,
        source: Box::new(e),
    })
}

/// Decodes a JSON record; a failure is logged and reported as [`StoreError::Corrupt`].
pub(crate) fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt_with(what, e))
}

const ITEM_V1: u8 = 1;
/// Like v1, plus an optional embedding after the parent.
const ITEM_V2: u8 = 2;
/// Like v2, plus one byte after the embedding saying where it came from (written only for
/// items whose embedding the server computed; every other item is still written as v2).
const ITEM_V3: u8 = 3;
/// `ITEM_V3` origin byte: the server's built-in embedder computed the vector.
const ORIGIN_BUILTIN: u8 = 1;
const KV_V1: u8 = 1;
/// Like v1, plus the expiry time (ms since the Unix epoch) after the update time: written for
/// values with a TTL, which the store expires itself (see `crate::expiry`).
const KV_V2: u8 = 2;

/// A conversation record (stored as JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConversationRecord {
    /// `conv_…`
    pub id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Client metadata (string values).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The end user owning the conversation, if created for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Sequence number of the newest item ever appended (0: none). Never reused.
    #[serde(default)]
    pub last_seq: u64,
    /// Id of the newest item at the time of the last append (the next item's parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_item: Option<String>,
    /// Time of the last change to the record (creation, metadata update or append),
    /// milliseconds since the Unix epoch. Absent in records written before it existed:
    /// [`ConversationRecord::updated_at_ms`] falls back to the creation time.
    #[serde(
        default,
        rename = "updated_at_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub updated_ms: Option<i64>,
}

impl ConversationRecord {
    /// Time of the last change to the record, milliseconds since the Unix epoch.
    pub fn updated_at_ms(&self) -> i64 {
        self.updated_ms
            .unwrap_or(self.created_at.saturating_mul(1000))
    }
}

/// A stored conversation item: envelope plus the item's JSON exactly as served.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredItem {
    /// Item id (also inside `json`).
    pub id: String,
    /// Position in the conversation (append order).
    pub seq: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The item this one follows (the previous item at append time), for message trees.
    pub parent: Option<String>,
    /// The item as a JSON object, encoded once at write time.
    pub json: Bytes,
    /// The item's embedding, if any (not part of `json`): the one the client attached, or
    /// one the server's built-in embedder computed from the item's text (`vector_builtin`).
    pub vector: Option<Vec<f32>>,
    /// True when `vector` was computed by the server (built-in embedder), not given by the
    /// client.
    pub vector_builtin: bool,
}

fn put_str(buf: &mut BytesMut, what: &str, s: &str) -> Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| {
        StoreError::Invalid(format!(
            "{what} is longer than {MAX_RECORD_STRING_BYTES} bytes"
        ))
    })?;
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

fn get_str(buf: &mut Bytes) -> Result<String> {
    if buf.remaining() < 2 {
        return Err(StoreError::corrupt("truncated string length"));
    }
    let n = buf.get_u16() as usize;
    if buf.remaining() < n {
        return Err(StoreError::corrupt("truncated string"));
    }
    String::from_utf8(buf.split_to(n).to_vec())
        .map_err(|e| StoreError::corrupt_with("string in a record", e))
}

impl StoredItem {
    /// Encodes the value stored under the item key (the seq is in the key). Fails with
    /// [`StoreError::Invalid`] for an id, parent or vector too long for the record.
    pub fn encode(&self) -> Result<Bytes> {
        let parent = self.parent.as_deref().unwrap_or("");
        let dims = self.vector.as_ref().map_or(0, Vec::len);
        let mut b =
            BytesMut::with_capacity(15 + self.id.len() + parent.len() + 4 * dims + self.json.len());
        let builtin = self.vector_builtin && dims > 0;
        b.put_u8(if builtin { ITEM_V3 } else { ITEM_V2 });
        b.put_i64(self.created_at_ms);
        put_str(&mut b, "item id", &self.id)?;
        put_str(&mut b, "parent id", parent)?;
        let dims = u16::try_from(dims).map_err(|_| {
            StoreError::Invalid(format!(
                "an item vector has at most {MAX_VECTOR_DIMENSIONS} dimensions"
            ))
        })?;
        b.put_u16(dims);
        for x in self.vector.iter().flatten() {
            b.put_f32_le(*x);
        }
        if builtin {
            b.put_u8(ORIGIN_BUILTIN);
        }
        b.put_slice(&self.json);
        Ok(b.freeze())
    }

    /// Decodes a stored item value; `seq` comes from the key.
    pub fn decode(seq: u64, mut v: Bytes) -> Result<Self> {
        let version = if v.remaining() >= 9 { v.get_u8() } else { 0 };
        if !matches!(version, ITEM_V1 | ITEM_V2 | ITEM_V3) {
            return Err(StoreError::corrupt(format!(
                "item record version {version}"
            )));
        }
        let created_at_ms = v.get_i64();
        let id = get_str(&mut v)?;
        let parent = get_str(&mut v)?;
        let mut vector = None;
        let mut vector_builtin = false;
        if version >= ITEM_V2 {
            if v.remaining() < 2 {
                return Err(StoreError::corrupt("truncated item vector"));
            }
            let dims = v.get_u16() as usize;
            if v.remaining() < 4 * dims {
                return Err(StoreError::corrupt("truncated item vector"));
            }
            if dims > 0 {
                vector = Some((0..dims).map(|_| v.get_f32_le()).collect());
            }
        }
        if version == ITEM_V3 {
            if v.remaining() < 1 {
                return Err(StoreError::corrupt("truncated item vector origin"));
            }
            vector_builtin = v.get_u8() == ORIGIN_BUILTIN && vector.is_some();
        }
        Ok(StoredItem {
            id,
            seq,
            created_at_ms,
            parent: (!parent.is_empty()).then_some(parent),
            json: v,
            vector,
            vector_builtin,
        })
    }
}

/// A key-value entry: metadata plus the raw value bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct KvRecord {
    /// Version tag, unique per write; rendered as the ETag.
    pub version: u64,
    /// Last write time, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// Media type given at write time.
    pub content_type: String,
    /// When the value expires, ms since the Unix epoch (values written with a TTL).
    pub expires_at_ms: Option<i64>,
    /// The value.
    pub value: Bytes,
}

impl KvRecord {
    /// Encodes the stored value. Fails with [`StoreError::Invalid`] for a content type too
    /// long for the record.
    pub fn encode(&self) -> Result<Bytes> {
        let mut b = BytesMut::with_capacity(27 + self.content_type.len() + self.value.len());
        b.put_u8(if self.expires_at_ms.is_some() {
            KV_V2
        } else {
            KV_V1
        });
        b.put_u64(self.version);
        b.put_i64(self.updated_at_ms);
        if let Some(at) = self.expires_at_ms {
            b.put_i64(at);
        }
        put_str(&mut b, "content type", &self.content_type)?;
        b.put_slice(&self.value);
        Ok(b.freeze())
    }

    /// Decodes a stored value.
    pub fn decode(mut v: Bytes) -> Result<Self> {
        let format = if v.remaining() >= 17 { v.get_u8() } else { 0 };
        if !matches!(format, KV_V1 | KV_V2) || (format == KV_V2 && v.remaining() < 24) {
            return Err(StoreError::corrupt("memory record version"));
        }
        let version = v.get_u64();
        let updated_at_ms = v.get_i64();
        let expires_at_ms = (format == KV_V2).then(|| v.get_i64());
        let content_type = get_str(&mut v)?;
        Ok(KvRecord {
            version,
            updated_at_ms,
            content_type,
            expires_at_ms,
            value: v,
        })
    }

    /// True once the value's own expiry time has passed.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The strong ETag, `"<16 hex digits>"`.
    pub fn etag(&self) -> String {
        Self::etag_of(self.version)
    }

    /// The ETag of a version.
    pub fn etag_of(version: u64) -> String {
        format!("\"{version:016x}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_round_trip() {
        let it = StoredItem {
            id: "msg_1".into(),
            seq: 7,
            created_at_ms: 1_700_000_000_123,
            parent: Some("msg_0".into()),
            json: Bytes::from_static(br#"{"id":"msg_1"}"#),
            vector: None,
            vector_builtin: false,
        };
        assert_eq!(StoredItem::decode(7, it.encode().unwrap()).unwrap(), it);
        let with_vector = StoredItem {
            vector: Some(vec![0.25, -1.5, 3.0]),
            ..it.clone()
        };
        assert_eq!(
            StoredItem::decode(7, with_vector.encode().unwrap()).unwrap(),
            with_vector
        );
        assert_eq!(with_vector.encode().unwrap()[0], ITEM_V2);
        // A server-computed vector is written as v3 and keeps its origin.
        let builtin = StoredItem {
            vector_builtin: true,
            ..with_vector.clone()
        };
        assert_eq!(builtin.encode().unwrap()[0], ITEM_V3);
        assert_eq!(
            StoredItem::decode(7, builtin.encode().unwrap()).unwrap(),
            builtin
        );
        // Without a vector the flag means nothing and the record stays v2.
        let no_vector = StoredItem {
            vector_builtin: true,
            ..it.clone()
        };
        assert_eq!(no_vector.encode().unwrap()[0], ITEM_V2);
        assert_eq!(
            StoredItem::decode(7, no_vector.encode().unwrap()).unwrap(),
            it
        );
        // Version-1 records (no vector) still decode.
        let mut v1 = BytesMut::new();
        v1.put_u8(ITEM_V1);
        v1.put_i64(it.created_at_ms);
        put_str(&mut v1, "id", "msg_1").unwrap();
        put_str(&mut v1, "parent", "msg_0").unwrap();
        v1.put_slice(&it.json);
        assert_eq!(StoredItem::decode(7, v1.freeze()).unwrap(), it);
        assert!(StoredItem::decode(7, Bytes::from_static(b"\x09")).is_err());
    }

    #[test]
    fn kv_round_trip() {
        let r = KvRecord {
            version: 0xdead_beef,
            updated_at_ms: 5,
            content_type: "text/plain".into(),
            expires_at_ms: None,
            value: Bytes::from((0..=255u8).collect::<Vec<_>>()),
        };
        assert_eq!(KvRecord::decode(r.encode().unwrap()).unwrap(), r);
        let expiring = KvRecord {
            expires_at_ms: Some(1_765_000_000_000),
            ..r.clone()
        };
        assert_eq!(expiring.encode().unwrap()[0], KV_V2);
        assert_eq!(
            KvRecord::decode(expiring.encode().unwrap()).unwrap(),
            expiring
        );
        assert!(expiring.expired(1_765_000_000_000) && !expiring.expired(1_764_999_999_999));
        assert_eq!(r.etag(), "\"00000000deadbeef\"");
        // Lengths that do not fit the record are refused, not truncated.
        let long = KvRecord {
            content_type: "x".repeat(MAX_RECORD_STRING_BYTES + 1),
            ..r
        };
        assert!(matches!(long.encode(), Err(StoreError::Invalid(_))));
        let wide = StoredItem {
            id: "msg_1".into(),
            seq: 1,
            created_at_ms: 0,
            parent: None,
            json: Bytes::new(),
            vector: Some(vec![0.0; MAX_VECTOR_DIMENSIONS + 1]),
            vector_builtin: false,
        };
        assert!(matches!(wide.encode(), Err(StoreError::Invalid(_))));
    }
}
