//! [`BoxedIo`]: the byte stream a connection runs over once TLS is settled,
//! plain TCP or TLS alike, so the listener and the upstream dialer hand one
//! type to hyper and tungstenite.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a WebSocket or HTTP connection can run over (plain or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type BoxedIo = Box<dyn Io>;
