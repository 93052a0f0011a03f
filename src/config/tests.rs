use super::*;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_yaml("server:\n  endpoint: ws://127.0.0.1:4321/v1/opamp\n").unwrap();
    assert_eq!(c.server.connections, 3);
    assert_eq!(c.server.auth_timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.listener.endpoint, "0.0.0.0:4320");
    assert_eq!(c.listener.max_message_size, ByteSize::mib(64));
}

#[test]
fn reference_shape_with_collector_wrapper() {
    std::env::set_var("OPAMP_GW_TEST_KEY", "abc");
    let c = Config::from_yaml(
        r#"
extensions:
  opampgateway:
    server:
      endpoint: wss://opamp.example.com/v1/opamp
      headers:
        Authorization: "Secret-Key ${env:OPAMP_GW_TEST_KEY}"
        X-Multi: [a, b]
      connections: 5
      tls: { insecure_skip_verify: true }
    listener:
      endpoint: 127.0.0.1:4320
"#,
    )
    .unwrap();
    assert_eq!(c.server.connections, 5);
    assert_eq!(c.server.headers["Authorization"], HeaderValues::One("Secret-Key abc".into()));
    assert_eq!(c.server.headers["X-Multi"].iter().collect::<Vec<_>>(), ["a", "b"]);
}

fn err(yaml: &str) -> String {
    Config::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn errors_name_the_field_and_the_form() {
    let e = err("server:\n  endpoint: ws://h/x\n  conections: 3\n");
    assert!(e.starts_with("server.conections:") && e.contains("unknown field `conections`, expected one of"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\n  connections: lots\n");
    assert!(e.starts_with("server.connections:"), "{e}");
    let e = err("server:\n  endpoint: http://h/x\n");
    assert!(e.starts_with("server.endpoint:") && e.contains("ws://"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\n  auth_timeout: soon\n");
    assert!(e.starts_with("server.auth_timeout:"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\nlistener:\n  endpoint: nowhere\n");
    assert!(e.starts_with("listener.endpoint:") && e.contains("host:port"), "{e}");
    let e = err("listener:\n  endpoint: 0.0.0.0:1\n");
    assert!(e.contains("missing field `server`"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\n  connections: 0\n");
    assert!(e.starts_with("server.connections:"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\n  headers:\n    A: {x: 1}\n");
    assert!(e.starts_with("server.headers.A:") && e.contains("string or a list"), "{e}");
    let e = err("extensions:\n  opampgateway:\n    server:\n      endpoint: ws://h/x\n      bogus: 1\n");
    assert!(e.starts_with("extensions.opampgateway.server.bogus:"), "{e}");
}

#[test]
fn sizes_accept_units() {
    let c = Config::from_yaml(
        "server:\n  endpoint: ws://h/x\n  max_message_size: 512KiB\nlistener:\n  max_message_size: 1024\n",
    )
    .unwrap();
    assert_eq!(c.server.max_message_size, ByteSize(512 << 10));
    assert_eq!(c.listener.max_message_size, ByteSize(1024));
    let e = err("server:\n  endpoint: ws://h/x\n  max_message_size: 5 parsecs\n");
    assert!(e.starts_with("server.max_message_size:") && e.contains("64MiB"), "{e}");
}

/// The reference README's example, exactly as published.
const REFERENCE_EXAMPLE: &str = r#"
extensions:
  opampgateway:
    server:
      endpoint: wss://opamp.example.com/v1/opamp
      headers:
        Authorization: "Secret-Key ${env:OPAMP_SECRET_KEY}"
      connections: 3
    listener:
      endpoint: 0.0.0.0:4320
      tls:
        cert_file: /etc/otel/server.crt
        key_file: /etc/otel/server.key

service:
  extensions: [opampgateway]
"#;

#[test]
fn reference_readme_examples_load_as_written() {
    std::env::set_var("OPAMP_SECRET_KEY", "k1");
    let c = Config::from_yaml(REFERENCE_EXAMPLE).unwrap();
    assert_eq!(c.server.endpoint, "wss://opamp.example.com/v1/opamp");
    assert_eq!(c.server.headers["Authorization"], HeaderValues::One("Secret-Key k1".into()));
    assert_eq!(c.server.connections, 3);
    assert_eq!(c.listener.endpoint, "0.0.0.0:4320");
    assert!(c.listener.tls.is_some());
    assert_eq!(c.key_prefix, "extensions.opampgateway.");
    assert_eq!(c.field_path("listener.endpoint"), "extensions.opampgateway.listener.endpoint");

    let minimal = "extensions:\n  opampgateway:\n    server:\n      endpoint: ws://opamp-server:4320/v1/opamp\n    \
                   listener:\n      endpoint: 0.0.0.0:4320\n\nservice:\n  extensions: [opampgateway]\n";
    assert_eq!(Config::from_yaml(minimal).unwrap().server.endpoint, "ws://opamp-server:4320/v1/opamp");
}

const FULL_COLLECTOR: &str = r#"
receivers:
  otlp:
    protocols: { grpc: { endpoint: 0.0.0.0:4317 } }
processors:
  batch: {}
exporters:
  debug: {}
connectors: {}
extensions:
  health_check: { endpoint: 0.0.0.0:13133 }
  opampgateway/edge:
    server:
      endpoint: ws://opamp:4320/v1/opamp
    listener:
      endpoint: :4320
      read_header_timeout: 3s
service:
  extensions: [health_check, opampgateway/edge]
  pipelines:
    traces: { receivers: [otlp], processors: [batch], exporters: [debug] }
"#;

#[test]
fn full_collector_config_uses_the_gateway_and_names_the_rest() {
    let c = Config::from_yaml(FULL_COLLECTOR).unwrap();
    assert_eq!(c.listener.endpoint, ":4320");
    assert_eq!(c.listener.header_timeout, std::time::Duration::from_secs(3));
    assert_eq!(c.key_prefix, "extensions.opampgateway/edge.");

    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(FULL_COLLECTOR).unwrap();
    let u = collector::unwrap(&mut v).unwrap();
    assert_eq!(u.ignored, ["receivers", "processors", "exporters", "connectors", "service", "extensions.health_check"]);

    let bad = FULL_COLLECTOR.replace("endpoint: :4320", "endpoint: nowhere");
    let e = err(&bad);
    assert!(e.starts_with("extensions.opampgateway/edge.listener.endpoint:") && e.contains("host:port"), "{e}");
}

#[test]
fn collector_form_errors() {
    let e = err("extensions:\n  health_check: {}\nservice: {}\n");
    assert!(e.starts_with("extensions:") && e.contains("no opampgateway extension"), "{e}");
    let two = "extensions:\n  opampgateway/a: {}\n  opampgateway/b: {}\n";
    let e = err(two);
    assert!(e.starts_with("extensions:") && e.contains("opampgateway/a, opampgateway/b"), "{e}");
    let e = err("extensions:\n  opampgateway:\n    server: { endpoint: ws://h/x }\nlistener: {}\n");
    assert!(e.starts_with("listener:") && e.contains("extensions.opampgateway"), "{e}");
    let e = err("extensions:\n  opampgateway:\n");
    assert!(e.starts_with("extensions.opampgateway:") && e.contains("missing field `server`"), "{e}");
    let e = err("extensions:\n  opampgateway:\n    server: { endpoint: ws://h/x, connections: 0 }\n");
    assert!(e.starts_with("extensions.opampgateway.server.connections:"), "{e}");
}

fn listener_yaml(body: &str) -> String {
    format!("server:\n  endpoint: ws://h/x\nlistener:\n{body}")
}

#[test]
fn listener_endpoint_takes_go_forms() {
    for ep in [":4320", "localhost:4320", "[::]:4320", "[::1]:0", "0.0.0.0:4320", "gateway.internal:4320"] {
        let c = Config::from_yaml(&listener_yaml(&format!("  endpoint: \"{ep}\"\n"))).unwrap();
        assert_eq!(c.listener_endpoint().unwrap().to_string(), ep);
    }
    assert_eq!(
        Config::from_yaml(&listener_yaml("  endpoint: :4320\n")).unwrap().listener_endpoint().unwrap().host,
        ListenHost::Any
    );
}

#[test]
fn collector_http_server_keys_are_refused_with_what_to_use() {
    for (key, value, hint) in [
        ("max_request_body_size", "1000", "listener.max_message_size"),
        ("auth", "{ authenticator: basicauth }", "upstream server's decision"),
        ("cors", "{ allowed_origins: [\"*\"] }", "not browsers"),
        ("compression_algorithms", "[gzip]", "gzip bodies"),
        ("include_metadata", "true", "connect handshake"),
        ("response_headers", "{ X-A: b }", "response headers"),
        ("read_timeout", "5s", "header_timeout"),
        ("middlewares", "[]", "policy"),
    ] {
        let e = err(&listener_yaml(&format!("  {key}: {value}\n")));
        assert!(e.starts_with(&format!("listener.{key}:")) && e.contains(hint), "{key}: {e}");
    }
    let e = err("extensions:\n  opampgateway:\n    server: { endpoint: ws://h/x }\n    listener:\n      cors: {}\n");
    assert!(e.starts_with("extensions.opampgateway.listener.cors:") && e.contains("not browsers"), "{e}");
    let e = err(&listener_yaml("  keepalive: { idle_timeout: 90s }\n"));
    assert!(e.starts_with("listener.keepalive:") && e.contains("listener.idle_timeout"), "{e}");
    let e = err(&listener_yaml("  bogus: 1\n"));
    assert!(e.starts_with("listener.bogus:") && e.contains("unknown field `bogus`, expected one of"), "{e}");
}

#[test]
fn boundary_settings_defaults_alias_and_checks() {
    let c = Config::from_yaml(&listener_yaml("  endpoint: :0\n")).unwrap();
    let l = &c.listener;
    assert_eq!(l.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(l.idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(l.http.idle_timeout, std::time::Duration::from_secs(120), "a different setting");
    assert_eq!(l.tls_handshake_timeout, std::time::Duration::from_secs(10));
    assert_eq!(l.max_connections, default_max_connections());
    assert_eq!(l.max_handshaking_per_source, 1024);

    let c = Config::from_yaml(&listener_yaml("  read_header_timeout: 250ms\n  idle_timeout: 5s\n")).unwrap();
    assert_eq!(c.listener.header_timeout, std::time::Duration::from_millis(250));
    assert_eq!(c.listener.idle_timeout, std::time::Duration::from_secs(5));
    let e = err(&listener_yaml("  read_header_timeout: 1s\n  header_timeout: 2s\n"));
    assert!(e.contains("duplicate field"), "{e}");
    for (key, value) in [
        ("header_timeout", "0s"),
        ("idle_timeout", "0s"),
        ("tls_handshake_timeout", "0s"),
        ("max_connections", "0"),
        ("max_handshaking_per_source", "0"),
    ] {
        let e = err(&listener_yaml(&format!("  {key}: {value}\n")));
        assert!(e.starts_with(&format!("listener.{key}:")), "{key}: {e}");
    }
}

#[test]
fn naming_is_a_config_key() {
    use crate::telemetry::MetricNaming;
    let base = "server:\n  endpoint: ws://h/v1/opamp\ntelemetry:\n  metrics:\n";
    let naming = |yaml: &str| Config::from_yaml(&format!("{base}{yaml}")).map(|c| c.telemetry.metrics.naming);
    assert_eq!(naming("    endpoint: 127.0.0.1:0\n").unwrap(), MetricNaming::Opampgateway);
    assert_eq!(naming("    naming: otelcol\n").unwrap(), MetricNaming::Otelcol);
    let err = naming("    naming: prometheus\n").unwrap_err().to_string();
    assert!(err.contains("telemetry.metrics.naming") && err.contains("otelcol"), "{err}");
}

#[test]
fn server_headers_are_checked_once_and_parsed_in_order() {
    let c = Config::from_yaml("server:\n  endpoint: ws://h/x\n  headers:\n    X-Multi: [a, b]\n    Authorization: k\n")
        .unwrap();
    let pairs: Vec<(String, String)> =
        c.server_headers().unwrap().into_iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.contains(&("x-multi".into(), "a".into())) && pairs.contains(&("authorization".into(), "k".into())));
    let multi: Vec<&str> = pairs.iter().filter(|(n, _)| n == "x-multi").map(|(_, v)| v.as_str()).collect();
    assert_eq!(multi, ["a", "b"], "a list keeps its order");
    let e = err("server:\n  endpoint: ws://h/x\n  headers:\n    \"bad name\": v\n");
    assert!(e.starts_with("server.headers.bad name:") && e.contains("not a valid HTTP header name"), "{e}");
    let e = err("server:\n  endpoint: ws://h/x\n  headers:\n    X-A: \"new\\nline\"\n");
    assert!(e.starts_with("server.headers.X-A:") && e.contains("visible ASCII"), "{e}");
}

#[test]
fn max_handshaking_defaults_to_64_and_must_be_positive() {
    let c = Config::from_yaml("server:\n  endpoint: ws://h/x\n").unwrap();
    assert_eq!(c.listener.max_handshaking, 64);
    let c = Config::from_yaml("server:\n  endpoint: ws://h/x\nlistener:\n  max_handshaking: 256\n").unwrap();
    assert_eq!(c.listener.max_handshaking, 256);
    let e = err("server:\n  endpoint: ws://h/x\nlistener:\n  max_handshaking: 0\n");
    assert!(e.starts_with("listener.max_handshaking:") && e.contains("at least 1"), "{e}");
}
