//! pageviews: an example job on regroup's worker runtime, and what `docs/writing-a-job.md`
//! walks through.
//!
//! Input: a directory of append-only files, one page view per line (`PAGE MILLIS`; [`input`]).
//! State, per page: views and total view time, keyed by page, so partitioned by key group; and
//! per key group and file, the byte offset up to which that key group's lines are in the state
//! ([`job`]). Output: the totals per page in a checkpoint, checked against the input by
//! `pageviews verify` ([`check`]).

pub mod check;
pub mod input;
pub mod job;
