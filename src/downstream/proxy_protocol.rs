//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) a TCP load
//! balancer sends before the client's bytes, carrying the client's address.
//!
//! [`parse`] is sans-IO: given the bytes read so far, it returns the header
//! or how many more bytes are certainly part of it, so [`read`] never reads
//! past the header and the TLS or HTTP bytes after it stay in the socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The shortest header of either version (`PROXY UNKNOWN\r\n`): this many
/// bytes can always be read first.
const MIN_LEN: usize = 15;
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// The addresses (216 bytes for AF_UNIX) and TLVs we accept after the fixed
/// part; a longer header is refused rather than buffered.
pub(crate) const V2_MAX_BODY: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("unsupported PROXY v2 version/command byte {0:#04x}")]
    V2Command(u8),
    #[error("unsupported PROXY v2 family/protocol byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 length {len} is shorter than its {family} addresses")]
    V2Short { len: usize, family: &'static str },
    #[error("PROXY v2 length {0} exceeds the {V2_MAX_BODY}-byte limit")]
    V2TooLong(usize),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed or failed during the PROXY header: {0}")]
    Io(String),
}

/// What the load balancer says of the connection. `source` is `None` when
/// the header carries no usable address (v1 `UNKNOWN`, v2 `LOCAL` or an
/// unspecified/AF_UNIX family): the TCP peer stands then, as the spec says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The header, `len` bytes long.
    Done { header: ProxyHeader, len: usize },
    /// At least this many more bytes belong to the header.
    Need(usize),
}

/// Parses the start of a connection.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < MIN_LEN {
        let n = buf.len().min(V1_PREFIX.len());
        if buf[..n] != V1_PREFIX[..n] && buf[..buf.len().min(12)] != V2_SIGNATURE[..buf.len().min(12)] {
            return Err(ProxyHeaderError::Missing);
        }
        return Ok(Parsed::Need(MIN_LEN - buf.len()));
    }
    if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // One byte at a time: the line's end is not known in advance.
        return if buf.len() >= V1_MAX { Err(ProxyHeaderError::V1TooLong) } else { Ok(Parsed::Need(1)) };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyHeaderError::V1TooLong);
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // Whatever follows is to be ignored.
        return Ok(Parsed::Done { header: ProxyHeader { source: None, destination: None }, len });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyHeaderError::V1("expected TCP4, TCP6 or UNKNOWN")),
    };
    let ip = |s: Option<&str>| -> Result<IpAddr, ProxyHeaderError> {
        let ip: IpAddr = s.and_then(|s| s.parse().ok()).ok_or(ProxyHeaderError::V1("bad address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ProxyHeaderError::V1("address does not match the family"));
        }
        Ok(ip)
    };
    let port = |s: Option<&str>| -> Result<u16, ProxyHeaderError> {
        s.filter(|s| !s.starts_with('+')).and_then(|s| s.parse().ok()).ok_or(ProxyHeaderError::V1("bad port"))
    };
    let (src, dst) = (ip(fields.next())?, ip(fields.next())?);
    let (sport, dport) = (port(fields.next())?, port(fields.next())?);
    if fields.next().is_some() {
        return Err(ProxyHeaderError::V1("trailing fields"));
    }
    let header =
        ProxyHeader { source: Some(SocketAddr::new(src, sport)), destination: Some(SocketAddr::new(dst, dport)) };
    Ok(Parsed::Done { header, len })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Need(V2_FIXED - buf.len()));
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body_len > V2_MAX_BODY {
        return Err(ProxyHeaderError::V2TooLong(body_len));
    }
    let local = match ver_cmd {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyHeaderError::V2Command(other)),
    };
    let len = V2_FIXED + body_len;
    if buf.len() < len {
        return Ok(Parsed::Need(len - buf.len()));
    }
    let body = &buf[V2_FIXED..len];
    // Family (high nibble) and transport (low): only STREAM is a TCP agent.
    let (family, addr_len) = match fam {
        0x00 => ("UNSPEC", 0),
        0x11 => ("INET", 12),
        0x21 => ("INET6", 36),
        0x31 => ("UNIX", 216),
        // LOCAL's family is to be ignored (health checks send anything).
        _ if local => ("UNSPEC", 0),
        other => return Err(ProxyHeaderError::V2Family(other)),
    };
    if !local && body_len < addr_len {
        return Err(ProxyHeaderError::V2Short { len: body_len, family });
    }
    // What is past the addresses (TLVs) is skipped.
    let none = ProxyHeader { source: None, destination: None };
    let header = match family {
        _ if local => none,
        "INET" => {
            let a = |i: usize| Ipv4Addr::new(body[i], body[i + 1], body[i + 2], body[i + 3]);
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(a(0).into(), p(8))),
                destination: Some(SocketAddr::new(a(4).into(), p(10))),
            }
        }
        "INET6" => {
            let a = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&body[i..i + 16]).expect("16 bytes"));
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(a(0).into(), p(32))),
                destination: Some(SocketAddr::new(a(16).into(), p(34))),
            }
        }
        _ => none,
    };
    Ok(Parsed::Done { header, len })
}

/// Reads exactly the header from `io`, within `timeout`.
pub(crate) async fn read<R: AsyncRead + Unpin>(io: &mut R, timeout: Duration) -> Result<ProxyHeader, ProxyHeaderError> {
    let reading = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse(&buf)? {
                Parsed::Done { header, .. } => return Ok(header),
                Parsed::Need(n) => {
                    let start = buf.len();
                    buf.resize(start + n, 0);
                    io.read_exact(&mut buf[start..]).await.map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
                }
            }
        }
    };
    tokio::time::timeout(timeout, reading).await.map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Done { header, len }) => (header, len),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend([ver_cmd, fam]);
        b.extend((body.len() as u16).to_be_bytes());
        b.extend(body);
        b
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, len) = done(line);
        assert_eq!(h.source, sa("192.0.2.7:56324"));
        assert_eq!(h.destination, sa("198.51.100.1:443"));
        assert_eq!(&line[len..len + 3], b"GET", "the length ends at the CRLF");

        let (h, _) = done(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(h.source, sa("[2001:db8::1]:1"));
        assert_eq!(h.destination, sa("[2001:db8::2]:65535"));

        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (ProxyHeader { source: None, destination: None }, 15));
        let (h, _) = done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.source, None, "UNKNOWN's addresses are ignored");
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 65536\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ProxyHeaderError::V1(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v1_oversize() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
        long.truncate(V1_MAX - 2);
        long.extend(b"\r\n");
        assert!(matches!(parse(&long), Ok(Parsed::Done { len: V1_MAX, .. })), "107 bytes is the limit, not beyond");
    }

    #[test]
    fn v2_tcp4_with_tlvs() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xDB, 0x04, 0x01, 0xBB];
        body.extend([0x04, 0x00, 0x03, b'a', b'b', b'c']); // a NOOP TLV
        let mut buf = v2(0x21, 0x11, &body);
        let total = buf.len();
        buf.extend(b"\x16\x03\x01"); // a TLS record after it
        let (h, len) = done(&buf);
        assert_eq!(h.source, sa("192.0.2.7:56068"));
        assert_eq!(h.destination, sa("198.51.100.1:443"));
        assert_eq!(len, total, "the TLVs are part of the header, the bytes after are not");
    }

    #[test]
    fn v2_tcp6_and_local() {
        let mut body = Vec::new();
        body.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body.extend([0, 80, 1, 0]);
        let (h, len) = done(&v2(0x21, 0x21, &body));
        assert_eq!((h.source, h.destination, len), (sa("[2001:db8::1]:80"), sa("[2001:db8::2]:256"), 52));

        assert_eq!(done(&v2(0x20, 0x00, &[])).0.source, None, "LOCAL: the TCP peer stands");
        let (h, len) = done(&v2(0x20, 0x11, &[0; 12]));
        assert_eq!((h.source, len), (None, 28), "LOCAL's addresses are skipped, not used");
        assert_eq!(done(&v2(0x20, 0x11, &[])).1, 16, "LOCAL may omit its addresses");
        assert_eq!(done(&v2(0x21, 0x00, &[])).0.source, None, "UNSPEC: the TCP peer stands");
    }

    #[test]
    fn v2_refusals() {
        assert_eq!(parse(&v2(0x11, 0x11, &[0; 12])), Err(ProxyHeaderError::V2Command(0x11)), "version 1 in binary");
        assert_eq!(parse(&v2(0x22, 0x11, &[0; 12])), Err(ProxyHeaderError::V2Command(0x22)));
        assert_eq!(parse(&v2(0x21, 0x12, &[0; 12])), Err(ProxyHeaderError::V2Family(0x12)), "UDP");
        assert_eq!(parse(&v2(0x21, 0x11, &[0; 8])), Err(ProxyHeaderError::V2Short { len: 8, family: "INET" }));
        let mut big = v2(0x21, 0x11, &[]);
        big[14..16].copy_from_slice(&((V2_MAX_BODY + 1) as u16).to_be_bytes());
        assert_eq!(parse(&big), Err(ProxyHeaderError::V2TooLong(V2_MAX_BODY + 1)), "refused before reading it");
    }

    #[test]
    fn truncated_input_asks_for_exactly_what_belongs_to_the_header() {
        assert_eq!(parse(b""), Ok(Parsed::Need(MIN_LEN)));
        assert_eq!(parse(b"PROX"), Ok(Parsed::Need(MIN_LEN - 4)));
        assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(Parsed::Need(MIN_LEN - 5)));
        assert_eq!(parse(b"PROXY TCP4 192.0"), Ok(Parsed::Need(1)), "v1: a byte at a time");
        let full = v2(0x21, 0x11, &[1; 20]);
        assert_eq!(parse(&full[..15]), Ok(Parsed::Need(1)));
        assert_eq!(parse(&full[..16]), Ok(Parsed::Need(20)));
        assert_eq!(parse(&full[..30]), Ok(Parsed::Need(6)));
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyHeaderError::Missing), "a TLS ClientHello, at its first byte");
        assert_eq!(parse(b"G"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(b"PROXYZ UNKNOWN\r\n"), Err(ProxyHeaderError::Missing));
    }

    #[tokio::test]
    async fn read_leaves_the_bytes_after_the_header() {
        let (mut client, mut server) = tokio::io::duplex(256);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 5 6\r\nGET").await.unwrap();
        let h = read(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.source, sa("192.0.2.7:5"));
        let mut rest = [0u8; 3];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET");
    }
}
