//! Retiring segments whose blocks no manifest or checkpoint needs any more.

use crate::{lock, segments, Shared};
use async_trait::async_trait;
use slatedb::wal::{WalError, WalFileRange, WalGc};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// SlateDB's garbage collector hook for the segment log.
pub(crate) struct SegmentGc {
    shared: Arc<Shared>,
}

impl SegmentGc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SegmentGc { shared }
    }
}

/// True if some block id in `first..=last` lies in `range`.
fn overlaps(range: &WalFileRange, first: u64, last: u64) -> bool {
    let above_start = match range.0 {
        Bound::Included(s) => last >= s,
        Bound::Excluded(s) => last > s,
        Bound::Unbounded => true,
    };
    let below_end = match range.1 {
        Bound::Included(e) => first <= e,
        Bound::Excluded(e) => first < e,
        Bound::Unbounded => true,
    };
    above_start && below_end
}

/// The segments that may go: not in use, and holding no referenced block (or no block).
pub(crate) fn retirable(shared: &Shared, referenced: &[WalFileRange]) -> Vec<u64> {
    lock(&shared.segments)
        .iter()
        .filter(|(_, m)| !m.in_use)
        .filter(|(_, m)| match (m.first, m.last) {
            (Some(f), Some(l)) => !referenced.iter().any(|r| overlaps(r, f, l)),
            _ => true,
        })
        .map(|(n, _)| *n)
        .collect()
}

fn collect(
    shared: &Shared,
    referenced: &[WalFileRange],
    min_age: Duration,
    dry_run: bool,
) -> Result<usize, crate::Error> {
    let now = SystemTime::now();
    let mut removed = 0;
    for number in retirable(shared, referenced) {
        let path = segments::segment_path(&shared.dir, number);
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default());
        match age {
            Ok(age) if age < min_age => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io(&path, e)),
            Ok(_) => {}
        }
        if dry_run {
            tracing::info!(segment = %path.display(), "local WAL segment would be retired");
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io(&path, e)),
        }
        lock(&shared.segments).remove(&number);
    }
    if removed > 0 {
        segments::sync_dir(&shared.dir)?;
        tracing::debug!(removed, "local WAL segments retired");
    }
    Ok(removed)
}

#[async_trait]
impl WalGc for SegmentGc {
    async fn collect(
        &self,
        referenced_ranges: Vec<WalFileRange>,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<(), WalError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || collect(&shared, &referenced_ranges, min_age, dry_run))
            .await
            .map_err(|e| WalError::InternalError(Arc::new(e)))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_by_their_bounds() {
        let r = |a, b| WalFileRange(a, b);
        use Bound::*;
        assert!(overlaps(&r(Included(5), Unbounded), 1, 5));
        assert!(!overlaps(&r(Included(5), Unbounded), 1, 4));
        assert!(!overlaps(&r(Excluded(5), Excluded(9)), 1, 5));
        assert!(overlaps(&r(Excluded(5), Excluded(9)), 1, 6));
        assert!(!overlaps(&r(Excluded(5), Excluded(9)), 9, 12));
        assert!(overlaps(&r(Excluded(5), Excluded(9)), 8, 12));
    }
}
