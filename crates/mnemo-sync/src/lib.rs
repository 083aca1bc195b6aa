//! # mnemo-sync
//!
//! Copies and verifies trees of objects between a local directory, S3 and Azure Blob: the
//! engine of `mnemo sync` and `mnemo check` (see `docs/sync.md`); and consistent replicas of
//! a live store (`docs/rfcs/0011-replicas.md`).
//!
//! * [`sync`] makes a destination tree hold what a source tree holds, copying only what
//!   differs (and, asked, deleting what the source lacks);
//! * [`check`] compares two trees by size and content hash;
//! * [`copy_object`] copies one object between two stores, streamed, in parts when large,
//!   on the server when both are one bucket;
//! * [`replica`] keeps a consistent replica of a live mnemo store (`mnemo replicate`), and
//!   promotes one to a writable store (`mnemo promote`).
//!
//! Listings are streamed and merge-joined in byte order of keys, so memory does not grow
//! with the number of objects. Progress goes to a [`Progress`]; the library prints nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mnemo_sync::SyncError> {
//! use mnemo_sync::{sync, NoProgress, SyncOptions, Tree};
//! let src = Tree::parse("/srv/mnemo-data/store")?;
//! let dst = Tree::parse("s3://backups/mnemo")?;
//! let summary = sync(&src, &dst, &SyncOptions::default(), &NoProgress).await?;
//! assert!(summary.succeeded());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod check;
mod copy;
mod error;
mod merge;
mod progress;
pub mod replica;
mod run;
mod tree;
mod walk;

pub use check::{check, CheckOptions, CheckReport, Difference, DifferenceKind};
pub use copy::{copy_object, CopyParams, SERVER_SIDE_COPY_MAX};
pub use error::SyncError;
pub use mnemo_storage::RemotePolicy;
pub use progress::{Event, NoProgress, Progress};
pub use run::{sync, ObjectError, Summary, SyncOptions, Tally, MAX_LISTED};
pub use tree::Tree;
