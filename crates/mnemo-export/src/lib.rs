//! Research export: consented, de-identified conversation history as Parquet datasets.
//!
//! This crate has no HTTP in it. It is being built in parts (see RFC 0009); today it holds
//! the scrubber ([`scrub`]), which replaces personal data and secrets in message text with
//! typed placeholders, keyed pseudonyms for ids ([`pseudonym`]), and the dataset's layout and
//! its Parquet files ([`dataset`]).

pub mod consent;
pub mod dataset;
mod error;
pub mod pseudonym;
pub mod scrub;
pub mod target;

pub use consent::ConsentPolicy;
pub use error::ExportError;
