//! `redact_secrets`: secrets in agents' effective configs never leave the
//! segment.
//!
//! Agents report their running config (`AgentToServer.effective_config`,
//! field 6) so the server can show it. Collector configs often carry
//! credentials inline. This policy rewrites the value of every listed key in
//! every config file body before the message goes upstream:
//! `password: hunter2` becomes `password: <redacted>`.
//!
//! ```yaml
//! # redact_secrets.yaml
//! keys: [api-key, password, token]   # the default; case-insensitive, - and _ alike
//! ```
//!
//! Hook: `filter`, agent→server only. Messages without field 6 (nearly all:
//! agents send their config when it changes) cost one `field` call that
//! copies nothing. Nothing is decoded: the policy walks the wire format down
//! to each config body, only the bytes on the path to a changed body are
//! rebuilt, and the answer is a `set-field` the gateway splices into the
//! message, so the rest of it is never copied. Bodies are treated as
//! text (YAML, JSON, `key=value`);
//! see [`redact`] for exactly what is matched.

pub mod redact;

use opamp_policy::config::Config;
use opamp_policy::{export_policy, fields, wire, Direction, Directions, FieldValue, Filter, Message, Policy, Verdict};

/// `AgentToServer.effective_config`.
pub const EFFECTIVE_CONFIG: u32 = fields::agent_to_server::EFFECTIVE_CONFIG;

pub struct RedactSecrets {
    keys: redact::Keys,
}

/// The path from `EffectiveConfig` to each config body:
/// `EffectiveConfig.config_map` → `AgentConfigMap.config_map` (a map: one
/// entry per file) → the entry's value (`AgentConfigFile`) → its `body`.
const CONFIG_MAP: u32 = fields::effective_config::CONFIG_MAP;
const MAP_ENTRY: u32 = fields::agent_config_map::CONFIG_MAP;
const ENTRY_VALUE: u32 = fields::agent_config_map::config_map_entry::VALUE;
const BODY: u32 = fields::agent_config_file::BODY;

impl RedactSecrets {
    /// Redacts every body of an encoded `EffectiveConfig`; `None` if nothing
    /// needed redacting.
    ///
    /// Walks the wire format down to each body instead of decoding: no
    /// allocation unless a body changes, and every other byte (file names,
    /// content types, fields newer than our proto) is kept as it was.
    pub fn redact_effective_config(&self, encoded: &[u8]) -> Result<Option<Vec<u8>>, wire::Malformed> {
        wire::rewrite_field(encoded, CONFIG_MAP, |map| {
            wire::rewrite_field(map, MAP_ENTRY, |entry| {
                wire::rewrite_field(entry, ENTRY_VALUE, |file| {
                    wire::rewrite_field(file, BODY, |body| Ok(redact::redact(body, &self.keys)))
                })
            })
        })
    }
}

impl Policy for RedactSecrets {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["keys"])?;
        let keys = config.list("keys").unwrap_or_else(|| ["api-key", "password", "token"].map(String::from).to_vec());
        if keys.iter().any(|k| k.trim().is_empty()) {
            return Err("`keys` must not contain empty names".into());
        }
        Ok(Self { keys: redact::Keys::new(&keys) })
    }
}

impl Filter for RedactSecrets {
    const DIRECTIONS: Directions = Directions::AgentToServer;

    fn filter(&self, direction: Direction, _uid: &[u8], message: &Message) -> Verdict {
        if direction != Direction::AgentToServer {
            return Verdict::Forward;
        }
        // One host call either way: `None` (nearly always) copies nothing.
        let Some(FieldValue::Bytes(encoded)) = message.field(EFFECTIVE_CONFIG) else {
            return Verdict::Forward;
        };
        match self.redact_effective_config(&encoded) {
            Ok(None) => Verdict::Forward,
            // The gateway splices it in: the rest of the message never
            // crosses into the policy.
            Ok(Some(redacted)) => Verdict::set_bytes_field(EFFECTIVE_CONFIG, redacted),
            // Not decodable: the server could not read it either. Keep it
            // from leaving rather than guess what is inside.
            Err(e) => {
                opamp_policy::warn!("undecodable effective_config dropped: {e}");
                Verdict::Drop
            }
        }
    }
}

export_policy!(RedactSecrets);

// Tests build `Message`s, which only the host side can.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use opamp_policy::proto::{AgentConfigFile, AgentConfigMap, AgentToServer, EffectiveConfig};
    use opamp_policy::{hooks_of, Decode, Hooks};

    fn report(body: &str) -> AgentToServer {
        let file = AgentConfigFile { body: body.as_bytes().to_vec(), content_type: "text/yaml".into() };
        let map = AgentConfigMap { config_map: [("collector.yaml".to_owned(), file)].into() };
        AgentToServer {
            instance_uid: vec![1; 16],
            effective_config: Some(EffectiveConfig { config_map: Some(map) }),
            ..Default::default()
        }
    }

    #[test]
    fn the_filter_redacts_bodies_and_forwards_the_rest() {
        let p = RedactSecrets::new("").unwrap();
        let msg = Message::from_proto(&report("exporters:\n  otlp:\n    password: hunter2\n"));
        let Verdict::SetField(edit) = p.filter(Direction::AgentToServer, &[1; 16], &msg) else {
            panic!("a config with a password is rewritten");
        };
        assert_eq!(edit.number, EFFECTIVE_CONFIG);
        let Some(FieldValue::Bytes(config)) = edit.value else { panic!("a bytes field") };
        // What the gateway splices in is a whole `EffectiveConfig`.
        let mut spliced = Vec::new();
        wire::put_bytes_field(&mut spliced, EFFECTIVE_CONFIG, &config);
        let spliced = Message::new(spliced);
        let config: EffectiveConfig = spliced.decode(EFFECTIVE_CONFIG).unwrap().unwrap();
        let body = &config.config_map.unwrap().config_map["collector.yaml"].body;
        assert_eq!(String::from_utf8_lossy(body), "exporters:\n  otlp:\n    password: <redacted>\n");

        let clean = Message::from_proto(&report("receivers: {}\n"));
        assert_eq!(p.filter(Direction::AgentToServer, &[1; 16], &clean), Verdict::Forward);
        let heartbeat = Message::from_proto(&AgentToServer { instance_uid: vec![1; 16], ..Default::default() });
        assert_eq!(p.filter(Direction::AgentToServer, &[1; 16], &heartbeat), Verdict::Forward);
    }

    #[test]
    fn judges_only_what_agents_send() {
        assert_eq!(hooks_of!(RedactSecrets), Hooks::FILTER_AGENT_TO_SERVER);
    }

    #[test]
    fn an_undecodable_config_is_kept_from_leaving() {
        let p = RedactSecrets::new("").unwrap();
        // Field 6 holding a length-delimited value that is not a message.
        let msg = Message::new(vec![0x32, 3, 0x0a, 9, 0]);
        assert_eq!(p.filter(Direction::AgentToServer, &[1; 16], &msg), Verdict::Drop);
    }
}
