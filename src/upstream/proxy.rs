//! Egress through an HTTP CONNECT proxy: which proxy a link uses
//! (`server.proxy_url`, else the environment the way Go's
//! `http.ProxyFromEnvironment` reads it, as the reference's dialer does) and
//! the tunnel itself.

use std::fmt;
use std::net::IpAddr;

use http::Uri;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::dial::{DialError, DialerError};
use crate::config::proxy_url::unbracket;
use crate::config::{ConfigError, ProxyScheme, ProxyUrl, ServerConfig};
use crate::tls::{self, BoxedIo, TlsError};

/// Largest proxy answer head we read before giving up.
const MAX_HEAD: usize = 16 * 1024;

/// What the environment says about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvProxy {
    /// No proxy variable applies to this endpoint's scheme.
    Unset,
    /// Variable `var` names a proxy and it applies.
    Use { var: &'static str, proxy: ProxyUrl },
    /// `var` names a proxy but the endpoint is exempt (`reason`: loopback or NO_PROXY).
    Bypass { var: &'static str, reason: &'static str },
    /// `var` is set but unusable; links dial directly.
    Ignored { var: &'static str, reason: String },
}

impl EnvProxy {
    #[cfg(test)]
    pub(crate) fn proxy(&self) -> Option<&ProxyUrl> {
        match self {
            EnvProxy::Use { proxy, .. } => Some(proxy),
            _ => None,
        }
    }
}

/// The first non-empty of the variables, upper case first (as Go reads them).
fn first_set(lookup: &dyn Fn(&str) -> Option<String>, names: [&'static str; 2]) -> Option<(&'static str, String)> {
    names.into_iter().find_map(|n| lookup(n).filter(|v| !v.is_empty()).map(|v| (n, v)))
}

/// Resolves the proxy for `endpoint` (`ws://` or `wss://`) from environment
/// variables read through `lookup`, with `http.ProxyFromEnvironment`
/// semantics: `wss` is asked as `https` (HTTPS_PROXY), `ws` as `http`
/// (HTTP_PROXY, refused when REQUEST_METHOD says we run under CGI); loopback
/// targets and NO_PROXY matches go direct.
pub(crate) fn from_env(endpoint: &Uri, lookup: &dyn Fn(&str) -> Option<String>) -> EnvProxy {
    let secure = endpoint.scheme_str() == Some("wss");
    let names = if secure { ["HTTPS_PROXY", "https_proxy"] } else { ["HTTP_PROXY", "http_proxy"] };
    let Some((var, value)) = first_set(lookup, names) else { return EnvProxy::Unset };
    let proxy = match parse_env_value(&value) {
        Ok(p) => p,
        Err(reason) => return EnvProxy::Ignored { var, reason },
    };
    if !secure && lookup("REQUEST_METHOD").is_some_and(|v| !v.is_empty()) {
        let reason = "REQUEST_METHOD is set (running as CGI), where HTTP_PROXY may come from a client".into();
        return EnvProxy::Ignored { var, reason };
    }
    let host = endpoint.host().map(|h| unbracket(h).to_ascii_lowercase()).unwrap_or_default();
    let port = endpoint.port_u16().unwrap_or(if secure { 443 } else { 80 });
    if is_loopback(&host) {
        return EnvProxy::Bypass { var, reason: "loopback" };
    }
    let no_proxy = first_set(lookup, ["NO_PROXY", "no_proxy"]).map(|(_, v)| v).unwrap_or_default();
    if NoProxy::parse(&no_proxy).matches(&host, &port.to_string()) {
        return EnvProxy::Bypass { var, reason: "NO_PROXY" };
    }
    EnvProxy::Use { var, proxy }
}

/// A proxy variable's value: a URL, or `host[:port]` meaning `http://`.
fn parse_env_value(value: &str) -> Result<ProxyUrl, String> {
    let value = value.trim();
    match value.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("socks5") || scheme.eq_ignore_ascii_case("socks5h") => {
            Err("SOCKS proxies are not supported; use an HTTP CONNECT proxy".into())
        }
        Some(_) => ProxyUrl::parse_lenient(value),
        None => ProxyUrl::parse_lenient(&format!("http://{value}")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A parsed NO_PROXY list (see `from_env`).
#[derive(Debug, Default)]
struct NoProxy {
    all: bool,
    ips: Vec<IpRule>,
    domains: Vec<DomainRule>,
}

#[derive(Debug)]
enum IpRule {
    Cidr { net: IpAddr, prefix: u8 },
    Ip { ip: IpAddr, port: String },
}

#[derive(Debug)]
struct DomainRule {
    /// Always starts with '.'.
    suffix: String,
    /// Written without a leading '.', so the bare name matches too.
    exact_too: bool,
    port: String,
}

impl NoProxy {
    /// Entries are comma-separated; malformed ones are skipped, as Go does.
    fn parse(list: &str) -> Self {
        let mut np = NoProxy::default();
        for entry in list.split(',') {
            let entry = entry.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                return NoProxy { all: true, ..Default::default() };
            }
            if let Some(rule) = parse_cidr(&entry) {
                np.ips.push(rule);
                continue;
            }
            let (host, port) = split_host_port(&entry);
            if let Ok(ip) = unbracket(host).parse::<IpAddr>() {
                np.ips.push(IpRule::Ip { ip: ip.to_canonical(), port: port.to_owned() });
                continue;
            }
            if host.is_empty() {
                continue;
            }
            let host = host.strip_prefix('*').filter(|h| h.starts_with('.')).unwrap_or(host);
            let (suffix, exact_too) = match host.strip_prefix('.') {
                Some(_) => (host.to_owned(), false),
                None => (format!(".{host}"), true),
            };
            np.domains.push(DomainRule { suffix, exact_too, port: port.to_owned() });
        }
        np
    }

    /// `host` is lower case, without brackets.
    fn matches(&self, host: &str, port: &str) -> bool {
        if self.all {
            return true;
        }
        let port_ok = |rule_port: &str| rule_port.is_empty() || rule_port == port;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            let hit = self.ips.iter().any(|r| match r {
                IpRule::Cidr { net, prefix } => in_prefix(ip, *net, *prefix),
                IpRule::Ip { ip: rule_ip, port: p } => *rule_ip == ip && port_ok(p),
            });
            if hit {
                return true;
            }
        }
        self.domains
            .iter()
            .any(|d| (host.ends_with(&d.suffix) || (d.exact_too && host == &d.suffix[1..])) && port_ok(&d.port))
    }
}

/// `host:port` or `[v6]:port` into its parts; anything else is all host.
fn split_host_port(s: &str) -> (&str, &str) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, port)) = rest.split_once("]:") {
            return (host, port);
        }
        return (s, "");
    }
    match s.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, port),
        _ => (s, ""),
    }
}

fn parse_cidr(s: &str) -> Option<IpRule> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(IpRule::Cidr { net: ip, prefix })
}

fn in_prefix(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// A ready-to-use CONNECT tunnel maker for one proxy.
pub(crate) struct Tunnel {
    url: ProxyUrl,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authorization: Option<String>,
}

impl Tunnel {
    /// For an `https://` proxy, TLS to it trusts what `server.tls` trusts
    /// and verifies the proxy's own host name.
    pub(crate) fn new(url: ProxyUrl, server: &ServerConfig) -> Result<Self, TlsError> {
        let tls = match url.scheme {
            ProxyScheme::Http => None,
            ProxyScheme::Https => {
                let name = ServerName::try_from(unbracket(&url.host).to_owned()).map_err(|e| TlsError::Invalid {
                    field: "server.proxy_url",
                    reason: format!("invalid TLS server name {:?}: {e}", url.host),
                })?;
                Some((TlsConnector::from(tls::client_config(server.tls.as_ref())?), name))
            }
        };
        let authorization = url.authorization();
        Ok(Self { url, tls, authorization })
    }

    /// A byte stream to `target` (`host:port`) through the proxy.
    pub(crate) async fn connect(&self, target: &str) -> Result<BoxedIo, DialError> {
        let addr = self.url.addr();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| DialError::Tcp { addr: format!("proxy {addr}"), source })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp, target).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| DialError::Tls { host: format!("proxy {}", self.url.host), source })?;
                self.handshake(tls, target).await
            }
        }
    }

    async fn handshake<S>(&self, mut io: S, target: &str) -> Result<BoxedIo, DialError>
    where
        S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.url.to_string();
        let io_err = |source: std::io::Error| DialError::ProxyIo { proxy: proxy.clone(), source };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await.map_err(io_err)?;
        io.flush().await.map_err(io_err)?;
        let head = read_head(&mut io).await.map_err(io_err)?;
        let (status, reason) = status_line(&head).ok_or_else(|| DialError::ProxyIo {
            proxy: proxy.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer to CONNECT"),
        })?;
        if !(200..300).contains(&status) {
            return Err(DialError::ProxyRefused { proxy, target: target.to_owned(), status, reason });
        }
        Ok(Box::new(io))
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Reads an HTTP head up to and including its blank line, byte by byte so
/// nothing of the tunnelled stream after it is consumed.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !(head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n")) {
        if head.len() >= MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "HTTP head larger than 16 KiB"));
        }
        if io.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before an answer"));
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// `HTTP/1.x NNN reason` → (NNN, reason).
fn status_line(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    let code = parts.next().filter(|c| c.len() == 3)?.parse().ok()?;
    Some((code, parts.next().unwrap_or("").to_owned()))
}

/// The tunnel for `endpoint`'s links: the upstream's `proxy_url` when set,
/// else the environment (through `lookup`). Logs the choice once. `path`:
/// where the upstream is configured (`server`, `upstreams.green`).
pub(crate) fn for_endpoint(
    server: &ServerConfig,
    path: &str,
    endpoint: &Uri,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Tunnel>, DialerError> {
    if let Some(p) = server.proxy_url.as_deref().filter(|p| !p.is_empty()) {
        let url = ProxyUrl::parse(p).map_err(|m| ConfigError::field(format!("{path}.proxy_url"), m))?;
        tracing::info!(%endpoint, proxy = %url, "upstream links go through {path}.proxy_url");
        return Ok(Some(Tunnel::new(url, server)?));
    }
    match from_env(endpoint, lookup) {
        EnvProxy::Unset => {
            tracing::debug!(%endpoint, "no proxy variable applies; upstream links dial directly");
            Ok(None)
        }
        EnvProxy::Use { var, proxy } => {
            tracing::info!(%endpoint, %proxy, source = var, "upstream links go through the proxy from the environment");
            Ok(Some(Tunnel::new(proxy, server)?))
        }
        EnvProxy::Bypass { var, reason } => {
            tracing::info!(%endpoint, source = var, reason, "upstream links dial directly: endpoint exempt from the proxy");
            Ok(None)
        }
        EnvProxy::Ignored { var, reason } => {
            tracing::warn!(%endpoint, source = var, %reason, "proxy variable ignored; upstream links dial directly");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
