//! Run configuration: one struct, documented defaults, `validate()` before anything runs.

use crate::auth::Credentials;
use crate::data::BLOB_SIZE_MAX;
use crate::error::Error;
use crate::oci::UploadMode;
use serde::Serialize;
use std::time::Duration;

/// Duration of a run given neither `--duration` nor `--requests`.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(10);
/// Hard cap on the measured time per target, whatever the flags say: every run ends.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Cap on a requests-bounded run's time when no `--duration` is given.
pub const REQUESTS_ONLY_DURATION_CAP: Duration = Duration::from_secs(600);
/// Most concurrent workers per target.
pub const CONCURRENCY_MAX: usize = 4096;
/// Most targets in one run.
pub const TARGETS_MAX: usize = 16;
/// Most layers per image.
pub const LAYERS_MAX: u32 = 128;
/// Most distinct items (images, blobs, repos) a scenario sets up.
pub const COUNT_MAX: u64 = 100_000;
/// Most interleaved rounds.
pub const ROUNDS_MAX: u32 = 100;

/// The workload to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// `docker pull`: manifest by tag, config, layers concurrently.
    Pull,
    /// Push images of `--layers` layers of `--size` bytes, new content each time.
    Push,
    /// Pulls and pushes, `--push-ratio` of operations being pushes.
    Mixed,
    /// Metadata path: HEAD/GET of tiny blobs and manifest GETs by tag.
    Small,
    /// Catalog and tags/list walks following `Link` pagination.
    List,
    /// Repeated GETs of one blob of `--size` bytes (raw throughput).
    BlobGet,
}

impl ScenarioKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Pull => "pull",
            ScenarioKind::Push => "push",
            ScenarioKind::Mixed => "mixed",
            ScenarioKind::Small => "small",
            ScenarioKind::List => "list",
            ScenarioKind::BlobGet => "blob-get",
        }
    }
}

/// Everything a run needs. Fields left `None` take the scenario's default (see the getters).
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// Workload.
    pub scenario: ScenarioKind,
    /// Registry base URLs (`http://host:port`); each is driven in turn, interleaved.
    pub targets: Vec<String>,
    /// Basic credentials (also used to obtain bearer tokens). Never serialised.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
    /// Concurrent workers per target. Default 16.
    pub concurrency: usize,
    /// Measured time per target (split across rounds).
    pub duration: Option<Duration>,
    /// Operations per target (split across rounds).
    pub requests: Option<u64>,
    /// Unmeasured warm-up per target before its first round. Default 0.
    pub warmup: Duration,
    /// Interleaved rounds (A,B,A,B...). Default 1 for one target, 2 for several.
    pub rounds: Option<u32>,
    /// Blob/layer size in bytes. Default: 4 KiB (small), 1 MiB (blob-get, list), 4 MiB
    /// (pull, push, mixed).
    pub size: Option<u64>,
    /// Distinct items: images (pull, small), blobs (blob-get), repos (list), and for push
    /// the number of images to push. Defaults: pull 4, small 256, list 20, blob-get 1.
    pub count: Option<u64>,
    /// Layers per image. Default 3 (1 for small).
    pub layers: Option<u32>,
    /// Seed of all generated content and choices.
    pub seed: u64,
    /// How blobs are uploaded (push, mixed).
    pub upload_mode: UploadMode,
    /// PATCH size for `UploadMode::Chunked`. Default 5 MiB.
    pub chunk_size: u64,
    /// Fraction of mixed operations that are pushes. Default 0.1.
    pub push_ratio: f64,
    /// `n` for listings. Default 10.
    pub page_size: u32,
    /// Tags per repository in the list scenario. Default 20.
    pub tags: u32,
    /// Blobs fetched/pushed concurrently within one image (docker's default is 3). Default 3.
    pub image_parallelism: usize,
    /// Timeout for a response head and for each body frame. Default 30 s.
    pub timeout: Duration,
    /// Repository name prefix. Default `loadtest`.
    pub repo_prefix: String,
    /// Draw a live progress line on stderr (when it is a terminal).
    pub progress: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            scenario: ScenarioKind::BlobGet,
            targets: Vec::new(),
            credentials: None,
            concurrency: 16,
            duration: None,
            requests: None,
            warmup: Duration::ZERO,
            rounds: None,
            size: None,
            count: None,
            layers: None,
            seed: 1,
            upload_mode: UploadMode::Put,
            chunk_size: 5 << 20,
            push_ratio: 0.1,
            page_size: 10,
            tags: 20,
            image_parallelism: 3,
            timeout: Duration::from_secs(30),
            repo_prefix: "loadtest".into(),
            progress: true,
        }
    }
}

impl RunConfig {
    /// Blob/layer size for this scenario.
    pub fn size(&self) -> u64 {
        self.size.unwrap_or(match self.scenario {
            ScenarioKind::Small => 4 << 10,
            ScenarioKind::BlobGet | ScenarioKind::List => 1 << 20,
            _ => 4 << 20,
        })
    }

    /// Distinct items for this scenario (`None` for an unbounded push).
    pub fn count(&self) -> Option<u64> {
        self.count.or(match self.scenario {
            ScenarioKind::Pull | ScenarioKind::Mixed => Some(4),
            ScenarioKind::Small => Some(256),
            ScenarioKind::List => Some(20),
            ScenarioKind::BlobGet => Some(1),
            ScenarioKind::Push => None,
        })
    }

    /// Layers per image.
    pub fn layers(&self) -> u32 {
        self.layers.unwrap_or(match self.scenario {
            ScenarioKind::Small | ScenarioKind::List => 1,
            _ => 3,
        })
    }

    /// Interleaved rounds.
    pub fn rounds(&self) -> u32 {
        self.rounds
            .unwrap_or(if self.targets.len() > 1 { 2 } else { 1 })
    }

    /// Operations per target: `--requests`, further bounded by `--count` for push.
    pub fn requests(&self) -> Option<u64> {
        match (self.scenario, self.requests, self.count) {
            (ScenarioKind::Push, Some(r), Some(c)) => Some(r.min(c)),
            (ScenarioKind::Push, None, Some(c)) => Some(c),
            (_, r, _) => r,
        }
    }

    /// Measured time per target: `--duration`, else the default when nothing bounds the
    /// run, else the cap for requests-bounded runs.
    pub fn duration(&self) -> Duration {
        match (self.duration, self.requests()) {
            (Some(d), _) => d.min(DURATION_MAX),
            (None, None) => DURATION_DEFAULT,
            (None, Some(_)) => REQUESTS_ONLY_DURATION_CAP,
        }
    }

    /// Fails fast with a message naming the offending field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.targets.is_empty() || self.targets.len() > TARGETS_MAX {
            return bad(format!("targets: need 1..={TARGETS_MAX} --target URLs"));
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return bad(format!("concurrency: must be 1..={CONCURRENCY_MAX}"));
        }
        if self.size() > BLOB_SIZE_MAX {
            return bad(format!("size: at most {BLOB_SIZE_MAX} bytes"));
        }
        if !(1..=LAYERS_MAX).contains(&self.layers()) {
            return bad(format!("layers: must be 1..={LAYERS_MAX}"));
        }
        if self.count().is_some_and(|c| c == 0 || c > COUNT_MAX) {
            return bad(format!("count: must be 1..={COUNT_MAX}"));
        }
        if !(1..=ROUNDS_MAX).contains(&self.rounds()) {
            return bad(format!("rounds: must be 1..={ROUNDS_MAX}"));
        }
        if !(0.0..=1.0).contains(&self.push_ratio) {
            return bad("push_ratio: must be within 0..=1".into());
        }
        if !(1..=10_000).contains(&self.page_size) || !(1..=10_000).contains(&self.tags) {
            return bad("page_size, tags: must be 1..=10000".into());
        }
        if self.chunk_size == 0 || self.chunk_size > 1 << 30 {
            return bad("chunk_size: must be 1..=1 GiB".into());
        }
        if !(1..=64).contains(&self.image_parallelism) {
            return bad("image_parallelism: must be 1..=64".into());
        }
        if self.timeout.is_zero() || self.warmup > DURATION_MAX {
            return bad("timeout must be > 0 and warmup <= 24 h".into());
        }
        if self.requests == Some(0) || self.duration.is_some_and(|d| d.is_zero()) {
            return bad("requests/duration: must be > 0".into());
        }
        let prefix_ok = !self.repo_prefix.is_empty()
            && self
                .repo_prefix
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.'));
        if !prefix_ok {
            return bad("repo_prefix: lowercase [a-z0-9/._-] only".into());
        }
        Ok(())
    }
}

/// Parses a byte size: `4096`, `4k`/`4KiB`, `256MiB`/`256m`, `1GiB`/`1g` (binary units;
/// `KB`/`MB`/`GB` are decimal).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parses a duration: `30` (seconds), `30s`, `500ms`, `2m`, `1h`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_are_bounded() {
        let mut c = RunConfig {
            targets: vec!["http://x".into()],
            ..RunConfig::default()
        };
        assert_eq!(c.duration(), DURATION_DEFAULT);
        c.requests = Some(5);
        assert_eq!(c.duration(), REQUESTS_ONLY_DURATION_CAP);
        assert!(c.validate().is_ok());
        c.concurrency = 0;
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("concurrency")));
    }
}
