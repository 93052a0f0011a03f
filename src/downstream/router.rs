//! The request router: every agent HTTP request lands here and goes to the
//! WebSocket upgrade ([`super::websocket`]) or the plain-HTTP transport
//! ([`super::http`]), or is answered at once (wrong path, wrong method).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::headers::list_elements;
use super::respond::{plain, Body};
use super::Downstream;

/// Routes one request; the answer is the response hyper writes back.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub async fn handle(ds: Arc<Downstream>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    if let Some(path) = &ds.settings.path {
        if req.uri().path() != path {
            return plain(StatusCode::NOT_FOUND, format!("not found; OpAMP is served at {path}"));
        }
    }
    if is_websocket_upgrade(&req) {
        return super::websocket::upgrade(ds, req, remote).await;
    }
    match *req.method() {
        Method::POST => super::http::handle(ds, req, remote).await,
        _ => {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "OpAMP: send a WebSocket upgrade (GET) or an application/x-protobuf POST",
            );
            r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
            r
        }
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token =
        |name: HeaderName, token: &str| list_elements(req.headers(), name).any(|t| t.eq_ignore_ascii_case(token));
    req.method() == Method::GET && has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket")
}
