//! Reading the log: the replay at open, and `DbReader`s following the database.

use crate::format::{decode_rows, read_block};
use crate::segments::{self, BlockRef};
use async_trait::async_trait;
use slatedb::wal::{WalError, WalFileRange, WalIterator, WalReader, WalRows};
use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Iterates the rows of a known list of blocks, one block per [`WalRows`].
pub(crate) struct BlockIter {
    blocks: VecDeque<BlockRef>,
    /// The segment read last, whole (blocks of one segment are read in order).
    cached: Option<(PathBuf, Arc<Vec<u8>>)>,
}

impl BlockIter {
    pub(crate) fn new(blocks: Vec<BlockRef>) -> Self {
        BlockIter {
            blocks: blocks.into(),
            cached: None,
        }
    }

    async fn segment(&mut self, path: &Path) -> Result<Arc<Vec<u8>>, WalError> {
        if let Some((p, buf)) = &self.cached {
            if p == path {
                return Ok(Arc::clone(buf));
            }
        }
        let owned = path.to_path_buf();
        let buf = tokio::task::spawn_blocking(move || segments::read(&owned))
            .await
            .map_err(|e| WalError::InternalError(Arc::new(e)))??;
        let buf = Arc::new(buf);
        self.cached = Some((path.to_path_buf(), Arc::clone(&buf)));
        Ok(buf)
    }
}

#[async_trait]
impl WalIterator for BlockIter {
    async fn next(&mut self) -> Result<Option<WalRows>, WalError> {
        let Some(next) = self.blocks.pop_front() else {
            return Ok(None);
        };
        let buf = self.segment(&next.path).await?;
        let offset = next.block.offset as usize;
        let payload = match read_block(&buf, offset) {
            Some((info, payload)) if info.id == next.block.id => payload,
            // The block was valid when the log was scanned; it no longer is.
            _ => return Err(WalError::WalTruncated(next.block.id)),
        };
        let rows =
            decode_rows(next.block.id, payload).map_err(|e| WalError::DataError(Arc::new(e)))?;
        Ok(Some(WalRows {
            rows,
            last_consumed_wal_file_id: next.block.id,
        }))
    }
}

/// Reads a segment log from its directory, without its lock: from another process, or
/// beside the writer in this one. It sees the blocks written so far (a block being written
/// reads as not there yet).
#[derive(Clone, Debug)]
pub struct SegmentWalReader {
    dir: PathBuf,
}

impl SegmentWalReader {
    /// A reader of the log in `dir`.
    pub fn new(dir: &Path) -> Self {
        SegmentWalReader {
            dir: dir.to_path_buf(),
        }
    }

    async fn chain(&self, after: u64, until: Option<u64>) -> Result<Vec<BlockRef>, WalError> {
        let dir = self.dir.clone();
        let blocks = tokio::task::spawn_blocking(move || {
            if !dir.exists() {
                return Ok(Vec::new());
            }
            let scans = segments::scan_all(&dir)?;
            let base = segments::read_base(&dir)?.unwrap_or(0);
            segments::chain(&scans, after.max(base), until)
        })
        .await
        .map_err(|e| WalError::InternalError(Arc::new(e)))??;
        Ok(blocks)
    }
}

#[async_trait]
impl WalReader for SegmentWalReader {
    async fn iterator(
        &self,
        wal_file_id_range: WalFileRange,
    ) -> Result<Box<dyn WalIterator>, WalError> {
        let WalFileRange(start, end) = wal_file_id_range;
        let after = match start {
            Bound::Included(s) => s.saturating_sub(1),
            Bound::Excluded(s) => s,
            Bound::Unbounded => {
                return Err(WalError::InternalError(Arc::new(std::io::Error::other(
                    "a WAL range must have a start",
                ))))
            }
        };
        let until = match end {
            Bound::Included(e) => Some(e),
            Bound::Excluded(e) => Some(e.saturating_sub(1)),
            Bound::Unbounded => None,
        };
        if until.is_some_and(|u| u <= after) {
            return Ok(Box::new(BlockIter::new(Vec::new())));
        }
        let blocks = self.chain(after, until).await?;
        match until {
            Some(_) => Ok(Box::new(BlockIter::new(blocks))),
            None => Ok(Box::new(Following {
                reader: self.clone(),
                last: after,
                current: BlockIter::new(blocks),
            })),
        }
    }

    async fn last_wal_file_id(&self, replay_after_wal_id: u64) -> Result<u64, WalError> {
        let blocks = self.chain(replay_after_wal_id, None).await?;
        Ok(blocks.last().map_or(replay_after_wal_id, |b| b.block.id))
    }
}

/// An iterator with no end: when it has read every block, it waits for the next one.
struct Following {
    reader: SegmentWalReader,
    last: u64,
    current: BlockIter,
}

/// How often a following iterator looks for new blocks.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl WalIterator for Following {
    async fn next(&mut self) -> Result<Option<WalRows>, WalError> {
        loop {
            if let Some(rows) = self.current.next().await? {
                self.last = rows.last_consumed_wal_file_id;
                return Ok(Some(rows));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            let blocks = self.reader.chain(self.last, None).await?;
            self.current = BlockIter::new(blocks);
        }
    }
}
