//! Snapshot format: the whole index (catalog, vector blocks, ANN graphs, tantivy files) as one
//! self-checking byte string.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "MNEMOIDX" (8) | version u32 | body length u64 | crc32 of body u32 | body
//! ```
//!
//! The body is a sequence of length-prefixed fields written by [`Enc`] and read back by
//! [`Dec`], which checks every length against what is left, so a truncated or corrupt body is
//! an error, never a panic or a huge allocation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::ann::{Ann, Quantization};
use crate::catalog::{Block, Catalog, DocEntry, Handle, TenantState};
use crate::simd;
use crate::text::TextIndex;
use crate::types::{SearchConfig, Source};
use crate::SearchError;

/// First bytes of every snapshot.
pub(crate) const MAGIC: &[u8; 8] = b"MNEMOIDX";
/// Format version written; [`open`] refuses any other (3: documents carry their expiry).
pub(crate) const VERSION: u32 = 3;
const HEADER: usize = 8 + 4 + 8 + 4;
/// Graph tag of snapshots written before graphs carried their i8 scale (read, then rebuilt).
const GRAPH_UNSCALED: u8 = 1;
/// Graph tag: the i8 scale (f32 bits in a u64), then the graph.
const GRAPH_WITH_SCALE: u8 = 2;

pub(crate) fn bad(msg: impl Into<String>) -> SearchError {
    SearchError::BadSnapshot(msg.into())
}

/// Appends fields to a byte buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    /// A buffer with room for the header, filled in by [`Enc::finish`].
    pub fn new() -> Self {
        Enc {
            buf: vec![0; HEADER],
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn len(&mut self, v: usize) {
        self.u64(v as u64);
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    /// A length then the values (bulk copy, no per-value branching).
    pub fn u64s(&mut self, v: &[u64]) {
        self.len(v.len());
        let start = self.buf.len();
        self.buf.resize(start + v.len() * 8, 0);
        for (dst, x) in self.buf[start..].chunks_exact_mut(8).zip(v) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
    }

    /// A length then the values (bulk copy).
    pub fn f32s(&mut self, v: &[f32]) {
        self.len(v.len());
        let start = self.buf.len();
        self.buf.resize(start + v.len() * 4, 0);
        for (dst, x) in self.buf[start..].chunks_exact_mut(4).zip(v) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
    }

    /// Writes the header (magic, version, length, checksum) and returns the snapshot.
    pub fn finish(mut self) -> Vec<u8> {
        let body_len = (self.buf.len() - HEADER) as u64;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        self.buf[0..8].copy_from_slice(MAGIC);
        self.buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        self.buf[12..20].copy_from_slice(&body_len.to_le_bytes());
        self.buf[20..24].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Checks the header and checksum of a snapshot and returns a reader over its body.
pub(crate) fn open(bytes: &[u8]) -> Result<Dec<'_>, SearchError> {
    if bytes.len() < HEADER || &bytes[0..8] != MAGIC {
        return Err(bad("not a mnemo search snapshot"));
    }
    let mut h = Dec {
        buf: &bytes[8..HEADER],
        pos: 0,
    };
    let version = h.u32()?;
    if version != VERSION {
        return Err(bad(format!(
            "snapshot format version {version} (this build reads {VERSION})"
        )));
    }
    let len = h.u64()?;
    let crc = h.u32()?;
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(bad(format!(
            "snapshot body is {} bytes, header says {len}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != crc {
        return Err(bad("snapshot checksum mismatch"));
    }
    Ok(Dec { buf: body, pos: 0 })
}

/// Reads fields written by [`Enc`].
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SearchError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad("snapshot truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SearchError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, SearchError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, SearchError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, SearchError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, SearchError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_size` bytes long: refused if the rest of the
    /// snapshot cannot hold that many (so a corrupt count never triggers a huge allocation).
    pub fn count(&mut self, min_size: usize) -> Result<usize, SearchError> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            return Err(bad("snapshot truncated (count too large)"));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], SearchError> {
        let n = self.count(1)?;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, SearchError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| bad("snapshot string is not UTF-8"))
    }

    pub fn opt_str(&mut self) -> Result<Option<&'a str>, SearchError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            t => Err(bad(format!("bad option tag {t}"))),
        }
    }

    pub fn u64s(&mut self) -> Result<Vec<u64>, SearchError> {
        let n = self.count(8)?;
        let raw = self.take(n * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    pub fn f32s(&mut self) -> Result<Vec<f32>, SearchError> {
        let n = self.count(4)?;
        let raw = self.take(n * 4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<(), SearchError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(bad("trailing bytes after the snapshot body"))
        }
    }
}

fn quantization_tag(q: Quantization) -> u8 {
    match q {
        Quantization::F32 => 0,
        Quantization::F16 => 1,
        Quantization::I8 => 2,
    }
}

fn quantization_from(tag: u8) -> Result<Quantization, SearchError> {
    Ok(match tag {
        0 => Quantization::F32,
        1 => Quantization::F16,
        2 => Quantization::I8,
        t => return Err(bad(format!("unknown quantisation tag {t}"))),
    })
}

fn source_from(tag: u8) -> Result<Source, SearchError> {
    Ok(match tag {
        0 => Source::Items,
        1 => Source::Memory,
        t => return Err(bad(format!("unknown source tag {t}"))),
    })
}

const NO_SLOT: u64 = u64::MAX;

/// Writes the body: quantisation, next handle, tenant dimensions, then per tenant its documents
/// (attributes), vector blocks (f32), ANN pending set and graph; then the tantivy files.
/// The id maps (by id, owner, conversation) are derived from the documents on restore.
pub(crate) fn encode(
    e: &mut Enc,
    cat: &Catalog,
    dims: &HashMap<String, usize>,
    quantization: Quantization,
    files: &[(String, Vec<u8>)],
) -> Result<(), SearchError> {
    e.u8(quantization_tag(quantization));
    e.u64(cat.next_handle);
    let mut dl: Vec<(&String, &usize)> = dims.iter().collect();
    dl.sort();
    e.len(dl.len());
    for (t, d) in dl {
        e.str(t);
        e.len(*d);
    }
    let mut per_tenant: HashMap<&str, Vec<(Handle, &DocEntry)>> = HashMap::new();
    for (h, d) in &cat.docs {
        per_tenant.entry(&d.tenant).or_default().push((*h, d));
    }
    e.len(cat.tenants.len());
    for (name, ts) in &cat.tenants {
        e.str(name);
        e.len(ts.dim.unwrap_or(0));
        let docs = per_tenant.remove(&**name).unwrap_or_default();
        e.len(docs.len());
        for (h, d) in docs {
            e.u64(h);
            e.u8(d.source.index() as u8);
            e.str(&d.id);
            e.opt_str(d.owner.as_deref());
            e.opt_str(d.conversation_id.as_deref());
            e.opt_str(d.role.as_deref());
            e.i64(d.created_at);
            e.len(d.metadata.len());
            for (k, v) in &d.metadata {
                e.str(k);
                e.str(v);
            }
            e.u64(d.slot.map_or(NO_SLOT, u64::from));
            e.u64(d.text_hash);
            e.u8(u8::from(d.derived));
            match d.expires_at_ms {
                Some(at) => {
                    e.u8(1);
                    e.i64(at);
                }
                None => e.u8(0),
            }
        }
        for sv in &ts.sources {
            e.len(sv.blocks.len());
            for (owner, b) in &sv.blocks {
                e.opt_str(owner.as_deref());
                e.u64s(&b.handles);
                e.f32s(&b.data);
            }
            let pending: Vec<Handle> = sv.pending.iter().copied().collect();
            e.u64s(&pending);
            match &sv.ann {
                Some(a) => {
                    e.u8(GRAPH_WITH_SCALE);
                    e.u64(u64::from(a.scale().to_bits()));
                    a.save_into(&mut e.buf)?;
                }
                None => e.u8(0),
            }
        }
    }
    if !per_tenant.is_empty() {
        return Err(SearchError::Internal(
            "catalog holds documents of an unknown tenant".into(),
        ));
    }
    e.len(files.len());
    for (path, bytes) in files {
        e.str(path);
        e.bytes(bytes);
    }
    Ok(())
}

/// What [`decode`] rebuilds.
pub(crate) struct Restored {
    pub catalog: Catalog,
    pub dims: HashMap<String, usize>,
    pub text: TextIndex,
    /// Scopes whose ANN graph has vectors to add (the builder thread takes them).
    pub ann_todo: Vec<(Arc<str>, Source)>,
}

/// Checks and decodes a snapshot written by [`encode`] (after the header written by
/// [`Enc::finish`]). Any inconsistency is [`SearchError::BadSnapshot`].
pub(crate) fn decode(bytes: &[u8], cfg: &SearchConfig) -> Result<Restored, SearchError> {
    let mut d = open(bytes)?;
    let quantization = quantization_from(d.u8()?)?;
    let mut cat = Catalog {
        next_handle: d.u64()?,
        ..Catalog::default()
    };
    let mut dims: HashMap<String, usize> = HashMap::new();
    for _ in 0..d.count(16)? {
        let t = d.str()?.to_string();
        let dim = d.u64()? as usize;
        dims.insert(t, dim);
    }
    for (t, want) in &cfg.dimension_overrides {
        match dims.insert(t.clone(), *want) {
            Some(had) if had != *want => {
                return Err(bad(format!(
                    "tenant {t} has dimension {had} in the snapshot, {want} in the configuration"
                )))
            }
            _ => {}
        }
    }
    let mut ann_todo = Vec::new();
    let mut with_slot = 0usize;
    let mut in_blocks = 0usize;
    for _ in 0..d.count(16)? {
        let name: Arc<str> = Arc::from(d.str()?);
        if cat.tenants.contains_key(&name) {
            return Err(bad(format!("tenant {name} appears twice")));
        }
        let dim = match d.u64()? {
            0 => None,
            n => Some(n as usize),
        };
        if let (Some(a), Some(b)) = (dim, dims.get(&*name)) {
            if a != *b {
                return Err(bad(format!("tenant {name}: dimension {a} vs {b}")));
            }
        }
        let mut ts = TenantState {
            dim,
            ..TenantState::default()
        };
        for _ in 0..d.count(40)? {
            let h = d.u64()?;
            if h >= cat.next_handle {
                return Err(bad(format!("handle {h} not below the next handle")));
            }
            let source = source_from(d.u8()?)?;
            let id: Box<str> = d.str()?.into();
            let owner = d.opt_str()?.map(|o| intern(&mut ts.by_owner, o, h));
            let conversation_id = d.opt_str()?.map(|c| intern(&mut ts.by_conversation, c, h));
            let role = d.opt_str()?.map(Into::into);
            let created_at = d.i64()?;
            let mut metadata = std::collections::BTreeMap::new();
            for _ in 0..d.count(16)? {
                let k = d.str()?.to_string();
                metadata.insert(k, d.str()?.to_string());
            }
            let slot = match d.u64()? {
                NO_SLOT => None,
                s => Some(u32::try_from(s).map_err(|_| bad("slot out of range"))?),
            };
            let text_hash = d.u64()?;
            let derived = match d.u8()? {
                0 => false,
                1 => true,
                b => return Err(bad(format!("bad derived flag {b}"))),
            };
            let expires_at_ms = match d.u8()? {
                0 => None,
                1 => Some(d.i64()?),
                b => return Err(bad(format!("bad expiry flag {b}"))),
            };
            cat.schedule_expiry(h, expires_at_ms);
            with_slot += usize::from(slot.is_some());
            if ts.by_id[source.index()].insert(id.clone(), h).is_some() {
                return Err(bad(format!("id {id} appears twice in tenant {name}")));
            }
            ts.docs += 1;
            let entry = DocEntry {
                tenant: name.clone(),
                source,
                id,
                owner,
                conversation_id,
                role,
                created_at,
                metadata,
                slot,
                text_hash,
                derived,
                expires_at_ms,
            };
            if cat.docs.insert(h, entry).is_some() {
                return Err(bad(format!("handle {h} appears twice")));
            }
        }
        for (i, src) in [Source::Items, Source::Memory].into_iter().enumerate() {
            let mut blocks = HashMap::new();
            let mut count = 0usize;
            for _ in 0..d.count(17)? {
                let owner: Option<Arc<str>> = match d.opt_str()? {
                    None => None,
                    Some(o) => Some(
                        ts.by_owner
                            .get_key_value(o)
                            .map(|(k, _)| k.clone())
                            .ok_or_else(|| bad(format!("block of unknown owner {o}")))?,
                    ),
                };
                let handles = d.u64s()?;
                let data = d.f32s()?;
                let dim = dim.ok_or_else(|| bad("vectors in a tenant without dimension"))?;
                if data.len() != handles.len() * dim {
                    return Err(bad("vector block length differs from its handles"));
                }
                for (slot, h) in handles.iter().enumerate() {
                    let ok = cat.docs.get(h).is_some_and(|doc| {
                        doc.slot == Some(slot as u32)
                            && doc.tenant == name
                            && doc.source == src
                            && doc.owner == owner
                    });
                    if !ok {
                        return Err(bad(format!(
                            "vector slot {slot} does not match its document"
                        )));
                    }
                }
                let mut half = Vec::new();
                if simd::has_f16() {
                    half.reserve(data.len());
                    for v in data.chunks_exact(dim) {
                        simd::push_f16(v, &mut half);
                    }
                }
                count += handles.len();
                let block = Block {
                    data,
                    half,
                    handles,
                };
                if blocks.insert(owner, block).is_some() {
                    return Err(bad("two vector blocks for one owner"));
                }
            }
            in_blocks += count;
            let pending = d.u64s()?;
            let ann = match d.u8()? {
                0 => None,
                GRAPH_UNSCALED => {
                    // i8 vectors quantised by usearch itself: the graph is rebuilt.
                    d.bytes()?;
                    None
                }
                GRAPH_WITH_SCALE => {
                    let scale = u32::try_from(d.u64()?)
                        .map(f32::from_bits)
                        .map_err(|_| bad("bad i8 scale"))?;
                    let graph = d.bytes()?;
                    match dim {
                        // A graph of another quantisation is rebuilt instead.
                        Some(dim) if quantization == cfg.ann_quantization => Some(Arc::new(
                            Ann::load(graph, scale, dim, quantization, cfg.ann_expansion_search)?,
                        )),
                        _ => None,
                    }
                }
                t => return Err(bad(format!("bad graph tag {t}"))),
            };
            let sv = &mut ts.sources[i];
            sv.blocks = blocks;
            sv.count = count;
            match ann {
                Some(ann) => {
                    // Vectors the graph lacks: pending ones (those added while the snapshot
                    // was taken are skipped by `contains`).
                    sv.pending = pending
                        .into_iter()
                        .filter(|h| cat.docs.get(h).is_some_and(|doc| doc.slot.is_some()))
                        .filter(|h| !ann.contains(*h))
                        .collect();
                    sv.ann = Some(ann);
                }
                None if count > cfg.ann_threshold => {
                    let dim = dim.ok_or_else(|| bad("vectors in a tenant without dimension"))?;
                    sv.ann = Some(Arc::new(Ann::new(
                        dim,
                        cfg.ann_quantization,
                        cfg.ann_expansion_search,
                        count,
                        sv.vectors(dim),
                    )?));
                    sv.pending = sv.all_handles();
                }
                None => {}
            }
            if !sv.pending.is_empty() {
                ann_todo.push((name.clone(), src));
            }
        }
        cat.tenants.insert(name, ts);
    }
    if with_slot != in_blocks {
        return Err(bad(
            "documents with a vector slot are missing from the blocks",
        ));
    }
    let mut files = Vec::new();
    for _ in 0..d.count(16)? {
        let path = d.str()?;
        files.push((path, d.bytes()?));
    }
    d.end()?;
    let text = TextIndex::from_files(files)?;
    Ok(Restored {
        catalog: cat,
        dims,
        text,
        ann_todo,
    })
}

/// The map's own `Arc` for `key` (created if new), with `handle` added to its set.
fn intern(map: &mut HashMap<Arc<str>, HashSet<Handle>>, key: &str, handle: Handle) -> Arc<str> {
    match map.get_key_value(key).map(|(k, _)| k.clone()) {
        Some(k) => {
            map.entry(k.clone()).or_default().insert(handle);
            k
        }
        None => {
            let k: Arc<str> = Arc::from(key);
            map.insert(k.clone(), HashSet::from([handle]));
            k
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut e = Enc::new();
        e.u8(7);
        e.str("héllo");
        e.opt_str(None);
        e.opt_str(Some("x"));
        e.i64(-5);
        e.u64s(&[1, u64::MAX]);
        e.f32s(&[0.5, -1.25]);
        let bytes = e.finish();
        let mut d = open(&bytes).unwrap();
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.str().unwrap(), "héllo");
        assert_eq!(d.opt_str().unwrap(), None);
        assert_eq!(d.opt_str().unwrap(), Some("x"));
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.u64s().unwrap(), vec![1, u64::MAX]);
        assert_eq!(d.f32s().unwrap(), vec![0.5, -1.25]);
        d.end().unwrap();

        // Any flipped bit in the body fails the checksum; a bad header is refused.
        for i in [HEADER, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(matches!(open(&b), Err(SearchError::BadSnapshot(_))));
        }
        let mut b = bytes.clone();
        b[8] = 99;
        assert!(matches!(open(&b), Err(SearchError::BadSnapshot(_))));
        assert!(open(&bytes[..bytes.len() - 1]).is_err());
        assert!(open(b"short").is_err());
    }
}
