//! # mnemo-embed (in progress)
