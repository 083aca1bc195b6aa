//! # mnemo-search (in progress)
