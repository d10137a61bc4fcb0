//! End-to-end tests: the harness against a real registry (berth when built, else Debian's
//! docker-registry) and against tiny in-test servers that misbehave on purpose.
//! Every run is bounded by `--requests` and small sizes; the whole binary takes seconds.

mod auth;
mod corrupt;
mod registry;
mod support;
