//! End-to-end tests: the real `berth` binary on a loopback port, driven by real clients
//! (skopeo, podman, the docker daemon) and by raw HTTP for crash and corruption cases.
//!
//! One test binary, a module per area (see STYLE.md). Each test starts its own node on its
//! own port and temp data directory, so they run in parallel. Tests that need an external
//! client skip (printing `SKIP:`) when it is missing, unless `BERTH_E2E_REQUIRED=1`.

#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/layout.rs"]
mod layout;
#[path = "e2e/mirror.rs"]
mod mirror;
#[path = "e2e/p2p.rs"]
mod p2p;
#[path = "e2e/torrent.rs"]
mod torrent;

#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/docker.rs"]
mod docker;
#[path = "e2e/engine.rs"]
mod engine;
#[path = "e2e/identity.rs"]
mod identity;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/podman.rs"]
mod podman;
#[path = "e2e/reads.rs"]
mod reads;
#[path = "e2e/scrub.rs"]
mod scrub;
#[path = "e2e/shutdown.rs"]
mod shutdown;
#[path = "e2e/skopeo.rs"]
mod skopeo;
#[path = "e2e/transcode.rs"]
mod transcode;
