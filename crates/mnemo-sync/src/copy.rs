//! Copying and hashing single objects, streamed.

use crate::error::SyncError;
use crate::progress::{NoProgress, Progress};
use crate::tree::{Backend, Entry};
use bytes::BytesMut;
use futures::StreamExt;
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::sync::Arc;

/// The largest object copied on the server: S3's CopyObject takes at most 5 GiB; a larger
/// object flows through this node.
pub const SERVER_SIDE_COPY_MAX: u64 = 5 << 30;

/// How [`copy_object`] moves bytes that flow through this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyParams {
    /// Objects larger than this many bytes are uploaded in parts (multipart upload, block
    /// list); smaller ones are read into memory and written with one PUT.
    pub multipart_threshold: u64,
    /// Size of one part, in bytes. S3 needs at least 5 MiB (all parts but the last).
    pub part_size: usize,
    /// Parts of one object uploaded at the same time.
    pub parts_in_flight: usize,
}

impl Default for CopyParams {
    fn default() -> Self {
        CopyParams {
            multipart_threshold: 64 << 20,
            part_size: 8 << 20,
            parts_in_flight: 4,
        }
    }
}

impl CopyParams {
    /// The most bytes one copy holds in memory: one small object, or the parts in flight
    /// plus the one being filled.
    pub fn memory_bound(&self) -> u64 {
        let parts = self.part_size as u64 * (self.parts_in_flight as u64 + 1);
        parts.max(self.multipart_threshold)
    }

    pub(crate) fn validate(&self) -> Result<(), SyncError> {
        if self.part_size == 0 || self.parts_in_flight == 0 {
            return Err(SyncError::InvalidOptions(
                "the part size and the parts in flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Copies one object of `size` bytes from `src_store` to `dst_store`.
///
/// * When both are the same client instance (`Arc::ptr_eq`: one bucket or container of one
///   backend) and the object is at most [`SERVER_SIDE_COPY_MAX`], the store copies it
///   itself (S3 CopyObject, Azure Copy Blob): no byte flows through this node. Do not pass
///   one `LocalFileSystem` as both: its copy is a hard link.
/// * Otherwise the object is streamed: read and written with one PUT up to
///   [`CopyParams::multipart_threshold`], in parts above it (several in flight).
///
/// No partial object is ever visible at the destination: a PUT, a completed multipart
/// upload and a server-side copy are atomic, and a local file is written to a temporary
/// name and renamed. A failed multipart upload is aborted. If the source's size is not
/// `size` (it changed since it was listed), nothing is written and the error is
/// [`SyncError::SourceChanged`].
pub async fn copy_object(
    src_store: &Arc<dyn ObjectStore>,
    src_path: &Path,
    dst_store: &Arc<dyn ObjectStore>,
    dst_path: &Path,
    size: u64,
    params: &CopyParams,
) -> Result<(), SyncError> {
    copy_with_progress(
        src_store,
        src_path,
        dst_store,
        dst_path,
        size,
        params,
        &NoProgress,
    )
    .await
    .map(|_| ())
}

/// How an object was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Copied {
    ServerSide,
    Streamed,
}

/// [`copy_object`], reporting the bytes read to `progress`.
pub(crate) async fn copy_with_progress(
    src_store: &Arc<dyn ObjectStore>,
    src_path: &Path,
    dst_store: &Arc<dyn ObjectStore>,
    dst_path: &Path,
    size: u64,
    params: &CopyParams,
    progress: &dyn Progress,
) -> Result<Copied, SyncError> {
    params.validate()?;
    if Arc::ptr_eq(src_store, dst_store) && size <= SERVER_SIDE_COPY_MAX {
        dst_store
            .copy(src_path, dst_path)
            .await
            .map_err(|e| SyncError::store("copy", src_path, e))?;
        return Ok(Copied::ServerSide);
    }
    let read_err = |e| SyncError::store("read", src_path, e);
    let write_err = |e| SyncError::store("write", dst_path, e);
    let changed = |actual| SyncError::SourceChanged {
        path: src_path.to_string(),
        expected: size,
        actual,
    };
    let got = src_store.get(src_path).await.map_err(read_err)?;
    if got.meta.size != size {
        return Err(changed(got.meta.size));
    }
    let mut chunks = got.into_stream();
    if size <= params.multipart_threshold {
        let mut buf = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(read_err)?;
            buf.extend_from_slice(&chunk);
            progress.transferred(chunk.len() as u64);
        }
        if buf.len() as u64 != size {
            return Err(changed(buf.len() as u64));
        }
        dst_store
            .put(dst_path, PutPayload::from(buf.freeze()))
            .await
            .map_err(write_err)?;
        return Ok(Copied::Streamed);
    }
    let upload = dst_store.put_multipart(dst_path).await.map_err(write_err)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, params.part_size);
    let mut read = 0u64;
    let streamed = loop {
        let chunk = match chunks.next().await {
            None if read == size => break Ok(()),
            None => break Err(changed(read)),
            Some(Err(e)) => break Err(read_err(e)),
            Some(Ok(chunk)) => chunk,
        };
        read += chunk.len() as u64;
        if read > size {
            break Err(changed(read));
        }
        if let Err(e) = writer.wait_for_capacity(params.parts_in_flight).await {
            break Err(write_err(e));
        }
        progress.transferred(chunk.len() as u64);
        writer.put(chunk);
    };
    match streamed {
        Ok(()) => {
            writer.finish().await.map_err(write_err)?;
            Ok(Copied::Streamed)
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(path = %dst_path, error = %abort, "could not abort a multipart upload");
            }
            Err(e)
        }
    }
}

/// The MD5 of an object's content. An S3 object whose ETag is a plain MD5 (a single-part
/// upload) is not read; anything else (local files, Azure blobs, multipart ETags `…-N`) is
/// read and hashed, streamed.
pub(crate) async fn content_md5(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    entry: &Entry,
    backend: Backend,
    progress: &dyn Progress,
) -> Result<[u8; 16], SyncError> {
    if backend == Backend::S3 {
        if let Some(md5) = entry.e_tag.as_deref().and_then(etag_md5) {
            return Ok(md5);
        }
    }
    let read_err = |e| SyncError::store("read", path, e);
    let changed = |actual| SyncError::SourceChanged {
        path: path.to_string(),
        expected: entry.size,
        actual,
    };
    let got = store.get(path).await.map_err(read_err)?;
    if got.meta.size != entry.size {
        return Err(changed(got.meta.size));
    }
    let mut chunks = got.into_stream();
    let mut hasher = Md5::new();
    let mut read = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(read_err)?;
        hasher.update(&chunk);
        read += chunk.len() as u64;
        progress.transferred(chunk.len() as u64);
    }
    if read != entry.size {
        return Err(changed(read));
    }
    Ok(hasher.finalize().into())
}

/// The MD5 in an S3 ETag, when it is one: 32 hex digits, quoted or not. A multipart ETag
/// (`"<hex>-<parts>"`) is not.
fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.trim_matches('"');
    if hex.len() != 32 {
        return None;
    }
    let mut md5 = [0u8; 16];
    for (i, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(md5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_as_md5() {
        let md5 = etag_md5("\"d41d8cd98f00b204e9800998ecf8427e\"").unwrap();
        assert_eq!(md5[..2], [0xd4, 0x1d]);
        assert_eq!(md5, <[u8; 16]>::from(Md5::digest(b"")));
        assert!(etag_md5("d41d8cd98f00b204e9800998ecf8427e").is_some());
        assert!(etag_md5("\"d41d8cd98f00b204e9800998ecf8427e-2\"").is_none());
        assert!(etag_md5("\"0x8DB1234567890AB\"").is_none());
        assert!(etag_md5("\"zz1d8cd98f00b204e9800998ecf8427e\"").is_none());
        assert!(etag_md5("\"é1d8cd98f00b204e9800998ecf8427\"").is_none());
    }
}
