//! The change feed: a tenant's change log as a resumable, scoped stream of events.
//!
//! A reader asks for the events after a [`Cursor`]; the answer holds the events its scope may
//! see ([`Scope::can_see_change`]), in commit order, and a cursor to continue from. Every
//! answer, even an empty one, carries a cursor that moves with time, so a reader with nothing
//! to read never falls behind the retention window.
//!
//! * **Positions** are the log's sequence numbers, a hybrid logical clock close to the commit
//!   time in microseconds. A cursor older than the retention window (plus the grace period
//!   entries are stored beyond it, [`crate::ChangeLog::grace`]) answers [`FeedError::Expired`]
//!   with the oldest cursor that is still whole.
//! * **Nothing acknowledged is skipped.** A cursor never passes an entry that could still
//!   become durable: when writes of the tenant are in flight, an empty answer keeps the cursor
//!   where it was; when none are, it moves to the present, and every later write takes a
//!   larger sequence number.
//! * Only durable entries are read.

use crate::changelog::{ChangeEntry, ChangeOp};
use crate::clock::now_us;
use crate::ids::Scope;
use crate::{Result, Store, StoreError};

/// Most entries examined by one read (visible or not), so a read for one user of a busy
/// tenant does bounded work; the answer then has `has_more` and a cursor past what was
/// examined.
pub const MAX_EXAMINED: usize = 10_000;

/// Entries read from the log per round.
const CHUNK: usize = 500;

/// A position in a tenant's feed: the events after it follow. Opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u64);

/// The prefix of every cursor of this encoding.
const CURSOR_PREFIX: &str = "c1";

impl Cursor {
    /// The cursor before every entry.
    pub const START: Cursor = Cursor(0);

    /// The cursor right after the entry at `seq`.
    pub fn after_seq(seq: u64) -> Cursor {
        Cursor(seq)
    }

    /// The log position it stands after.
    pub fn seq(self) -> u64 {
        self.0
    }

    /// The cursor as clients see it.
    pub fn encode(self) -> String {
        format!("{CURSOR_PREFIX}{:016x}", self.0)
    }

    /// Parses a cursor a client sent back; [`FeedError::BadCursor`] if it is not one.
    pub fn decode(s: &str) -> Result<Cursor, FeedError> {
        let hex = s.strip_prefix(CURSOR_PREFIX).ok_or(FeedError::BadCursor)?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FeedError::BadCursor);
        }
        u64::from_str_radix(hex, 16)
            .map(Cursor)
            .map_err(|_| FeedError::BadCursor)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Where a feed read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedStart {
    /// From the oldest retained entry.
    Oldest,
    /// Only entries committed after the call.
    Now,
    /// After a cursor from an earlier answer.
    After(Cursor),
}

/// Why a feed read failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The cursor is not one this server issued.
    #[error("malformed cursor")]
    BadCursor,
    /// The cursor is older than the retention window: entries after it may be gone.
    #[error("the cursor is older than the change log's retention; continue from the oldest valid cursor {oldest}")]
    Expired {
        /// The oldest cursor from which the log is whole.
        oldest: Cursor,
    },
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One answer of the feed.
#[derive(Clone, Debug)]
pub struct FeedPage {
    /// Entries the scope may see, in commit order.
    pub entries: Vec<ChangeEntry>,
    /// Where the next read continues.
    pub next: Cursor,
    /// Whether more entries may follow right away (the read stopped at its limit).
    pub has_more: bool,
}

/// Whether an entry is a public event. The purge of a deleted conversation's items is the
/// storage side of its `conversation.deleted` and is not one.
pub fn is_event(entry: &ChangeEntry) -> bool {
    !matches!(entry.op, ChangeOp::ItemsPurged { .. })
}

impl Store {
    /// The events after `start` that `scope` may see, at most `limit`, oldest first.
    pub async fn read_changes(
        &self,
        scope: &Scope,
        start: FeedStart,
        limit: usize,
    ) -> Result<FeedPage, FeedError> {
        let tenant = &scope.tenant;
        let log = self.change_log();
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let now = now_us();
        // Entries younger than the retention are promised; they are stored a grace period
        // longer, so the oldest valid cursor handed out stays usable while the reader returns.
        let horizon = now.saturating_sub(micros(log.retention()));
        let stored = horizon.saturating_sub(micros(log.grace()));
        let from = match start {
            FeedStart::Oldest => Cursor::START,
            FeedStart::Now => match log.quiet_head(tenant).await? {
                Some(now) => Cursor(now),
                // Writes in flight: start after the newest durable entry, before them.
                None => Cursor(log.durable_head(tenant).await?),
            },
            FeedStart::After(c) if c != Cursor::START && c.0 < stored => {
                return Err(FeedError::Expired {
                    oldest: Cursor(horizon),
                })
            }
            FeedStart::After(c) => c,
        };
        // The present as it was before the read: every entry up to it was acknowledged before
        // the read began, so the read sees it. Taken after the read, a write acknowledged in
        // between would lie below it unread, and the cursor would skip it.
        let quiet = log.quiet_head(tenant).await?;
        let mut entries = Vec::new();
        let mut next = from;
        let mut examined = 0usize;
        let mut has_more = false;
        'read: loop {
            let chunk = log.read(tenant, next.0, CHUNK).await?;
            let end_of_log = chunk.len() < CHUNK;
            for e in chunk {
                if scope.can_see_change(&e) && is_event(&e) {
                    if entries.len() == limit {
                        has_more = true;
                        break 'read;
                    }
                    next = Cursor(e.seq);
                    entries.push(e);
                } else {
                    next = Cursor(e.seq);
                }
                examined += 1;
                if examined >= MAX_EXAMINED {
                    has_more = true;
                    break 'read;
                }
            }
            if end_of_log {
                break;
            }
        }
        if !has_more {
            // Nothing more is durable: move to the present if no write of the tenant was in
            // flight when the read began, so an idle reader keeps up with the retention window.
            if let Some(now) = quiet {
                next = next.max(Cursor(now));
            }
        }
        Ok(FeedPage {
            entries,
            next,
            has_more,
        })
    }

    /// [`Store::read_changes`], waiting up to `wait` when there is nothing to read: until the
    /// tenant's next acknowledged write, then reading again (a long poll). Answers an empty
    /// page when `wait` passes first.
    pub async fn wait_changes(
        &self,
        scope: &Scope,
        start: FeedStart,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<FeedPage, FeedError> {
        // Subscribed before the first read, so an acknowledgement between the read and the
        // wait is not missed; a read that does not wait needs no subscription.
        let log = self.change_log();
        let sub = (!wait.is_zero()).then(|| log.subscribe());
        let deadline = tokio::time::Instant::now() + wait;
        let mut start = start;
        loop {
            let page = self.read_changes(scope, start, limit).await?;
            if !page.entries.is_empty() || page.has_more {
                return Ok(page);
            }
            let Some(sub) = &sub else {
                return Ok(page);
            };
            start = FeedStart::After(page.next);
            loop {
                if tokio::time::timeout_at(deadline, sub.changed())
                    .await
                    .is_err()
                {
                    return Ok(page);
                }
                if sub.take_moved().iter().any(|(t, _)| *t == scope.tenant) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for seq in [0, 1, 1_765_000_000_000_000, u64::MAX] {
            let c = Cursor(seq);
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        for bad in [
            "",
            "c1",
            "c2000000000000002a",
            "c1zz00000000000000",
            "c10000",
            "c1+000000000000002a",
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(FeedError::BadCursor)),
                "{bad}"
            );
        }
    }
}
