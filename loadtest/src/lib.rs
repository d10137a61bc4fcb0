//! `berth-loadtest`: a load harness for any OCI Distribution registry over plain HTTP.
//!
//! The principal type is [`RunConfig`] (one scenario, one or more targets, bounds), run by
//! [`run`], which returns a [`Report`] (per target × operation: counts, bytes, errors by
//! kind, latency percentiles, a per-second timeline), rendered as a table, JSON or SVG.
//! [`fleet`] is the other entry point: it starts `berth` nodes and measures a fleet pull.
//!
//! Invariants:
//! - It speaks HTTP only, and only the OCI Distribution API (plus `/metrics` in fleet mode):
//!   it knows nothing of berth's internals and works against any registry.
//! - Every run is bounded: by `--duration` and/or `--requests`, a default duration when
//!   neither is given, a hard cap on measured time, and a per-request head/frame timeout.
//!   Every loop, page walk, buffered body and cache has a named limit.
//! - Every byte downloaded is verified against its digest while it streams; no body is
//!   buffered whole except manifests and listings (bounded by `MANIFEST_SIZE_MAX`).
//! - Content is deterministic from `--seed`: the same flags push the same bytes.
//! - A bad server response is a counted error ([`ErrorKind`]), never a panic.
//! - Setup (pushing what a scenario reads) is never timed.

#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
pub mod data;
pub mod error;
pub mod fleet;
pub mod oci;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;

pub use config::{RunConfig, ScenarioKind};
pub use error::{Error, ErrorKind, ReqError};
pub use oci::UploadMode;
pub use report::Report;
pub use runner::run;
