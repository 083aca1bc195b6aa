//! The on-disk format: segment files made of a header and a run of checksummed blocks.
//!
//! ```text
//! segment = header (32 bytes) · block* · zeros (the preallocated, unwritten rest)
//! header  = magic "MNEMOWAL" · version u32 · segment number u64 · writer epoch u64 · crc32 u32
//! block   = payload length u32 · crc32 u32 · block id u64 · payload
//! payload = row count u32 · row*
//! row     = seq u64 · kind u8 · flags u8 · key length u32 · key
//!           · [value length u32 · value]   (kind 0 value, 1 merge operand; 2 tombstone has none)
//!           · [create_ts i64] · [expire_ts i64]   (present when flag 1 / flag 2 is set)
//! ```
//!
//! All integers are little-endian. A block's checksum covers its length, its id and its
//! payload, so a block is either read whole or not at all. A header of zeros (the
//! preallocated tail), a checksum that does not match, or a length that runs past the end of
//! the file all mean "the segment ends here": that is how a torn write reads.

use bytes::Bytes;
use slatedb::{RowEntry, ValueDeletable};

/// Bytes before the first block of a segment.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes before a block's payload.
pub(crate) const BLOCK_HEADER_LEN: usize = 16;
const MAGIC: &[u8; 8] = b"MNEMOWAL";
const VERSION: u32 = 1;

const KIND_VALUE: u8 = 0;
const KIND_MERGE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const FLAG_CREATE_TS: u8 = 1;
const FLAG_EXPIRE_TS: u8 = 2;

/// The header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The segment's number (also its file name).
    pub(crate) number: u64,
    /// The SlateDB writer epoch of the process that created the segment.
    pub(crate) epoch: u64,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.number.to_le_bytes());
        out[20..28].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header; `None` if it is not a valid version-1 segment header.
    pub(crate) fn decode(buf: &[u8]) -> Option<SegmentHeader> {
        if buf.len() < SEGMENT_HEADER_LEN || &buf[0..8] != MAGIC {
            return None;
        }
        if crc32fast::hash(&buf[0..28]) != u32_at(buf, 28) || u32_at(buf, 8) != VERSION {
            return None;
        }
        Some(SegmentHeader {
            number: u64_at(buf, 12),
            epoch: u64_at(buf, 20),
        })
    }
}

/// Appends the rows of one write batch to a block payload under construction (without the
/// leading row count, which [`seal_block`] writes).
pub(crate) fn encode_rows(out: &mut Vec<u8>, rows: &[RowEntry]) {
    for row in rows {
        out.extend_from_slice(&row.seq.to_le_bytes());
        let (kind, value) = match &row.value {
            ValueDeletable::Value(v) => (KIND_VALUE, Some(v)),
            ValueDeletable::Merge(v) => (KIND_MERGE, Some(v)),
            ValueDeletable::Tombstone => (KIND_TOMBSTONE, None),
        };
        let flags = if row.create_ts.is_some() {
            FLAG_CREATE_TS
        } else {
            0
        } | if row.expire_ts.is_some() {
            FLAG_EXPIRE_TS
        } else {
            0
        };
        out.push(kind);
        out.push(flags);
        put_bytes(out, &row.key);
        if let Some(v) = value {
            put_bytes(out, v);
        }
        if let Some(ts) = row.create_ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(ts) = row.expire_ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are far below 4 GiB (SlateDB limits keys to 64 KiB, mnemo values to
    // a few MiB); a longer one would not fit in the length field.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a whole block (header and payload) to `out`.
pub(crate) fn seal_block(out: &mut Vec<u8>, id: u64, rows: u32, body: &[u8]) {
    let len = (4 + body.len()) as u32;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(&rows.to_le_bytes());
    hasher.update(body);
    let crc = hasher.finalize();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(body);
}

/// What a block header says, once its checksum has been verified against the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockInfo {
    /// The block's id (SlateDB's "WAL file id").
    pub(crate) id: u64,
    /// Offset of the block's header in the segment.
    pub(crate) offset: u64,
    /// Length of header plus payload.
    pub(crate) len: u64,
}

/// Reads the block at `offset` of `buf` (a whole segment, or its prefix). `None` when no
/// valid block starts there: zeros, a bad checksum, or a length past the end of `buf`.
pub(crate) fn read_block(buf: &[u8], offset: usize) -> Option<(BlockInfo, &[u8])> {
    let head = buf.get(offset..offset + BLOCK_HEADER_LEN)?;
    let len = u32_at(head, 0) as usize;
    if len < 4 {
        return None;
    }
    let payload = buf.get(offset + BLOCK_HEADER_LEN..offset + BLOCK_HEADER_LEN + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[0..4]);
    hasher.update(&head[8..16]);
    hasher.update(payload);
    if hasher.finalize() != u32_at(head, 4) {
        return None;
    }
    let info = BlockInfo {
        id: u64_at(head, 8),
        offset: offset as u64,
        len: (BLOCK_HEADER_LEN + len) as u64,
    };
    Some((info, payload))
}

/// A payload whose checksum matched but whose rows do not parse: corruption that the
/// checksum did not catch, or a format this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("WAL block {id} holds a malformed payload: {reason}")]
pub struct MalformedBlock {
    id: u64,
    reason: &'static str,
}

/// Decodes the rows of a verified block payload.
pub(crate) fn decode_rows(id: u64, payload: &[u8]) -> Result<Vec<RowEntry>, MalformedBlock> {
    let bad = |reason| MalformedBlock { id, reason };
    let mut cur = Cursor {
        buf: payload,
        at: 0,
    };
    let count = cur.u32().ok_or(bad("no row count"))?;
    let mut rows = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let seq = cur.u64().ok_or(bad("truncated row"))?;
        let kind = cur.u8().ok_or(bad("truncated row"))?;
        let flags = cur.u8().ok_or(bad("truncated row"))?;
        let key = cur.bytes().ok_or(bad("truncated key"))?;
        let value = match kind {
            KIND_VALUE => ValueDeletable::Value(cur.bytes().ok_or(bad("truncated value"))?),
            KIND_MERGE => ValueDeletable::Merge(cur.bytes().ok_or(bad("truncated value"))?),
            KIND_TOMBSTONE => ValueDeletable::Tombstone,
            _ => return Err(bad("unknown row kind")),
        };
        let create_ts = if flags & FLAG_CREATE_TS != 0 {
            Some(cur.u64().ok_or(bad("truncated timestamp"))? as i64)
        } else {
            None
        };
        let expire_ts = if flags & FLAG_EXPIRE_TS != 0 {
            Some(cur.u64().ok_or(bad("truncated timestamp"))? as i64)
        } else {
            None
        };
        rows.push(RowEntry {
            key,
            value,
            seq,
            create_ts,
            expire_ts,
        });
    }
    if cur.at != payload.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(rows)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32_at(b, 0))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64_at(b, 0))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n).map(Bytes::copy_from_slice)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, value: ValueDeletable, seq: u64) -> RowEntry {
        RowEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value,
            seq,
            create_ts: Some(seq as i64 * 10),
            expire_ts: seq.is_multiple_of(2).then_some(-5),
        }
    }

    #[test]
    fn rows_round_trip_through_a_block() {
        let rows = vec![
            row("a", ValueDeletable::Value(Bytes::from_static(b"1")), 7),
            row("b", ValueDeletable::Merge(Bytes::from_static(b"")), 7),
            row("", ValueDeletable::Tombstone, 8),
        ];
        let mut body = Vec::new();
        encode_rows(&mut body, &rows);
        let mut block = Vec::new();
        seal_block(&mut block, 42, rows.len() as u32, &body);
        let (info, payload) = read_block(&block, 0).unwrap();
        assert_eq!((info.id, info.len), (42, block.len() as u64));
        let back = decode_rows(42, payload).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!((&a.key, &a.value, a.seq), (&b.key, &b.value, b.seq));
            assert_eq!((a.create_ts, a.expire_ts), (b.create_ts, b.expire_ts));
        }
    }

    #[test]
    fn any_damage_to_a_block_makes_it_unreadable() {
        let mut body = Vec::new();
        encode_rows(
            &mut body,
            &[row("k", ValueDeletable::Value(Bytes::from_static(b"v")), 1)],
        );
        let mut block = Vec::new();
        seal_block(&mut block, 1, 1, &body);
        for cut in 0..block.len() {
            assert!(read_block(&block[..cut], 0).is_none(), "cut at {cut}");
        }
        for at in 0..block.len() {
            let mut bad = block.clone();
            bad[at] ^= 0x40;
            assert!(read_block(&bad, 0).is_none(), "flip at {at}");
        }
        assert!(read_block(&[0u8; 64], 0).is_none());
    }

    #[test]
    fn segment_headers_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            number: 9,
            epoch: 3,
        };
        let buf = h.encode();
        assert_eq!(SegmentHeader::decode(&buf), Some(h));
        let mut bad = buf;
        bad[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), None);
        assert_eq!(SegmentHeader::decode(&[0u8; 32]), None);
    }
}
