//! The config loader on arbitrary text, and `${env:...}` expansion with a
//! fake environment: errors are fine, panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opamp_gateway::config::{expand_env, Config};

/// Variables the fake environment knows; any other name is unset.
fn lookup(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("127.0.0.1".into()),
        "PORT" => Some("4320".into()),
        "EMPTY" => Some(String::new()),
        "DOLLAR" => Some("$${env:HOST}".into()),
        "SECRET" => Some("Secret-Key abc".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_yaml(text) {
        let _ = config.check();
    }
    if let Ok(mut value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        let _ = expand_env(&mut value, "", &lookup);
    }
});
