//! `filter_agent_to_server` and `filter_server_to_agent` in a policy's
//! YAML: the top-level message fields its `filter` looks at. The chain calls
//! the policy only for messages that carry one of them, so a policy that
//! rewrites effective configs costs nothing on the heartbeats that make up
//! most of a fleet's traffic.
//!
//! ```yaml
//! filter_agent_to_server: [effective_config]   # names or field numbers
//! filter_server_to_agent: [5]                  # packages_available
//! ```
//!
//! Once either key is set, a direction without its key is not filtered at
//! all. Numbers are the OpAMP field numbers of `AgentToServer` and
//! `ServerToAgent`; names are proto/'s, and one it does not have is
//! refused. Flat keys, not a nested mapping: the policy SDK's config
//! reader (which every policy runs over the same text) reads only flat keys.

#[cfg(feature = "wasm")]
use super::config::show_yaml as show;
use super::Direction;

/// Bit `n` stands for top-level field `n` (1..=63).
pub type FieldSet = u64;

// `AGENT_TO_SERVER` and `SERVER_TO_AGENT`: (name, number) of each
// top-level field, generated from proto/ by build.rs.
#[cfg(feature = "wasm")]
include!(concat!(env!("OUT_DIR"), "/top_level_fields.rs"));

/// Which messages a policy's `filter` is called for, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterFields {
    /// `None`: every message (no `filter_fields` key).
    sets: Option<[FieldSet; 2]>,
}

impl FilterFields {
    /// The fields that make a message travelling `dir` worth a call;
    /// `None`: every message.
    pub fn wanted(&self, dir: Direction) -> Option<FieldSet> {
        self.sets.map(|s| s[dir.index()])
    }

    /// Reads the two keys from a policy's YAML (absent: every message).
    /// Errors name the key and the expected form. (Only the Wasm loader reads YAML.)
    #[cfg(feature = "wasm")]
    pub(crate) fn parse(map: &serde_yaml_ng::Mapping) -> Result<Self, String> {
        let mut sets = None;
        for (dir, table) in [(Direction::AgentToServer, AGENT_TO_SERVER), (Direction::ServerToAgent, SERVER_TO_AGENT)] {
            let key = format!("filter_{}", dir.as_str());
            let Some(list) = map.get(key.as_str()) else { continue };
            let items = list
                .as_sequence()
                .ok_or_else(|| format!("{key} must be a list of field names or numbers, not {}", show(list)))?;
            let set = &mut sets.get_or_insert([0; 2])[dir.index()];
            for item in items {
                let number = match (item.as_u64(), item.as_str()) {
                    (Some(n), _) if (1..64).contains(&n) => n as u32,
                    (_, Some(name)) => table.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| {
                        format!("{key}: unknown field {name:?} (use its OpAMP field number, 1 to 63)")
                    })?,
                    _ => {
                        return Err(format!(
                            "{key}: expected a field name or a number from 1 to 63, not {}",
                            show(item)
                        ))
                    }
                };
                *set |= 1 << number;
            }
        }
        Ok(Self { sets })
    }
}

/// The top-level fields `message` (bare protobuf) carries. Unreadable
/// messages carry "everything": each policy decides about those itself.
pub(crate) fn present(message: &[u8]) -> FieldSet {
    let mut set = 0;
    for field in opamp_wire::fields(message) {
        match field {
            Ok(f) if f.number < 64 => set |= 1 << f.number,
            Ok(_) => {}
            Err(_) => return FieldSet::MAX,
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FilterFields, String> {
        FilterFields::parse(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).unwrap().as_mapping().unwrap())
    }

    #[test]
    fn names_and_numbers_per_direction_and_a_left_out_direction_gets_nothing() {
        let f = parse("filter_agent_to_server: [effective_config, 13]").unwrap();
        assert_eq!(f.wanted(Direction::AgentToServer), Some(1 << 6 | 1 << 13));
        assert_eq!(f.wanted(Direction::ServerToAgent), Some(0));
        let f = parse("other: 1").unwrap();
        assert_eq!(f.wanted(Direction::ServerToAgent), None);
        let f = parse("filter_server_to_agent: [packages_available]").unwrap();
        assert_eq!(f.wanted(Direction::ServerToAgent), Some(1 << 5));
        assert_eq!(f.wanted(Direction::AgentToServer), Some(0));
    }

    #[test]
    fn errors_name_the_key_and_the_expected_form() {
        let e = parse("filter_agent_to_server: [efective_config]").unwrap_err();
        assert!(e.contains("filter_agent_to_server") && e.contains("efective_config"), "{e}");
        let e = parse("filter_agent_to_server: 6").unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
        let e = parse("filter_server_to_agent: [64]").unwrap_err();
        assert!(e.contains("filter_server_to_agent") && e.contains("1 to 63"), "{e}");
    }

    #[test]
    fn present_lists_top_level_fields_and_unreadable_means_all() {
        use prost::Message;
        let msg = crate::protocol::proto::AgentToServer { sequence_num: 3, capabilities: 1, ..Default::default() };
        assert_eq!(present(&msg.encode_to_vec()), 1 << 2 | 1 << 4);
        assert_eq!(present(&[0xff]), FieldSet::MAX);
        assert_eq!(present(&[]), 0);
    }
}
