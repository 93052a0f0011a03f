//! The plain-HTTP agent transport, end to end through hyper on an in-memory
//! connection: content type and encoding checks, gzip decoding under the
//! size limit, the protobuf scan, the uid, admission and the reply.
//!
//! Input: `[flags][body...]`. Flags: 1 gzip the body (a valid stream),
//! 2 send `Content-Encoding: gzip` (with 1 clear: raw bytes to the
//! decoder), 4 `Accept-Encoding: gzip`, 8 a wrong `Content-Type`,
//! 16 the upstream link is down, 32 a `GET`.

#![no_main]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use opamp_gateway::downstream::router;
use opamp_gateway_fuzz::{runtime, Core};

fn request(flags: u8, body: &[u8]) -> Request<Full<Bytes>> {
    let body = if flags & 1 != 0 {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(body).expect("in memory");
        gz.finish().expect("in memory")
    } else {
        body.to_vec()
    };
    let method = if flags & 32 != 0 { Method::GET } else { Method::POST };
    let content_type = if flags & 8 != 0 { "application/json" } else { "application/x-protobuf" };
    let mut req = Request::builder()
        .method(method)
        .uri("/v1/opamp")
        .header("host", "gateway")
        .header("content-type", content_type);
    if flags & 3 != 0 {
        req = req.header("content-encoding", "gzip");
    }
    if flags & 4 != 0 {
        req = req.header("accept-encoding", "gzip");
    }
    req.body(Full::new(Bytes::from(body))).expect("valid request")
}

async fn run(flags: u8, body: &[u8]) {
    let core = Core::new(flags & 16 == 0);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let ds = core.ds.clone();
    let remote: SocketAddr = "192.0.2.1:4000".parse().expect("address");
    let service = service_fn(move |req| {
        let ds = ds.clone();
        async move { Ok::<_, Infallible>(router::handle(ds, req, remote).await) }
    });
    let conn = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service));
    let (mut sender, client_conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(client)).await.expect("in-memory handshake");
    let client_task = tokio::spawn(client_conn);
    let response = sender.send_request(request(flags, body)).await.expect("the gateway answers");
    let status = response.status();
    let reply = response.into_body().collect().await.expect("a whole reply").to_bytes();
    assert!(status.is_success() || !reply.is_empty() || status.as_u16() == 101, "status {status} without a reason");
    drop(sender);
    let _ = client_task.await;
    let _ = conn.await;
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    runtime().block_on(run(flags, body));
});
