//! One OpAMP-over-HTTP poll, as a plain-HTTP agent sends it: a POST of a
//! bare `AgentToServer` (no WebSocket header) on a fresh connection.
//!
//! Included with `#[path = ".../support/http_poll.rs"] mod http_poll;`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_gateway::protocol::proto::{AgentToServer, ServerToAgent};
use prost::Message;

pub(crate) struct Reply {
    pub(crate) status: u16,
    #[allow(dead_code)] // not every including test reads them
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The `ServerToAgent` of a 200 answer.
    #[allow(dead_code)]
    pub(crate) fn message(&self) -> ServerToAgent {
        assert_eq!(self.status, 200, "body: {:?}", String::from_utf8_lossy(&self.body));
        ServerToAgent::decode(self.body.clone()).expect("a bare ServerToAgent")
    }
}

pub(crate) async fn post(addr: SocketAddr, headers: &[(&str, &str)], msg: &AgentToServer) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req =
        http::Request::post("/v1/opamp").header("host", "gateway").header("content-type", "application/x-protobuf");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = Full::new(Bytes::from(msg.encode_to_vec()));
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req.body(body).unwrap()))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Reply { status, headers, body: resp.into_body().collect().await.unwrap().to_bytes() }
}
