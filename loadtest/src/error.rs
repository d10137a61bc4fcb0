//! Error types. A failed request is data, not an exception: [`ReqError`] is counted by its
//! [`ErrorKind`] and the run goes on. [`Error`] is for what stops a run (bad config, a
//! target that cannot be set up).

use std::fmt;

/// Why one request failed. The set is closed, so a per-kind counter map stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The server answered with an unexpected HTTP status.
    Status(u16),
    /// TCP connect failed (refused, unreachable).
    Connect,
    /// No response head, or no body frame, within the request timeout.
    Timeout,
    /// The connection broke or HTTP framing was invalid.
    Transport,
    /// Downloaded bytes do not hash to (or are not the length of) the expected digest.
    DigestMismatch,
    /// The response was well-formed HTTP but not what the protocol promises
    /// (bad JSON, missing `Location`, a listing that lost entries, ...).
    Protocol,
    /// The bearer-token flow failed.
    Auth,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(s) => write!(f, "http_{s}"),
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Transport => f.write_str("transport"),
            ErrorKind::DigestMismatch => f.write_str("digest_mismatch"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::Auth => f.write_str("auth"),
        }
    }
}

/// A failed request: its kind plus a human-readable detail (for logs, not for counting).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ReqError {
    /// What to count it as.
    pub kind: ErrorKind,
    /// What happened.
    pub detail: String,
}

impl ReqError {
    /// Makes an error of `kind`.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> ReqError {
        ReqError {
            kind,
            detail: detail.into(),
        }
    }

    /// An unexpected status for `what`.
    pub fn status(status: http::StatusCode, what: &str) -> ReqError {
        ReqError::new(
            ErrorKind::Status(status.as_u16()),
            format!("{what}: {status}"),
        )
    }

    /// A protocol violation.
    pub fn protocol(detail: impl Into<String>) -> ReqError {
        ReqError::new(ErrorKind::Protocol, detail)
    }
}

/// What stops a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field is out of range; the message names it.
    #[error("invalid config: {0}")]
    Config(String),
    /// A target URL could not be parsed.
    #[error("invalid target URL {url:?}: {reason}")]
    Target {
        /// The URL as given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The untimed setup phase failed against a target.
    #[error("setup against {target} failed: {source}")]
    Setup {
        /// Target URL.
        target: String,
        /// The failing request.
        #[source]
        source: ReqError,
    },
    /// Local I/O (report files, child processes, temp dirs).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Fleet mode could not start or drive its nodes.
    #[error("fleet: {0}")]
    Fleet(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
