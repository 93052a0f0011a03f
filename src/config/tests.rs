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
    assert!(e.starts_with("listener.endpoint:") && e.contains("ip:port"), "{e}");
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
