//! `check`: compare two trees, object by object, by size and content hash.

use crate::copy::content_md5;
use crate::error::{describe, SyncError};
use crate::merge::{merge, Pair};
use crate::progress::{Event, Progress};
use crate::run::{ObjectError, Tally, MAX_LISTED};
use crate::tree::{open_pair, Entry, Open, Side, Tree};
use futures::StreamExt;
use mnemo_storage::RemotePolicy;
use serde::Serialize;
use std::time::Instant;

/// Options of [`check`].
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Objects compared at the same time.
    pub checkers: usize,
    /// Retries and timeouts of remote stores.
    pub policy: RemotePolicy,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            checkers: 8,
            policy: RemotePolicy::default(),
        }
    }
}

/// How an object differs between the trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// Only the source has it.
    MissingOnDestination,
    /// Only the destination has it.
    MissingOnSource,
    /// Both have it, with different sizes.
    SizeDiffers,
    /// Both have it, same size, different content (MD5).
    ContentDiffers,
}

/// One object that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The key, relative to the trees.
    pub path: String,
    /// How it differs.
    pub kind: DifferenceKind,
    /// Its size in the source, if there.
    pub source_size: Option<u64>,
    /// Its size in the destination, if there.
    pub destination_size: Option<u64>,
}

/// What a [`check`] found. Tallies count source bytes, or destination bytes for
/// `missing_on_source`.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The source tree's URL.
    pub source: String,
    /// The destination tree's URL.
    pub destination: String,
    /// Objects the same on both sides.
    pub matched: Tally,
    /// Objects only the source has.
    pub missing_on_destination: Tally,
    /// Objects only the destination has.
    pub missing_on_source: Tally,
    /// Objects whose sizes differ.
    pub size_differs: Tally,
    /// Objects of equal size whose contents differ.
    pub content_differs: Tally,
    /// Objects that could not be compared (listing failures count one).
    pub errors: Tally,
    /// The first [`MAX_LISTED`] differences, in key order.
    pub differences: Vec<Difference>,
    /// More differences than [`MAX_LISTED`] were found.
    pub differences_truncated: bool,
    /// The first [`MAX_LISTED`] failures.
    pub error_list: Vec<ObjectError>,
    /// More failures than [`MAX_LISTED`] happened.
    pub error_list_truncated: bool,
    /// Every object was compared: false when a listing failed.
    pub complete: bool,
    /// Wall time of the check.
    pub elapsed_seconds: f64,
}

impl CheckReport {
    /// True when both trees hold the same objects with the same contents, and nothing
    /// failed.
    pub fn identical(&self) -> bool {
        self.complete && self.errors.objects == 0 && self.difference_count() == 0
    }

    /// Objects that differ, of every kind.
    pub fn difference_count(&self) -> u64 {
        self.missing_on_destination.objects
            + self.missing_on_source.objects
            + self.size_differs.objects
            + self.content_differs.objects
    }

    fn differ(&mut self, difference: Difference, progress: &dyn Progress) {
        let tally = match difference.kind {
            DifferenceKind::MissingOnDestination => &mut self.missing_on_destination,
            DifferenceKind::MissingOnSource => &mut self.missing_on_source,
            DifferenceKind::SizeDiffers => &mut self.size_differs,
            DifferenceKind::ContentDiffers => &mut self.content_differs,
        };
        tally.add(
            difference
                .source_size
                .or(difference.destination_size)
                .unwrap_or(0),
        );
        progress.finished(&difference.path, Event::Differs(difference.kind));
        if self.differences.len() < MAX_LISTED {
            self.differences.push(difference);
        } else {
            self.differences_truncated = true;
        }
    }

    fn fail(&mut self, path: Option<String>, bytes: u64, error: String, progress: &dyn Progress) {
        progress.finished(path.as_deref().unwrap_or(""), Event::Failed(&error));
        self.errors.add(bytes);
        if self.error_list.len() < MAX_LISTED {
            self.error_list.push(ObjectError { path, error });
        } else {
            self.error_list_truncated = true;
        }
    }
}

/// What the comparison of one pair found.
enum Found {
    Matched {
        key: String,
        bytes: u64,
    },
    Differs(Difference),
    Failed {
        key: String,
        bytes: u64,
        error: String,
    },
    Fatal(String),
}

/// Compares two trees: every object in both, by size and by MD5 of the content (an S3
/// single-part ETag is the MD5 and is not read; anything else is read and hashed,
/// streamed). The listings are streamed and merge-joined in byte order of keys, and
/// [`CheckOptions::checkers`] objects are compared at a time. Both trees must exist.
pub async fn check(
    src: &Tree,
    dst: &Tree,
    options: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport, SyncError> {
    if options.checkers == 0 {
        return Err(SyncError::InvalidOptions(
            "checkers must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let (src, dst) = open_pair(src, dst, Open::Existing, options.policy, false)?;
    let mut report = CheckReport {
        source: src.tree.url().to_string(),
        destination: dst.tree.url().to_string(),
        matched: Tally::default(),
        missing_on_destination: Tally::default(),
        missing_on_source: Tally::default(),
        size_differs: Tally::default(),
        content_differs: Tally::default(),
        errors: Tally::default(),
        differences: Vec::new(),
        differences_truncated: false,
        error_list: Vec::new(),
        error_list_truncated: false,
        complete: true,
        elapsed_seconds: 0.0,
    };
    let (src, dst) = (&src, &dst);
    // `buffered` (not `buffer_unordered`): differences come out in key order.
    let mut found = merge(src.list(), src.tree.url(), dst.list(), dst.tree.url())
        .map(|pair| async move {
            match pair {
                Err(e) => Found::Fatal(describe(&e)),
                Ok(Pair::Unreadable { key, reason }) => Found::Failed {
                    key,
                    bytes: 0,
                    error: reason,
                },
                Ok(Pair::Src(s)) => Found::Differs(Difference {
                    path: s.key,
                    kind: DifferenceKind::MissingOnDestination,
                    source_size: Some(s.size),
                    destination_size: None,
                }),
                Ok(Pair::Dst(d)) => Found::Differs(Difference {
                    path: d.key,
                    kind: DifferenceKind::MissingOnSource,
                    source_size: None,
                    destination_size: Some(d.size),
                }),
                Ok(Pair::Both(s, d)) => compare(src, dst, s, d, progress).await,
            }
        })
        .buffered(options.checkers);
    while let Some(f) = found.next().await {
        match f {
            Found::Matched { key, bytes } => {
                report.matched.add(bytes);
                progress.finished(&key, Event::Matched);
            }
            Found::Differs(d) => report.differ(d, progress),
            Found::Failed { key, bytes, error } => report.fail(Some(key), bytes, error, progress),
            Found::Fatal(error) => {
                report.complete = false;
                report.fail(None, 0, error, progress);
            }
        }
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn compare(src: &Side, dst: &Side, s: Entry, d: Entry, progress: &dyn Progress) -> Found {
    if s.size != d.size {
        return Found::Differs(Difference {
            path: s.key,
            kind: DifferenceKind::SizeDiffers,
            source_size: Some(s.size),
            destination_size: Some(d.size),
        });
    }
    let hashes = async {
        let (from, to) = (src.path(&s.key)?, dst.path(&d.key)?);
        futures::try_join!(
            content_md5(&src.store, &from, &s, src.tree.backend(), progress),
            content_md5(&dst.store, &to, &d, dst.tree.backend(), progress),
        )
    }
    .await;
    match hashes {
        Ok((a, b)) if a == b => Found::Matched {
            key: s.key,
            bytes: s.size,
        },
        Ok(_) => Found::Differs(Difference {
            path: s.key,
            kind: DifferenceKind::ContentDiffers,
            source_size: Some(s.size),
            destination_size: Some(d.size),
        }),
        Err(e) => Found::Failed {
            key: s.key,
            bytes: s.size,
            error: describe(&e),
        },
    }
}
