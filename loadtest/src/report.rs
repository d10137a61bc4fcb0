//! Results: the serialisable [`Report`], the stdout table, and target-vs-target ratios.
//!
//! Units: latencies in µs (tables print ms), MB = 10^6 bytes, rates per second of measured
//! wall time (the sum of a target's measured phases, tails included). `req_per_s` counts
//! successful operations; `requests` counts attempts.

use crate::config::RunConfig;
use crate::runner::TargetRun;
use crate::stats::{OpKind, OpStats, Sample};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Percentiles kept for the distribution chart (and in the JSON).
pub const CURVE_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Latency summary, µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// One percentile point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// Percentile, 0–100.
    pub percentile: f64,
    /// Latency at it, µs.
    pub us: u64,
}

/// Results of one operation kind on one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpReport {
    /// Operation name (`blob-get`, `pull`, ...).
    pub op: String,
    /// True for whole-image / whole-walk operations made of several requests.
    pub composite: bool,
    /// Attempts.
    pub requests: u64,
    /// Failed attempts.
    pub errors: u64,
    /// Content bytes of successful attempts.
    pub bytes: u64,
    /// MB (10^6 B) per second.
    pub mb_per_s: f64,
    /// Successful operations per second.
    pub req_per_s: f64,
    /// Latency of successful attempts.
    pub latency_us: Latency,
    /// Failures by kind (`http_404`, `connect`, `digest_mismatch`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Latency distribution at [`CURVE_PERCENTILES`].
    pub percentiles: Vec<PercentilePoint>,
}

/// Results for one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetReport {
    /// `A`, `B`, ...
    pub label: String,
    /// Base URL.
    pub url: String,
    /// Untimed setup, seconds.
    pub setup_s: f64,
    /// Measured wall time, seconds.
    pub measured_s: f64,
    /// Per-operation results, in table order.
    pub ops: Vec<OpReport>,
    /// Per-second request/byte counts over measured time.
    pub timeline: Vec<Sample>,
}

impl TargetReport {
    /// The report of `op`, if it ran.
    pub fn op(&self, op: &str) -> Option<&OpReport> {
        self.ops.iter().find(|o| o.op == op)
    }
}

/// `other / base` for one operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// Operation.
    pub op: String,
    /// Base target label.
    pub base: String,
    /// Compared target label.
    pub other: String,
    /// Ratio of successful ops/s.
    pub req_per_s: f64,
    /// Ratio of MB/s.
    pub mb_per_s: f64,
    /// Ratio of median latency.
    pub p50: f64,
    /// Ratio of p99 latency.
    pub p99: f64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The configuration (credentials omitted).
    pub config: serde_json::Value,
    /// One entry per target.
    pub targets: Vec<TargetReport>,
    /// Every other target against the first.
    pub comparisons: Vec<Comparison>,
}

impl Report {
    /// Builds the report from finished target runs.
    pub fn build(cfg: &RunConfig, runs: &[TargetRun]) -> Report {
        let targets: Vec<TargetReport> = runs.iter().map(target_report).collect();
        let comparisons = compare(&targets);
        Report {
            scenario: cfg.scenario.name().to_owned(),
            config: serde_json::to_value(cfg).unwrap_or_default(),
            targets,
            comparisons,
        }
    }

    /// Total errors across targets and request (non-composite) operations.
    pub fn total_errors(&self) -> u64 {
        self.targets
            .iter()
            .flat_map(|t| &t.ops)
            .filter(|o| !o.composite)
            .map(|o| o.errors)
            .sum()
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for t in &self.targets {
            let _ = writeln!(
                s,
                "\n== {} {}  scenario {}  measured {:.2}s  (setup {:.1}s)",
                t.label, t.url, self.scenario, t.measured_s, t.setup_s
            );
            let _ = writeln!(
                s,
                "{:<13} {:>9} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "op",
                "requests",
                "errors",
                "MB/s",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms"
            );
            for o in &t.ops {
                let l = &o.latency_us;
                let _ = writeln!(
                    s,
                    "{:<13} {:>9} {:>7} {:>9.1} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    o.op,
                    o.requests,
                    o.errors,
                    o.mb_per_s,
                    o.req_per_s,
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max)
                );
                if !o.errors_by_kind.is_empty() {
                    let kinds: Vec<String> = o
                        .errors_by_kind
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let _ = writeln!(s, "  └ errors: {}", kinds.join(" "));
                }
            }
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(
                s,
                "\n== ratios (other / base; >1 means more throughput or more latency)"
            );
            let _ = writeln!(
                s,
                "{:<13} {:>6} {:>9} {:>9} {:>9} {:>9}",
                "op", "pair", "req/s", "MB/s", "p50", "p99"
            );
            for c in &self.comparisons {
                let _ = writeln!(
                    s,
                    "{:<13} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    c.op,
                    format!("{}/{}", c.other, c.base),
                    c.req_per_s,
                    c.mb_per_s,
                    c.p50,
                    c.p99
                );
            }
        }
        s
    }
}

/// Microseconds as milliseconds with precision that suits the magnitude.
fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.3}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn target_report(t: &TargetRun) -> TargetReport {
    let secs = t.measured.as_secs_f64();
    TargetReport {
        label: t.label.clone(),
        url: t.url.clone(),
        setup_s: t.setup.as_secs_f64(),
        measured_s: secs,
        ops: OpKind::ALL
            .iter()
            .filter_map(|k| t.stats.get(k).map(|s| op_report(*k, s, secs)))
            .collect(),
        timeline: t.timeline.clone(),
    }
}

fn op_report(kind: OpKind, s: &OpStats, secs: f64) -> OpReport {
    let h = &s.hist;
    let ok = s.requests - s.errors;
    let per_s = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p / 100.0)
        }
    };
    OpReport {
        op: kind.name().to_owned(),
        composite: kind.is_composite(),
        requests: s.requests,
        errors: s.errors,
        bytes: s.bytes,
        mb_per_s: per_s(s.bytes as f64 / 1e6),
        req_per_s: per_s(ok as f64),
        latency_us: Latency {
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: q(50.0),
            p90: q(90.0),
            p99: q(99.0),
            p999: q(99.9),
            max: if h.is_empty() { 0 } else { h.max() },
        },
        errors_by_kind: s
            .errors_by_kind
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        percentiles: CURVE_PERCENTILES
            .iter()
            .map(|p| PercentilePoint {
                percentile: *p,
                us: q(*p),
            })
            .collect(),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn compare(targets: &[TargetReport]) -> Vec<Comparison> {
    let Some((base, others)) = targets.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for other in others {
        for b in &base.ops {
            let Some(o) = other.op(&b.op) else { continue };
            out.push(Comparison {
                op: b.op.clone(),
                base: base.label.clone(),
                other: other.label.clone(),
                req_per_s: ratio(o.req_per_s, b.req_per_s),
                mb_per_s: ratio(o.mb_per_s, b.mb_per_s),
                p50: ratio(o.latency_us.p50 as f64, b.latency_us.p50 as f64),
                p99: ratio(o.latency_us.p99 as f64, b.latency_us.p99 as f64),
            });
        }
    }
    out
}
