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
use opamp_policy::{export_policy, wire, Direction, FieldValue, Hooks, Message, Policy, Verdict};

/// `AgentToServer.effective_config`.
pub const EFFECTIVE_CONFIG: u32 = 6;

pub struct RedactSecrets {
    keys: Vec<String>,
}

/// The path from `EffectiveConfig` to each config body, as field numbers:
/// `EffectiveConfig.config_map` → `AgentConfigMap.config_map` (a map: one
/// entry per file) → the entry's value (`AgentConfigFile`) → its `body`.
const CONFIG_MAP: u32 = 1;
const MAP_ENTRY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const BODY: u32 = 1;

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
        Ok(Self { keys })
    }

    fn hooks(&self) -> Hooks {
        Hooks::FILTER_AGENT_TO_SERVER
    }

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
