//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! Label sets are bounded by construction: route labels come from [`crate::route::V2Route::label`],
//! methods from a fixed list, statuses are HTTP codes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;

/// Upper bounds (seconds) of the upload duration histogram.
const UPLOAD_SECONDS_BUCKETS: [f64; 10] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0];

type RequestKey = (&'static str, &'static str, u16);

/// The node's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    response_bytes: Arc<AtomicU64>,
    request_bytes: AtomicU64,
    upload_buckets: [AtomicU64; UPLOAD_SECONDS_BUCKETS.len()],
    upload_count: AtomicU64,
    upload_micros_sum: AtomicU64,
    blobs_committed: AtomicU64,
    blobs_corrupt: AtomicU64,
    /// GC, expiry and retention counters (rendered by [`crate::api::LifecycleMetrics`]).
    pub lifecycle: crate::api::LifecycleMetrics,
    /// Derived-image counters (rendered by [`crate::derived::DerivedMetrics`]).
    pub transcode: crate::derived::DerivedMetrics,
    /// Blob bytes by where they came from: local disk, peers, the upstream (see
    /// [`crate::source::Origin`]).
    source_bytes: [Arc<AtomicU64>; 3],
    /// Metrics rendered by the node (see [`Metrics::set_extra`]).
    extra: std::sync::OnceLock<ExtraRender>,
}

/// A renderer of node-owned metrics (see [`Metrics::set_extra`]).
pub type ExtraRender = Box<dyn Fn(&mut String) + Send + Sync>;

/// A method name with static lifetime (bounded label values).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn record_request(&self, route: &'static str, method: &'static str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route, method, status)).or_default() += 1;
    }

    /// Counts bytes received in upload bodies.
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a completed blob upload and how long its final request took.
    pub fn record_upload(&self, seconds: f64) {
        self.blobs_committed.fetch_add(1, Ordering::Relaxed);
        self.upload_count.fetch_add(1, Ordering::Relaxed);
        self.upload_micros_sum
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        for (bound, counter) in UPLOAD_SECONDS_BUCKETS.iter().zip(&self.upload_buckets) {
            if seconds <= *bound {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a blob that failed an integrity check on read.
    pub fn record_corrupt_blob(&self) {
        self.blobs_corrupt.fetch_add(1, Ordering::Relaxed);
    }

    fn source_counter(&self, origin: crate::source::Origin) -> &Arc<AtomicU64> {
        use crate::source::Origin;
        &self.source_bytes[match origin {
            Origin::Local => 0,
            Origin::Peer => 1,
            Origin::Upstream => 2,
        }]
    }

    /// Counts blob bytes obtained from `origin`.
    pub fn add_source_bytes(&self, origin: crate::source::Origin, n: u64) {
        self.source_counter(origin).fetch_add(n, Ordering::Relaxed);
    }

    /// Wraps a blob response body so its bytes are counted under `origin`.
    pub fn count_source_body(&self, origin: crate::source::Origin, body: Body) -> Body {
        Body::new(CountingBody {
            inner: body,
            counter: self.source_counter(origin).clone(),
        })
    }

    /// Wraps a response body so the bytes it sends are counted.
    pub fn count_body(&self, body: Body) -> Body {
        Body::new(CountingBody {
            inner: body,
            counter: self.response_bytes.clone(),
        })
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP berth_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE berth_http_requests_total counter\n");
        {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, method, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "berth_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "berth_http_response_bytes_total",
            "Bytes sent in response bodies.",
            self.response_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "berth_http_request_bytes_total",
            "Bytes received in blob upload bodies.",
            self.request_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "berth_blobs_committed_total",
            "Blob uploads verified and stored.",
            self.blobs_committed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "berth_blobs_corrupt_total",
            "Blobs that failed their crc32 check on read and were quarantined.",
            self.blobs_corrupt.load(Ordering::Relaxed),
        );
        self.lifecycle.render(&mut out);
        self.transcode.render(&mut out);
        out.push_str("# HELP berth_blob_bytes_total Blob bytes by source: served from local disk, received from peers or from the upstream.\n# TYPE berth_blob_bytes_total counter\n");
        for origin in [
            crate::source::Origin::Local,
            crate::source::Origin::Peer,
            crate::source::Origin::Upstream,
        ] {
            let _ = writeln!(
                out,
                "berth_blob_bytes_total{{source=\"{}\"}} {}",
                origin.label(),
                self.source_counter(origin).load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP berth_upload_duration_seconds Duration of the request that completed a blob upload.\n");
        out.push_str("# TYPE berth_upload_duration_seconds histogram\n");
        for (bound, counter) in UPLOAD_SECONDS_BUCKETS.iter().zip(&self.upload_buckets) {
            let _ = writeln!(
                out,
                "berth_upload_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let count = self.upload_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "berth_upload_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "berth_upload_duration_seconds_sum {}",
            self.upload_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "berth_upload_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP berth_io_engine The blob I/O engine in use (issue 4).\n# TYPE berth_io_engine gauge\nberth_io_engine{{engine=\"{}\"}} 1",
            berth_storage::io::default_engine().as_str()
        );
        if let Some(extra) = self.extra.get() {
            extra(&mut out);
        }
        out
    }

    /// Installs a renderer for metrics the node owns (the peer layer's per-peer counters);
    /// appended to [`Metrics::render`]. Only the first call takes effect.
    pub fn set_extra(&self, render: ExtraRender) {
        let _ = self.extra.set(render);
    }
}

struct CountingBody {
    inner: Body,
    counter: Arc<AtomicU64>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
