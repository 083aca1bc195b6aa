//! Research export: consented, de-identified conversation history as Parquet datasets.
//!
//! This crate has no HTTP in it. A run ([`run::run`]) reads one pinned point of a mnemo store
//! and writes or updates a dataset ([`target::Target`]) of two Parquet tables
//! ([`dataset`]): only users who consent under the tenant's policy ([`ConsentPolicy`]), ids
//! replaced by keyed pseudonyms ([`pseudonym`], keys in [`keys`]), text scrubbed of personal
//! data and secrets ([`scrub`]). [`jobs`] runs exports in a server and keeps their status.
//! See RFC 0009.

pub mod consent;
pub mod dataset;
mod error;
pub mod jobs;
pub mod keys;
pub mod pseudonym;
pub mod run;
pub mod scrub;
pub mod target;

pub use consent::ConsentPolicy;
pub use error::ExportError;
pub use keys::KeyRing;
pub use run::{run, Filters, Mode, Outcome, Part, Progress, ProgressReport, Request, Source};
pub use target::Target;
