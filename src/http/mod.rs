//! The HTTP front-end: `GET /{key}` and `HEAD /{key}` on the shared stack.
//!
//! [`respond`] turns one request into a key, calls the stack and turns the
//! [`Lookup`] or [`Error`] into a response, in this one place; [`router`] mounts
//! it in an axum application, and the proxy's own listener (`server`) calls it
//! for each request of each connection.
//!
//! The key is the whole path after the first `/`, percent-decoded to bytes, so a
//! raw `/` is part of the key and any byte can be sent as `%XX`. The path is read
//! raw from the URI rather than through axum's `Path` extractor, which only yields
//! UTF-8 and would reject a key such as `%FF`.
//!
//! ```text
//! GET /user%3A42   ->  200  body = value bytes
//!                           Content-Type: application/octet-stream
//!                           X-Cache: HIT | MISS
//!                           Cache-Control: max-age=<seconds until the entry expires>
//!                           Age: <seconds since the value was fetched>
//!                           ETag: "<hash of the value>"
//!                      304  If-None-Match names the current ETag (no body)
//!                      404  the key does not exist in Redis
//!                      400  empty key, or a query string (send '?' as %3F)
//!                      414  path and query over 8 KiB
//!                      405  any other method (Allow: GET, HEAD)
//!                      409  the key holds a non-string value (body: Redis's error)
//!                      502  Redis unreachable or failing (body: short reason)
//!                      503  more than max_clients requests in flight
//!                      504  not answered within request_timeout
//! ```

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use percent_encoding::percent_decode;
use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};

use crate::auth::{Access, Front, User};
use crate::lookup::{Error, Key, Lookup};
use crate::metrics::{self, Counting};
use crate::throttle::{Throttle, held_back};

pub(crate) use server::Hyper;

/// The `X-Cache` response header: `HIT` or `MISS`.
pub const X_CACHE: &str = "x-cache";

/// A response as [`respond`] builds it: the body is the value itself, or a short
/// message.
pub type Response = axum::http::Response<Full<Bytes>>;

/// A router answering every path with the key lookup. Mount it with `nest` under a
/// prefix to serve keys below that prefix.
///
/// `service` is normally a [`crate::Stack`]; it is cloned per request, so its
/// clones must share their state (the stack's do). Requests are counted in
/// `redis_proxy_requests_total{protocol="http"}` through the metrics recorder
/// installed when the router is made, if any.
pub fn router<S>(service: S) -> Router
where
    S: Service<Key, Response = Lookup, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    Router::new()
        .fallback(serve_key::<S>)
        .with_state((service, Counting::direct(metrics::Protocol::Http)))
}

async fn serve_key<S>(
    State((service, counting)): State<(S, Counting)>,
    request: Request,
) -> axum::response::Response
where
    S: Service<Key, Response = Lookup, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let response = match key_of(&request) {
        Ok(key) => {
            let result = service.oneshot(key).await;
            counting.record(&result);
            response_to(result, request.headers().get(header::IF_NONE_MATCH))
        }
        Err(rejection) => rejection.response(),
    };
    response.map(Body::new)
}

/// Answers one HTTP request for a key with `service`: what [`router`] does for each
/// request, without a router (and without counting it).
pub async fn respond<S, B>(service: S, request: axum::http::Request<B>) -> Response
where
    S: Service<Key, Response = Lookup, Error = Error>,
{
    match key_of(&request) {
        Ok(key) => response_to(
            service.oneshot(key).await,
            request.headers().get(header::IF_NONE_MATCH),
        ),
        Err(rejection) => rejection.response(),
    }
}

/// Why a request asks for no key.
#[derive(Debug, Clone, Copy)]
enum Rejection {
    /// A method other than GET and HEAD.
    Method,
    /// A path and query over [`MAX_URI_LEN`].
    UriTooLong,
    /// An empty key, or a query string: the message says which.
    BadRequest(&'static str),
    /// Authentication is on and the request has no valid credentials.
    Unauthorized,
    /// The user may not read the key.
    Forbidden,
}

impl Rejection {
    fn response(self) -> Response {
        match self {
            Rejection::Method => {
                let mut response = plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use GET or HEAD\n",
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
            Rejection::UriTooLong => plain(StatusCode::URI_TOO_LONG, "URI over 8 KiB\n"),
            Rejection::BadRequest(reason) => plain(StatusCode::BAD_REQUEST, reason),
            Rejection::Unauthorized => {
                let mut response = plain(
                    StatusCode::UNAUTHORIZED,
                    "authentication required: Authorization: Basic (user:password) or Bearer (the default user's password)\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"redis-proxy\""),
                );
                response
            }
            Rejection::Forbidden => plain(
                StatusCode::FORBIDDEN,
                "forbidden: this user may not read this key\n",
            ),
        }
    }
}

/// The key a request asks for, or why it asks for none.
fn key_of<B>(request: &axum::http::Request<B>) -> Result<Key, Rejection> {
    // Read in place: the extractors for method, URI and headers would each clone
    // theirs, on every request.
    let (method, uri) = (request.method(), request.uri());
    if method != Method::GET && method != Method::HEAD {
        return Err(Rejection::Method);
    }
    if uri_len(uri) > MAX_URI_LEN {
        return Err(Rejection::UriTooLong);
    }
    key_from_uri(uri).map_err(Rejection::BadRequest)
}

/// The response to a lookup: the value with its cache headers, 304 when
/// `if_none_match` names its tag, 404, or the error's status. (HEAD gets the
/// same; hyper leaves its body out.)
fn response_to(result: Result<Lookup, Error>, if_none_match: Option<&HeaderValue>) -> Response {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(error) => return error_response(&error),
    };
    let source = HeaderValue::from_static(lookup.source.as_str());
    let Some(digest) = lookup.digest() else {
        let mut response = plain(StatusCode::NOT_FOUND, "not found\n");
        response.headers_mut().insert(X_CACHE, source);
        return response;
    };
    let etag = tag(digest);
    let not_modified = if_none_match.is_some_and(|tags| matches_etag(tags, &etag));
    let mut response = match lookup.value {
        Some(value) if !not_modified => {
            let mut response = Response::new(Full::new(value));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        _ => {
            let mut response = Response::default();
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(X_CACHE, source);
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, max_age(lookup.fresh_for));
    headers.insert(header::AGE, HeaderValue::from(lookup.age.as_secs()));
    response
}

/// The proxy's own HTTP service, one per connection: the connection's own
/// handle to the stack (a request costs no clone of it), its counters, and who
/// may read what.
pub(crate) struct KeyService<S> {
    stack: std::cell::RefCell<S>,
    counting: Counting,
    access: Access,
    peer: SocketAddr,
    /// The last `Authorization` header that authenticated on this connection,
    /// and its user: a client sends the same header with every request, and it
    /// is checked once.
    authorized: std::cell::RefCell<Option<(HeaderValue, Arc<User>)>>,
}

impl<S> KeyService<S> {
    /// A service over `stack` for the client at `peer`, counting requests with
    /// `counting`, checking credentials with `access`.
    pub(crate) fn new(stack: S, counting: Counting, access: Access, peer: SocketAddr) -> Self {
        Self {
            stack: std::cell::RefCell::new(stack),
            counting,
            access,
            peer,
            authorized: std::cell::RefCell::new(None),
        }
    }

    /// The user a request is from: anyone when authentication is off, else the
    /// user its `Authorization` header names (`Basic` with `user:password`, or
    /// `Bearer` with the default user's password).
    fn user<B>(&self, request: &axum::http::Request<B>) -> Result<Arc<User>, Rejection> {
        if let Some(anyone) = self.access.initial() {
            return Ok(anyone);
        }
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or(Rejection::Unauthorized)?;
        if let Some((seen, user)) = &*self.authorized.borrow()
            && seen == header
        {
            return Ok(user.clone());
        }
        let (name, password) = credentials(header).ok_or(Rejection::Unauthorized)?;
        let user = self
            .access
            .authenticate(Front::Http, self.peer, &name, &password)
            .ok_or(Rejection::Unauthorized)?;
        *self.authorized.borrow_mut() = Some((header.clone(), user.clone()));
        Ok(user)
    }
}

/// The user name and password of an `Authorization` header: `Basic` with
/// base64 of `user:password`, or `Bearer` with the default user's password.
fn credentials(header: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    use base64::Engine;
    let value = header.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    let token = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some((b"default".to_vec(), token.to_vec()));
    }
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

impl<S, B> hyper::service::Service<axum::http::Request<B>> for KeyService<S>
where
    S: Service<Key, Response = Lookup, Error = Error> + Clone,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = KeyFuture<S>;

    fn call(&self, request: axum::http::Request<B>) -> Self::Future {
        let answered = |rejection: Rejection| KeyFuture::Answered {
            response: Some(rejection.response()),
        };
        // Credentials first: a client that has none learns nothing of the key.
        let user = match self.user(&request) {
            Ok(user) => user,
            Err(rejection) => return answered(rejection),
        };
        let key = match key_of(&request) {
            Ok(key) => key,
            Err(rejection) => return answered(rejection),
        };
        // Before the cache: a denied read cannot tell whether the key is cached.
        if !user.may_read(&key) {
            return answered(Rejection::Forbidden);
        }
        // The stack is always ready, so the connection's handle is called at
        // once. A service that is not ready at once is waited for on a clone.
        let mut stack = self.stack.borrow_mut();
        let ready = stack.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        let lookup = match ready {
            std::task::Poll::Ready(Ok(())) => Call::Called {
                future: stack.call(key),
            },
            _ => Call::Waiting {
                oneshot: stack.clone().oneshot(key),
            },
        };
        KeyFuture::Looking {
            lookup,
            if_none_match: request.headers().get(header::IF_NONE_MATCH).cloned(),
            counting: self.counting.clone(),
        }
    }
}

pin_project! {
    /// A key's lookup by a [`KeyService`]: called, or waiting for the service.
    #[project = CallProj]
    pub(crate) enum Call<S: Service<Key>> {
        Called { #[pin] future: S::Future },
        Waiting { #[pin] oneshot: tower::util::Oneshot<S, Key> },
    }
}

pin_project! {
    /// The future of [`KeyService`].
    #[project = KeyFutureProj]
    pub(crate) enum KeyFuture<S: Service<Key>> {
        Answered { response: Option<Response> },
        Looking {
            #[pin]
            lookup: Call<S>,
            if_none_match: Option<HeaderValue>,
            counting: Counting,
        },
    }
}

impl<S> std::future::Future for KeyFuture<S>
where
    S: Service<Key, Response = Lookup, Error = Error>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            KeyFutureProj::Answered { response } => {
                std::task::Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KeyFutureProj::Looking {
                lookup,
                if_none_match,
                counting,
            } => {
                let result = std::task::ready!(match lookup.project() {
                    CallProj::Called { future } => future.poll(cx),
                    CallProj::Waiting { oneshot } => oneshot.poll(cx),
                });
                counting.record(&result);
                std::task::Poll::Ready(Ok(response_to(result, if_none_match.as_ref())))
            }
        }
    }
}

/// A `text/plain` response with `status` and `message`.
fn plain(status: StatusCode, message: impl Into<Bytes>) -> Response {
    let mut response = Response::new(Full::new(message.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A strong validator for `value`: a 64-bit hash of its bytes, in hex and quotes.
/// Equal bytes always give the same tag; different bytes a different one, but for
/// a 2^-64 chance. (The hash has a fixed seed, so tags survive a restart of a
/// given build.)
pub fn etag(value: &[u8]) -> HeaderValue {
    tag(crate::lookup::digest(value))
}

/// The `ETag` of a value whose digest ([`Lookup::digest`]) is `hash`.
fn tag(hash: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = [b'"'; 18];
    for (i, digit) in tag[1..17].iter_mut().enumerate() {
        *digit = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&tag).expect("hex is a valid header")
}

/// Whether an `If-None-Match` header names `etag`: `*`, or a list of tags compared
/// weakly (a `W/` prefix is ignored), as RFC 9110 asks for this header.
fn matches_etag(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(tags) = if_none_match.to_str() else {
        return false;
    };
    let ours = etag.to_str().expect("our tags are ASCII");
    tags.split(',')
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// `max-age=<whole seconds>`, rounded down.
fn max_age(fresh_for: Duration) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let seconds = digits.format(fresh_for.as_secs());
    let mut value = [0; 8 + 20];
    value[..8].copy_from_slice(b"max-age=");
    value[8..8 + seconds.len()].copy_from_slice(seconds.as_bytes());
    HeaderValue::from_bytes(&value[..8 + seconds.len()]).expect("digits are a valid header")
}

/// The longest request target accepted (path and query), as many servers do.
pub const MAX_URI_LEN: usize = 8 * 1024;

fn uri_len(uri: &Uri) -> usize {
    uri.path().len() + uri.query().map_or(0, |q| q.len() + 1)
}

/// The key named by a request URI.
///
/// # Errors
///
/// A message for the client when the key is empty or the URI has a query string.
pub fn key_from_uri(uri: &Uri) -> Result<Key, &'static str> {
    if uri.query().is_some() {
        return Err("query strings are not supported: send '?' in a key as %3F\n");
    }
    let raw = uri.path().strip_prefix('/').unwrap_or(uri.path());
    if raw.is_empty() {
        return Err("empty key: request /{key}\n");
    }
    let key: Vec<u8> = percent_decode(raw.as_bytes()).collect();
    Ok(Key::new(key))
}

/// The response to a request that failed: the status for the error, and its
/// short message as the body. Server-side failures are logged with their cause.
fn error_response(error: &Error) -> Response {
    let status = match error {
        Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
        error if error.is_wrong_type() => StatusCode::CONFLICT,
        Error::Reply(_) | Error::Unavailable { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    static FAILED: Throttle = Throttle::new();
    if status.is_server_error()
        && let Some(held) = FAILED.admit()
    {
        let cause = std::error::Error::source(error).map(ToString::to_string);
        tracing::warn!(status = status.as_u16(), %error, ?cause, "request failed{}", held_back(held));
    }
    plain(status, format!("{error}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the key `uri` names.
    fn key(uri: &str) -> Result<Bytes, &'static str> {
        key_from_uri(&uri.parse::<Uri>().unwrap()).map(|key| key.name().clone())
    }

    #[test]
    fn key_is_the_percent_decoded_path() {
        assert_eq!(key("/plain").unwrap(), Bytes::from("plain"));
        assert_eq!(key("/a/b/c").unwrap(), Bytes::from("a/b/c"));
        assert_eq!(key("/with%20space").unwrap(), Bytes::from("with space"));
        assert_eq!(key("/%3F%25%23").unwrap(), Bytes::from("?%#"));
        assert_eq!(key("/%FF%00").unwrap(), Bytes::from_static(&[0xFF, 0x00]));
        assert_eq!(key("/%C3%BC").unwrap(), Bytes::from("ü"));
    }

    #[test]
    fn etag_is_stable_and_changes_with_the_value() {
        assert_eq!(etag(b"value"), etag(b"value"));
        assert_ne!(etag(b"value"), etag(b"valuf"));
        let tag = etag(b"value");
        assert!(tag.to_str().unwrap().starts_with('"') && tag.len() == 18);
    }

    #[test]
    fn if_none_match_lists_are_compared_weakly() {
        let ours = etag(b"v");
        let header = |s: &str| HeaderValue::try_from(s).unwrap();
        assert!(matches_etag(&ours, &ours));
        assert!(matches_etag(&header("*"), &ours));
        let list = format!("\"other\", W/{}", ours.to_str().unwrap());
        assert!(matches_etag(&header(&list), &ours));
        assert!(!matches_etag(&header("\"other\""), &ours));
    }

    #[test]
    fn empty_key_and_query_are_rejected() {
        assert!(key("/").is_err());
        assert!(key("/a?b").is_err());
    }
}
