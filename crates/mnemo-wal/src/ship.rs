//! Shipping the log to a replica: what a copy of the log must hold to replay the same writes.
//!
//! A replica of a database with a local log holds, beside the database's objects, the valid
//! prefix of each segment (header and blocks, without the preallocated tail) and the `BASE`
//! record. Only the newest segment of a log is ever appended to, so the prefix of any older
//! segment is final. A prefix read while the writer appends ends at the last block written
//! whole, so a copy made of prefixes, segment by segment in number order and cut at the first
//! missing id, replays a prefix of the acknowledged writes.

use crate::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::segments;
use crate::Error;
use std::path::Path;

/// The name of the file recording the log's base (the id its first block follows).
pub const BASE_FILE: &str = "BASE";

/// The valid part of one segment.
#[derive(Clone, Debug)]
pub struct SegmentPrefix {
    /// The segment's number.
    pub number: u64,
    /// Its file name (`<number>.wal`, 20 digits).
    pub file_name: String,
    /// The header and every valid block, in file order: a segment file with the same content.
    pub bytes: Vec<u8>,
    /// The ids of the first and last valid blocks (`None`: no block yet).
    pub ids: Option<(u64, u64)>,
}

/// The numbers of the segments in `dir`, in order (none if `dir` does not exist).
pub fn segment_numbers(dir: &Path) -> Result<Vec<u64>, Error> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(segments::list(dir)?.into_iter().map(|(n, _)| n).collect())
}

/// Reads the valid prefix of segment `number` of the log in `dir`.
pub fn read_prefix(dir: &Path, number: u64) -> Result<SegmentPrefix, Error> {
    let path = segments::segment_path(dir, number);
    let mut buf = segments::read(&path)?;
    let scan = segments::scan_bytes(number, path, &buf);
    let header_ok = SegmentHeader::decode(&buf).is_some_and(|h| h.number == number);
    // A segment still being created (no valid header yet) has nothing to ship.
    let end = match scan.blocks.last() {
        Some(b) => (b.offset + b.len) as usize,
        None if header_ok => SEGMENT_HEADER_LEN,
        None => 0,
    };
    buf.truncate(end);
    Ok(SegmentPrefix {
        number,
        file_name: segments::segment_name(number),
        bytes: buf,
        ids: scan
            .blocks
            .first()
            .zip(scan.blocks.last())
            .map(|(f, l)| (f.id, l.id)),
    })
}

/// The log's base, if recorded (see RFC 0010): the id after which its blocks start.
pub fn read_base(dir: &Path) -> Result<Option<u64>, Error> {
    if !dir.exists() {
        return Ok(None);
    }
    segments::read_base(dir)
}

/// The id of the first block of a segment's bytes (a whole segment or a prefix of at least
/// its header and first block); `None` if it has none.
pub fn first_block_id(bytes: &[u8]) -> Option<u64> {
    crate::format::read_block(bytes, SEGMENT_HEADER_LEN).map(|(info, _)| info.id)
}
