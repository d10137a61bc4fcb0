//! Drives a scenario against every target: setup (untimed), warm-up (discarded), then
//! `rounds` measured phases per target interleaved A,B,A,B so that drift of the machine
//! (page cache, thermal, other tenants) hits every target alike.
//!
//! A phase is bounded twice: workers stop taking new operations at the deadline or when the
//! phase's share of `requests` is used up, and an operation still running at
//! `deadline + timeout` is abandoned and counted as a timeout. So every run ends by itself.

use crate::client::{Client, ClientConfig};
use crate::config::RunConfig;
use crate::error::{Error, ErrorKind, ReqError};
use crate::report::Report;
use crate::scenario::Workload;
use crate::stats::{Live, OpKind, OpStats, Recorder, Sample};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Timeline sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One target's state across the run.
pub struct TargetRun {
    /// `A`, `B`, ... in `--target` order.
    pub label: String,
    /// Base URL.
    pub url: String,
    client: Arc<Client>,
    workload: Arc<Workload>,
    next_seq: Arc<AtomicU64>,
    /// Merged measured stats.
    pub stats: BTreeMap<OpKind, OpStats>,
    /// Total measured wall time.
    pub measured: Duration,
    /// Untimed setup time.
    pub setup: Duration,
    /// Per-second samples over measured time.
    pub timeline: Vec<Sample>,
}

/// Runs `cfg` to completion and returns the report.
pub async fn run(cfg: &RunConfig) -> Result<Report, Error> {
    cfg.validate()?;
    let mut targets = Vec::with_capacity(cfg.targets.len());
    for (i, url) in cfg.targets.iter().enumerate() {
        targets.push(prepare(cfg, i, url).await?);
    }
    let rounds = cfg.rounds();
    let per_round = cfg.duration() / rounds;
    for round in 0..rounds {
        for t in targets.iter_mut() {
            if round == 0 && !cfg.warmup.is_zero() {
                let label = format!("{} warmup", t.label);
                run_phase(cfg, t, cfg.warmup, None, false, &label).await;
            }
            let quota = cfg.requests().map(|r| share(r, rounds, round));
            if quota == Some(0) {
                continue;
            }
            let label = format!("{} round {}/{}", t.label, round + 1, rounds);
            run_phase(cfg, t, per_round, quota, true, &label).await;
        }
    }
    Ok(Report::build(cfg, &targets))
}

/// Round `round`'s share of `total` operations (the first rounds take the remainder).
fn share(total: u64, rounds: u32, round: u32) -> u64 {
    let (q, r) = (total / u64::from(rounds), total % u64::from(rounds));
    q + u64::from(u64::from(round) < r)
}

async fn prepare(cfg: &RunConfig, i: usize, url: &str) -> Result<TargetRun, Error> {
    let ccfg = ClientConfig {
        pool_idle_per_host: cfg.concurrency * cfg.image_parallelism,
        timeout: cfg.timeout,
        credentials: cfg.credentials.clone(),
    };
    let client = Client::new(url, &ccfg).map_err(|reason| Error::Target {
        url: url.to_owned(),
        reason,
    })?;
    let label = target_label(i);
    note(
        cfg,
        &format!("[{label}] setup {} on {url}", cfg.scenario.name()),
    );
    let t = Instant::now();
    let workload = Workload::setup(cfg, &client)
        .await
        .map_err(|source| Error::Setup {
            target: url.to_owned(),
            source,
        })?;
    let setup = t.elapsed();
    note(
        cfg,
        &format!("[{label}] setup done in {:.1}s", setup.as_secs_f64()),
    );
    Ok(TargetRun {
        label,
        url: url.to_owned(),
        client: Arc::new(client),
        workload: Arc::new(workload),
        next_seq: Arc::new(AtomicU64::new(0)),
        stats: BTreeMap::new(),
        measured: Duration::ZERO,
        setup,
        timeline: Vec::new(),
    })
}

/// `A`..`Z`, then `T26`...
pub fn target_label(i: usize) -> String {
    match u8::try_from(i) {
        Ok(b) if b < 26 => char::from(b'A' + b).to_string(),
        _ => format!("T{i}"),
    }
}

fn note(cfg: &RunConfig, msg: &str) {
    if cfg.progress {
        eprintln!("{msg}");
    }
}

/// One phase: `concurrency` workers until the deadline or the quota.
async fn run_phase(
    cfg: &RunConfig,
    t: &mut TargetRun,
    duration: Duration,
    quota: Option<u64>,
    measure: bool,
    label: &str,
) {
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let deadline = start + duration;
    let hard_deadline = deadline + cfg.timeout;
    let first_seq = t.next_seq.load(Ordering::Relaxed);
    let end_seq = quota.map(|q| first_seq + q);
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (client, workload, next) = (t.client.clone(), t.workload.clone(), t.next_seq.clone());
        let mut rec = Recorder::new(live.clone());
        handles.push(tokio::spawn(async move {
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if end_seq.is_some_and(|e| seq >= e) {
                    break;
                }
                let op = workload.step(&client, seq, &mut rec);
                let left = hard_deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, op).await.is_err() {
                    let e = ReqError::new(ErrorKind::Timeout, "abandoned at phase deadline");
                    rec.record_elapsed(workload.main_op(), left, &Err(e));
                }
            }
            rec
        }));
    }
    let offset = t.measured.as_secs_f64();
    let samples = drive(
        cfg,
        label,
        &live,
        start,
        offset,
        handles,
        &mut t.stats,
        measure,
    )
    .await;
    if let Some(e) = end_seq {
        t.next_seq.store(e, Ordering::Relaxed);
    }
    if measure {
        t.measured += start.elapsed();
        t.timeline.extend(samples);
    }
}

/// Waits for the workers while drawing progress and sampling throughput; merges their
/// recorders into `stats` when `measure`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    cfg: &RunConfig,
    label: &str,
    live: &Live,
    start: Instant,
    offset_s: f64,
    handles: Vec<tokio::task::JoinHandle<Recorder>>,
    stats: &mut BTreeMap<OpKind, OpStats>,
    measure: bool,
) -> Vec<Sample> {
    let tty = cfg.progress && std::io::stderr().is_terminal();
    let joined = futures_util::future::join_all(handles);
    tokio::pin!(joined);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut samples = Vec::new();
    let mut last = (start, live.snapshot());
    let results = loop {
        tokio::select! {
            r = &mut joined => break r,
            _ = tick.tick() => {
                let now = Instant::now();
                if now.duration_since(last.0) >= SAMPLE_EVERY {
                    samples.push(sample(live, &mut last, now, start, offset_s));
                }
                if tty {
                    progress_line(label, live, start);
                }
            }
        }
    };
    let now = Instant::now();
    if now.duration_since(last.0) > Duration::from_millis(50) {
        samples.push(sample(live, &mut last, now, start, offset_s));
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let (reqs, bytes, errs) = live.snapshot();
    note(
        cfg,
        &format!(
            "[{label}] {reqs} requests, {} MB, {errs} errors in {:.1}s",
            bytes / 1_000_000,
            start.elapsed().as_secs_f64()
        ),
    );
    for r in results {
        match r {
            Ok(rec) if measure => rec.merge_into(stats),
            Ok(_) => {}
            // A worker panicked: our bug; its numbers are lost, say so loudly.
            Err(e) => tracing::error!(error = %e, "worker task failed"),
        }
    }
    samples
}

fn sample(
    live: &Live,
    last: &mut (Instant, (u64, u64, u64)),
    now: Instant,
    start: Instant,
    offset_s: f64,
) -> Sample {
    let snap = live.snapshot();
    let s = Sample {
        t_s: offset_s + now.duration_since(start).as_secs_f64(),
        requests: snap.0 - (last.1).0,
        bytes: snap.1 - (last.1).1,
        errors: snap.2 - (last.1).2,
        interval_s: now.duration_since(last.0).as_secs_f64(),
    };
    *last = (now, snap);
    s
}

fn progress_line(label: &str, live: &Live, start: Instant) {
    let (reqs, bytes, errs) = live.snapshot();
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2K[{label}] {secs:6.1}s  {reqs:>10} req  {:>9.0} req/s  {:>9.1} MB/s  {errs} errors",
        reqs as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, rounds) in [(10, 3), (3, 4), (0, 2), (7, 1)] {
            let sum: u64 = (0..rounds).map(|r| share(total, rounds, r)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn labels() {
        assert_eq!(target_label(0), "A");
        assert_eq!(target_label(25), "Z");
        assert_eq!(target_label(26), "T26");
    }
}
