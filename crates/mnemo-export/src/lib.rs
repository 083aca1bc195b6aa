//! Research export: consented, de-identified conversation history as Parquet datasets.
//!
//! This crate has no HTTP in it. It is being built in parts; today it holds the scrubber
//! ([`scrub`]), which replaces personal data and secrets in message text with typed
//! placeholders.

pub mod scrub;
