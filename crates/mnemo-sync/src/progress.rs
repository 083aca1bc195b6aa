//! Progress of a run, reported to the caller (the library prints nothing).

use crate::check::DifferenceKind;

/// What became of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Copied to the destination (or, in a dry run, would be).
    Copied,
    /// Already the same at the destination.
    Skipped,
    /// Deleted from the destination (or, in a dry run, would be).
    Deleted,
    /// Failed, with the reason.
    Failed(&'a str),
    /// `check`: the same on both sides.
    Matched,
    /// `check`: a difference.
    Differs(DifferenceKind),
}

/// Receives progress while a sync or check runs. Called from the run's task: keep it quick
/// (update counters, redraw a bar).
pub trait Progress: Send + Sync {
    /// `bytes` more bytes were read from a store, to copy or to hash them.
    fn transferred(&self, bytes: u64) {
        let _ = bytes;
    }

    /// One object (a key of the trees) is done.
    fn finished(&self, key: &str, event: Event<'_>) {
        let _ = (key, event);
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
