//! The HTTP client: hyper 1 with hyper-util's pooled legacy client, plain HTTP only.
//!
//! One [`Client`] per target, shared by all its workers. It owns authentication (retrying a
//! request once per `401` after answering the challenge) and redirects (GET/HEAD only, at
//! most [`REDIRECTS_MAX`], credentials dropped when the host changes). Bodies are streamed
//! both ways: request bodies are [`ReqBody`] (generated on the fly), responses are read frame
//! by frame with an idle timeout per frame, so a 1 GiB layer never sits in memory and a
//! stalled server cannot hold a worker forever.

use crate::auth::{parse_challenge, Auth, Challenge, Credentials, TOKEN_TTL_DEFAULT};
use crate::data::{BlobSpec, GEN_CHUNK_BYTES};
use crate::error::{ErrorKind, ReqError};
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most redirects followed for one request.
pub const REDIRECTS_MAX: usize = 3;
/// Largest error/JSON body drained or buffered from a response we do not stream.
pub const SMALL_BODY_MAX: usize = 4 << 20;
/// Largest token response accepted from a token realm.
const TOKEN_RESPONSE_MAX: usize = 64 << 10;
/// Longest token lifetime honoured, whatever the server says.
const TOKEN_TTL_MAX: Duration = Duration::from_secs(3600);

/// A request body: empty, a small buffer, or generated blob bytes.
pub enum ReqBody {
    /// No body.
    Empty,
    /// One in-memory chunk (configs, manifests).
    Full(Option<Bytes>),
    /// In-memory content sent as frames of at most `GEN_CHUNK_BYTES` (slices, not copies).
    Mem {
        /// What is left to send.
        rest: Bytes,
        /// False to hide the length (forces chunked transfer encoding, like `docker push`).
        sized: bool,
    },
    /// A range of a generated blob.
    Gen {
        /// The blob.
        spec: BlobSpec,
        /// Next offset to emit.
        pos: u64,
        /// End of the range (exclusive).
        end: u64,
        /// False to hide the length (forces chunked transfer encoding, like `docker push`).
        sized: bool,
    },
}

impl ReqBody {
    /// Generated body over `range` of `spec`.
    pub fn gen(spec: BlobSpec, start: u64, end: u64, sized: bool) -> ReqBody {
        ReqBody::Gen {
            spec,
            pos: start,
            end: end.min(spec.size),
            sized,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Mem { rest, .. } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                let n = rest.len().min(GEN_CHUNK_BYTES);
                Poll::Ready(Some(Ok(Frame::data(rest.split_to(n)))))
            }
            ReqBody::Gen { spec, pos, end, .. } => {
                if *pos >= *end {
                    return Poll::Ready(None);
                }
                let n = (*end - *pos).min(GEN_CHUNK_BYTES as u64) as usize;
                let chunk = spec.chunk(*pos, n);
                *pos += n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Mem { rest, .. } => rest.is_empty(),
            ReqBody::Gen { pos, end, .. } => pos >= end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Mem { rest, sized: true } => SizeHint::with_exact(rest.len() as u64),
            ReqBody::Mem { sized: false, .. } => SizeHint::default(),
            ReqBody::Gen {
                pos, end, sized, ..
            } => {
                if *sized {
                    SizeHint::with_exact(end.saturating_sub(*pos))
                } else {
                    SizeHint::default()
                }
            }
        }
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Idle connections kept per host; set it to the worker count so every worker keeps one.
    pub pool_idle_per_host: usize,
    /// Timeout for a response head and for each body frame.
    pub timeout: Duration,
    /// Basic credentials.
    pub credentials: Option<Credentials>,
}

/// A pooled HTTP client bound to one registry base URL.
pub struct Client {
    http: hyper_util::client::legacy::Client<HttpConnector, ReqBody>,
    base: String,
    authority: String,
    auth: Auth,
    timeout: Duration,
}

/// What to send: everything but the body, which is produced by a factory so that an auth
/// retry or redirect can regenerate it.
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Path and query (`/v2/...`) or an absolute URL (a `Location` from the server).
    pub url: &'a str,
    /// Extra headers.
    pub headers: &'a [(http::HeaderName, HeaderValue)],
    /// Auth scope this request needs (`repository:NAME:pull`), the token cache key.
    pub scope: &'a str,
}

impl Client {
    /// Builds a client for `base` (`http://host:port`, no trailing slash needed).
    pub fn new(base: &str, cfg: &ClientConfig) -> Result<Client, String> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// targets are supported (no TLS in this harness)".into());
        }
        let authority = uri
            .authority()
            .ok_or_else(|| "missing host".to_owned())?
            .to_string();
        let mut conn = HttpConnector::new();
        // Small requests dominate the metadata scenarios: Nagle would add 40 ms stalls.
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(cfg.timeout));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(conn);
        Ok(Client {
            http,
            base,
            authority,
            auth: Auth::new(cfg.credentials.clone()),
            timeout: cfg.timeout,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The per-head and per-frame timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request, answering auth challenges and following redirects.
    pub async fn send(
        &self,
        call: &Call<'_>,
        body: &(dyn Fn() -> ReqBody + Sync),
    ) -> Result<Response<Incoming>, ReqError> {
        let mut url = self.absolute(call.url)?;
        let mut auth_retries = 0;
        let mut redirects = 0;
        loop {
            let same_host = url
                .authority()
                .is_some_and(|a| a.as_str() == self.authority);
            let mut req = Request::builder()
                .method(call.method.clone())
                .uri(url.clone());
            if let Some(h) = req.headers_mut() {
                for (k, v) in call.headers {
                    h.insert(k, v.clone());
                }
                if same_host {
                    if let Some(a) = self.auth.header_for(call.scope) {
                        h.insert(AUTHORIZATION, a);
                    }
                }
            }
            let req = req
                .body(body())
                .map_err(|e| ReqError::protocol(format!("building request: {e}")))?;
            let resp = self.request(req).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_host && auth_retries < 2 {
                auth_retries += 1;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                drain(resp, self.timeout).await;
                if self.answer(challenge, call.scope).await? {
                    continue;
                }
                return Err(ReqError::status(status, "unauthorized"));
            }
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            if is_redirect && matches!(call.method, Method::GET | Method::HEAD) {
                if redirects >= REDIRECTS_MAX {
                    return Err(ReqError::protocol("too many redirects"));
                }
                redirects += 1;
                let loc = location(resp.headers())?;
                drain(resp, self.timeout).await;
                url = self.absolute(&loc)?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Turns a path or absolute URL into a URI against this target.
    pub fn absolute(&self, url: &str) -> Result<Uri, ReqError> {
        let s = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else if url.starts_with('/') {
            format!("{}{}", self.base, url)
        } else {
            return Err(ReqError::protocol(format!("unusable URL {url:?}")));
        };
        s.parse()
            .map_err(|e| ReqError::protocol(format!("bad URL {s:?}: {e}")))
    }

    async fn request(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, ReqError> {
        match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Err(_) => Err(ReqError::new(ErrorKind::Timeout, "no response head")),
            Ok(Err(e)) if e.is_connect() => Err(ReqError::new(ErrorKind::Connect, e.to_string())),
            Ok(Err(e)) => Err(ReqError::new(
                ErrorKind::Transport,
                format!("{e}: {}", source_chain(&e)),
            )),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Answers a challenge; `Ok(true)` means "retry the request".
    async fn answer(&self, challenge: Option<Challenge>, scope: &str) -> Result<bool, ReqError> {
        match challenge {
            None => Ok(false),
            // We already sent Basic pre-emptively when we have credentials, so a Basic
            // challenge means they were refused.
            Some(Challenge::Basic) => Ok(false),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: server_scope,
            }) => {
                self.fetch_token(&realm, service.as_deref(), server_scope.as_deref(), scope)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        server_scope: Option<&str>,
        scope: &str,
    ) -> Result<(), ReqError> {
        let mut url = realm.to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in [
            ("service", service),
            ("scope", server_scope.or(Some(scope))),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                url.push(sep);
                url.push_str(k);
                url.push('=');
                url.push_str(&query_escape(v));
                sep = '&';
            }
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| ReqError::new(ErrorKind::Auth, format!("bad realm {realm:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ReqError::new(
                ErrorKind::Auth,
                format!("token realm {realm} is not plain http"),
            ));
        }
        let mut req = Request::get(uri);
        if let (Some(h), Some(b)) = (req.headers_mut(), self.auth.basic_header()) {
            h.insert(AUTHORIZATION, b);
        }
        let req = req
            .body(ReqBody::Empty)
            .map_err(|e| ReqError::new(ErrorKind::Auth, e.to_string()))?;
        let resp = self.request(req).await?;
        if !resp.status().is_success() {
            let kind = if self.auth.has_credentials() {
                "token request refused"
            } else {
                "token request refused (no --user given)"
            };
            return Err(ReqError::new(
                ErrorKind::Auth,
                format!("{kind}: {}", resp.status()),
            ));
        }
        let body = read_small(resp, TOKEN_RESPONSE_MAX, self.timeout).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ReqError::new(ErrorKind::Auth, format!("token JSON: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| ReqError::new(ErrorKind::Auth, "token response has no token"))?;
        let ttl = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .map_or(TOKEN_TTL_DEFAULT, Duration::from_secs)
            .min(TOKEN_TTL_MAX);
        self.auth
            .store_token(scope, token, ttl)
            .ok_or_else(|| ReqError::new(ErrorKind::Auth, "token is not a valid header value"))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&c.to_string());
        s.push_str("; ");
        cur = c.source();
    }
    s
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Location` header as a string.
pub fn location(h: &HeaderMap) -> Result<String, ReqError> {
    h.get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ReqError::protocol("response has no Location header"))
}

/// Reads and discards up to [`SMALL_BODY_MAX`] bytes so the connection can be reused;
/// a longer body is abandoned (the connection is then closed, not reused).
pub async fn drain(resp: Response<Incoming>, timeout: Duration) {
    let _ = read_small(resp, SMALL_BODY_MAX, timeout).await;
}

/// Buffers a response body of at most `max` bytes.
pub async fn read_small(
    resp: Response<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ReqError> {
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(data) = next_data(&mut body, timeout).await? {
        if buf.len() + data.len() > max {
            return Err(ReqError::protocol(format!(
                "response body over {max} bytes"
            )));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// The next data frame of a body (trailers are skipped), with an idle timeout.
pub async fn next_data(body: &mut Incoming, timeout: Duration) -> Result<Option<Bytes>, ReqError> {
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Err(ReqError::new(ErrorKind::Timeout, "body stalled")),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(ReqError::new(ErrorKind::Transport, e.to_string())),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_scope() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn gen_body_emits_exact_range() {
        let spec = BlobSpec {
            key: 1,
            size: (GEN_CHUNK_BYTES * 2 + 3) as u64,
        };
        let body = ReqBody::gen(spec, 5, spec.size, true);
        assert_eq!(body.size_hint().exact(), Some(spec.size - 5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let got = rt.block_on(async { body.collect().await.map(|c| c.to_bytes()) });
        let Ok(got) = got;
        assert_eq!(got, spec.chunk(5, (spec.size - 5) as usize));
    }

    /// A prepared layer goes out as slices of at most `GEN_CHUNK_BYTES`, all of it, in
    /// order; its length is announced only when `sized`.
    #[test]
    fn mem_body_emits_bounded_frames_of_the_whole_content() {
        let spec = BlobSpec {
            key: 7,
            size: (GEN_CHUNK_BYTES * 2 + 11) as u64,
        };
        let (bytes, digest) = spec.materialize();
        assert_eq!(digest, spec.digest(), "one pass gives the streaming digest");
        let unsized_body = ReqBody::Mem {
            rest: bytes.clone(),
            sized: false,
        };
        assert_eq!(unsized_body.size_hint().exact(), None);
        let mut body = ReqBody::Mem {
            rest: bytes.clone(),
            sized: true,
        };
        assert_eq!(body.size_hint().exact(), Some(spec.size));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut got = Vec::new();
        rt.block_on(async {
            while let Some(Ok(frame)) = body.frame().await {
                let data = frame.into_data().expect("data frame");
                assert!(data.len() <= GEN_CHUNK_BYTES);
                got.extend_from_slice(&data);
            }
        });
        assert!(body.is_end_stream());
        assert_eq!(got, bytes);
    }
}
