use super::*;
use crate::config::Config;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

fn resolve(endpoint: &str, vars: &[(&str, &str)]) -> EnvProxy {
    from_env(&endpoint.parse().unwrap(), &env(vars))
}

fn proxy_for(endpoint: &str, vars: &[(&str, &str)]) -> Option<String> {
    resolve(endpoint, vars).proxy().map(ToString::to_string)
}

#[test]
fn scheme_picks_the_variable() {
    let both = [("HTTP_PROXY", "http://plain:3128"), ("HTTPS_PROXY", "http://secure:3128")];
    assert_eq!(proxy_for("ws://opamp.example.com/v1/opamp", &both).as_deref(), Some("http://plain:3128"));
    assert_eq!(proxy_for("wss://opamp.example.com/v1/opamp", &both).as_deref(), Some("http://secure:3128"));
    // HTTP_PROXY is not a fallback for wss (current Go), nor HTTPS_PROXY for ws.
    assert_eq!(proxy_for("wss://opamp.example.com", &both[..1]), None);
    assert_eq!(proxy_for("ws://opamp.example.com", &both[1..]), None);
    assert_eq!(resolve("ws://opamp.example.com", &[]), EnvProxy::Unset);
}

#[test]
fn upper_case_wins_and_empty_is_unset() {
    let vars = [("HTTPS_PROXY", "http://upper:1"), ("https_proxy", "http://lower:2")];
    assert_eq!(proxy_for("wss://h.example", &vars).as_deref(), Some("http://upper:1"));
    let vars = [("HTTPS_PROXY", ""), ("https_proxy", "http://lower:2")];
    assert_eq!(proxy_for("wss://h.example", &vars).as_deref(), Some("http://lower:2"));
    let vars = [("NO_PROXY", "other.example"), ("no_proxy", "h.example"), ("HTTP_PROXY", "p:1")];
    assert!(proxy_for("ws://h.example", &vars).is_some(), "NO_PROXY (upper) shadows no_proxy");
}

#[test]
fn value_forms() {
    let cases = [
        ("proxy.corp:3128", Some("http://proxy.corp:3128")),
        ("proxy.corp", Some("http://proxy.corp:80")),
        ("10.1.2.3:8080", Some("http://10.1.2.3:8080")),
        ("localhost:3128", Some("http://localhost:3128")),
        ("https://proxy.corp", Some("https://proxy.corp:443")),
        ("HTTP://Proxy.Corp:81/ignored/path", Some("http://proxy.corp:81")),
        ("http://[2001:db8::1]:3128", Some("http://[2001:db8::1]:3128")),
        ("socks5://proxy.corp:1080", None),
        ("ftp://proxy.corp", None),
        ("http://", None),
    ];
    for (value, want) in cases {
        let got = proxy_for("ws://opamp.example.com", &[("HTTP_PROXY", value)]);
        assert_eq!(got.as_deref(), want, "HTTP_PROXY={value}");
    }
    let ignored = resolve("ws://opamp.example.com", &[("http_proxy", "socks5://p:1")]);
    assert!(matches!(ignored, EnvProxy::Ignored { var: "http_proxy", ref reason } if reason.contains("SOCKS")));
}

#[test]
fn loopback_is_never_proxied() {
    let vars = [("HTTP_PROXY", "p:1"), ("HTTPS_PROXY", "p:1")];
    for endpoint in [
        "ws://localhost:4320/v1/opamp",
        "wss://LocalHost/v1/opamp",
        "ws://127.0.0.1:4320",
        "ws://127.3.2.1",
        "wss://[::1]:4320/v1/opamp",
        "ws://[::ffff:127.0.0.1]",
    ] {
        assert_eq!(resolve(endpoint, &vars), EnvProxy::Bypass { var: endpoint_var(endpoint), reason: "loopback" });
    }
    assert!(proxy_for("ws://128.0.0.1", &vars).is_some());
    assert!(proxy_for("ws://localhost.example", &vars).is_some());
}

fn endpoint_var(endpoint: &str) -> &'static str {
    if endpoint.starts_with("wss") {
        "HTTPS_PROXY"
    } else {
        "HTTP_PROXY"
    }
}

/// NO_PROXY semantics as golang.org/x/net/http/httpproxy documents them,
/// restated: (NO_PROXY, endpoint, proxied?).
#[test]
fn no_proxy_rules() {
    let cases: &[(&str, &str, bool)] = &[
        // `*` alone or in a list matches everything.
        ("*", "ws://any.example", false),
        ("a.example, *", "ws://any.example", false),
        // A name matches itself and its subdomains, not lookalikes.
        ("foo.com", "ws://foo.com", false),
        ("foo.com", "ws://bar.foo.com", false),
        ("foo.com", "ws://a.b.foo.com", false),
        ("foo.com", "ws://barfoo.com", true),
        ("foo.com", "ws://foo.com.evil", true),
        // A leading dot matches subdomains only; `*.` is the same.
        (".y.com", "ws://x.y.com", false),
        (".y.com", "ws://y.com", true),
        ("*.y.com", "ws://x.y.com", false),
        ("*.y.com", "ws://y.com", true),
        // Case and surrounding spaces do not matter; empty entries are skipped.
        (" , FOO.com ,", "ws://Bar.Foo.COM", false),
        // An optional port must equal the endpoint's (default 80 / 443).
        ("foo.com:4320", "ws://foo.com:4320", false),
        ("foo.com:4320", "ws://foo.com:4321", true),
        ("foo.com:80", "ws://foo.com", false),
        ("foo.com:443", "wss://foo.com", false),
        ("foo.com:443", "ws://foo.com", true),
        // IP addresses, with or without a port, and CIDR ranges.
        ("10.0.0.7", "ws://10.0.0.7:4320", false),
        ("10.0.0.7:4320", "ws://10.0.0.7:4320", false),
        ("10.0.0.7:9", "ws://10.0.0.7:4320", true),
        ("10.0.0.0/8", "ws://10.200.1.1", false),
        ("10.0.0.0/8", "ws://11.0.0.1", true),
        ("192.168.0.0/16,172.16.0.0/12", "ws://172.31.255.255", false),
        ("2001:db8::/32", "ws://[2001:db8:1::5]", false),
        ("2001:db8::/32", "ws://[2001:db9::5]", true),
        ("2001:db8::5", "ws://[2001:db8::5]", false),
        ("[2001:db8::5]:4320", "ws://[2001:db8::5]:4320", false),
        ("0.0.0.0/0", "ws://8.8.8.8", false),
        // An IP rule does not match a name, and a name rule not an unrelated IP.
        ("10.0.0.0/8", "ws://ten.example", true),
        ("foo.com", "ws://10.0.0.1", true),
        // Malformed entries are ignored.
        (":80,/,10.0.0.0/99", "ws://foo.com", true),
    ];
    for (no_proxy, endpoint, proxied) in cases {
        let vars = [("HTTP_PROXY", "http://p:1"), ("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", no_proxy)];
        let got = resolve(endpoint, &vars);
        assert_eq!(got.proxy().is_some(), *proxied, "NO_PROXY={no_proxy:?} endpoint={endpoint}: {got:?}");
        if !proxied {
            assert!(matches!(got, EnvProxy::Bypass { reason: "NO_PROXY", .. }), "{got:?}");
        }
    }
}

#[test]
fn cgi_refuses_http_proxy_only() {
    let vars = [("HTTP_PROXY", "p:1"), ("HTTPS_PROXY", "p:2"), ("REQUEST_METHOD", "GET")];
    assert!(matches!(resolve("ws://h.example", &vars), EnvProxy::Ignored { var: "HTTP_PROXY", .. }));
    assert_eq!(proxy_for("wss://h.example", &vars).as_deref(), Some("http://p:2"));
    let not_cgi = [("HTTP_PROXY", "p:1"), ("REQUEST_METHOD", "")];
    assert!(proxy_for("ws://h.example", &not_cgi).is_some());
}

#[test]
fn config_error_names_the_field() {
    let yaml = "server:\n  endpoint: ws://h/v1/opamp\n  proxy_url: proxy.corp:3128\n";
    let err = Config::from_yaml(yaml).unwrap_err().to_string();
    assert!(err.starts_with("server.proxy_url: ") && err.contains("http://"), "{err}");
    let ok = "server:\n  endpoint: ws://h/v1/opamp\n  proxy_url: http://proxy.corp:3128\n";
    assert_eq!(Config::from_yaml(ok).unwrap().server.proxy_url.as_deref(), Some("http://proxy.corp:3128"));
    assert!(Config::from_yaml("server:\n  endpoint: ws://h/v1/opamp\n  proxy_url: \"\"\n").is_ok());
}

#[test]
fn answer_status_line() {
    assert_eq!(
        status_line(b"HTTP/1.1 200 Connection established\r\n\r\n"),
        Some((200, "Connection established".into()))
    );
    assert_eq!(status_line(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").map(|s| s.0), Some(407));
    assert_eq!(status_line(b"HTTP/1.1 204\r\n\r\n"), Some((204, String::new())));
    assert_eq!(status_line(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
}
