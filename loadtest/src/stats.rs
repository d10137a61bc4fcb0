//! Measurement: per-worker recorders merged after a phase, plus shared live counters for
//! the progress line and the per-second throughput timeline.
//!
//! Invariant: latency histograms hold successful operations only, in microseconds (an error
//! that fails fast would otherwise flatter the percentiles); errors are counted by kind.
//! `requests` counts attempts, successful or not. Workers never share a histogram, so the
//! hot path takes no lock: a record is a histogram increment and three relaxed atomics.

use crate::error::{ErrorKind, ReqError};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Highest latency the histograms track (1 hour, in µs); longer ones saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant figures kept by the histograms (0.1% relative error).
const HIST_SIGFIGS: u8 = 3;

macro_rules! op_kinds {
    ($($variant:ident => $name:literal, composite: $comp:literal;)*) => {
        /// What an operation is. Composite kinds (a whole image pull/push, a listing walk)
        /// are made of the request kinds; the live counters count requests only.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum OpKind { $(
            #[doc = $name]
            $variant,
        )* }

        impl OpKind {
            /// Every kind, in table order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),*];

            /// Name used in tables and JSON.
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$variant => $name),* }
            }

            /// True for kinds made of several requests.
            pub fn is_composite(self) -> bool {
                match self { $(OpKind::$variant => $comp),* }
            }
        }
    };
}

op_kinds! {
    Pull => "pull", composite: true;
    Push => "push", composite: true;
    CatalogWalk => "catalog-walk", composite: true;
    TagsWalk => "tags-walk", composite: true;
    ManifestGet => "manifest-get", composite: false;
    ManifestPut => "manifest-put", composite: false;
    BlobGet => "blob-get", composite: false;
    BlobHead => "blob-head", composite: false;
    BlobPush => "blob-push", composite: false;
    CatalogPage => "catalog-page", composite: false;
    TagsPage => "tags-page", composite: false;
}

/// Counters and latency histogram of one operation kind.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Attempts.
    pub requests: u64,
    /// Failed attempts.
    pub errors: u64,
    /// Content bytes moved by successful attempts.
    pub bytes: u64,
    /// Latency of successful attempts, µs.
    pub hist: Histogram<u64>,
    /// Failures by kind.
    pub errors_by_kind: BTreeMap<ErrorKind, u64>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            requests: 0,
            errors: 0,
            bytes: 0,
            // Bounds are constants within hdrhistogram's limits; failure would be our bug.
            #[allow(clippy::expect_used)]
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, HIST_SIGFIGS)
                .expect("static histogram bounds are valid"),
            errors_by_kind: BTreeMap::new(),
        }
    }

    /// Adds another recorder's numbers.
    pub fn merge(&mut self, o: &OpStats) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes += o.bytes;
        // Same bounds on both sides, so add cannot fail; saturate instead of panicking.
        let _ = self.hist.add(&o.hist);
        for (k, v) in &o.errors_by_kind {
            *self.errors_by_kind.entry(*k).or_default() += v;
        }
    }
}

/// Counters shared by all workers of a target, read by the progress line and the sampler.
#[derive(Default, Debug)]
pub struct Live {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Content bytes moved.
    pub bytes: AtomicU64,
    /// Failed requests.
    pub errors: AtomicU64,
}

impl Live {
    /// A consistent-enough snapshot `(requests, bytes, errors)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// A worker's private recorder.
pub struct Recorder {
    ops: Vec<Option<OpStats>>,
    live: std::sync::Arc<Live>,
    /// Last error seen, for a debug log line (not counted anywhere).
    pub last_error: Option<String>,
}

impl Recorder {
    /// A recorder reporting live counts to `live`.
    pub fn new(live: std::sync::Arc<Live>) -> Recorder {
        Recorder {
            ops: vec![None; OpKind::ALL.len()],
            live,
            last_error: None,
        }
    }

    /// Records an operation that started at `start`; `Ok(bytes)` or an error.
    pub fn record(&mut self, op: OpKind, start: Instant, result: &Result<u64, ReqError>) {
        self.record_elapsed(op, start.elapsed(), result);
    }

    /// Records an operation that took `elapsed`.
    pub fn record_elapsed(
        &mut self,
        op: OpKind,
        elapsed: std::time::Duration,
        result: &Result<u64, ReqError>,
    ) {
        let us = elapsed.as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
        let s = self.ops[op as usize].get_or_insert_with(OpStats::new);
        s.requests += 1;
        let counted = !op.is_composite();
        match result {
            Ok(bytes) => {
                let bytes = *bytes;
                s.bytes += bytes;
                s.hist.saturating_record(us.max(1));
                if counted {
                    self.live.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Err(e) => {
                s.errors += 1;
                *s.errors_by_kind.entry(e.kind).or_default() += 1;
                if counted {
                    self.live.errors.fetch_add(1, Ordering::Relaxed);
                }
                if self.last_error.is_none() {
                    tracing::debug!(op = op.name(), error = %e, "request failed");
                }
                self.last_error = Some(e.to_string());
            }
        }
        if counted {
            self.live.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves this recorder's numbers into `into`.
    pub fn merge_into(self, into: &mut BTreeMap<OpKind, OpStats>) {
        for (i, s) in self.ops.into_iter().enumerate() {
            if let (Some(s), Some(kind)) = (s, OpKind::ALL.get(i)) {
                into.entry(*kind).or_insert_with(OpStats::new).merge(&s);
            }
        }
    }
}

/// One per-second throughput sample.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds of measured time since the target's first measured phase began.
    pub t_s: f64,
    /// Requests completed in the interval.
    pub requests: u64,
    /// Bytes moved in the interval.
    pub bytes: u64,
    /// Errors in the interval.
    pub errors: u64,
    /// Interval length (≈ 1 s; shorter for a phase's last sample).
    pub interval_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn kinds_index_matches_all() {
        for (i, k) in OpKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn records_and_merges() {
        let live = Arc::new(Live::default());
        let mut a = Recorder::new(live.clone());
        let t = Instant::now();
        a.record(OpKind::BlobGet, t, &Ok(10));
        a.record(
            OpKind::BlobGet,
            t,
            &Err(ReqError::new(ErrorKind::DigestMismatch, "x")),
        );
        a.record(OpKind::Pull, t, &Ok(10));
        let mut m = BTreeMap::new();
        a.merge_into(&mut m);
        let b = &m[&OpKind::BlobGet];
        assert_eq!((b.requests, b.errors, b.bytes), (2, 1, 10));
        assert_eq!(b.hist.len(), 1);
        assert_eq!(b.errors_by_kind[&ErrorKind::DigestMismatch], 1);
        // The composite pull is not double counted live.
        assert_eq!(live.snapshot(), (2, 10, 1));
    }
}
