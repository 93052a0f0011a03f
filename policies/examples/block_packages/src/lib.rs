//! `block_packages`: this segment's agents never receive package offers.
//!
//! OpAMP servers can push packages (binaries, plugins) to agents through
//! `ServerToAgent.packages_available` (field 5). Where that is not allowed —
//! an air-gapped segment, a change freeze — the gateway can strip the offer
//! and forward everything else, so remote config and commands keep working.
//!
//! No config. Hook: `filter`, server→agent only. A message without field 5
//! is judged with one `has` call: nothing is copied. One with it is
//! answered with `remove-field`: the gateway rebuilds it from every other
//! top-level field byte for byte (no decode, so fields newer than this
//! policy's proto survive), and nothing crosses into the policy.

use opamp_policy::{export_policy, fields, Direction, Directions, Filter, Message, Policy, Verdict};

/// `ServerToAgent.packages_available`.
pub const PACKAGES_AVAILABLE: u32 = fields::server_to_agent::PACKAGES_AVAILABLE;

pub struct BlockPackages;

impl Policy for BlockPackages {
    fn new(config: &str) -> Result<Self, String> {
        opamp_policy::config::Config::parse(config)?.expect_keys(&[])?;
        Ok(BlockPackages)
    }
}

impl Filter for BlockPackages {
    const DIRECTIONS: Directions = Directions::ServerToAgent;

    fn filter(&self, direction: Direction, _uid: &[u8], message: &Message) -> Verdict {
        if direction != Direction::ServerToAgent || !message.has(PACKAGES_AVAILABLE) {
            return Verdict::Forward;
        }
        opamp_policy::debug!("stripped packages_available");
        Verdict::remove_field(PACKAGES_AVAILABLE)
    }
}

export_policy!(BlockPackages);

// Tests build `Message`s, which only the host side can.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use opamp_policy::proto::{PackagesAvailable, ServerToAgent};
    use opamp_policy::{hooks_of, Hooks};

    #[test]
    fn strips_package_offers_and_nothing_else() {
        let p = BlockPackages::new("").unwrap();
        let offer = Message::from_proto(&ServerToAgent {
            instance_uid: vec![2; 16],
            packages_available: Some(PackagesAvailable::default()),
            ..Default::default()
        });
        assert_eq!(p.filter(Direction::ServerToAgent, &[2; 16], &offer), Verdict::remove_field(PACKAGES_AVAILABLE));
        let plain = Message::from_proto(&ServerToAgent { instance_uid: vec![2; 16], flags: 1, ..Default::default() });
        assert_eq!(p.filter(Direction::ServerToAgent, &[2; 16], &plain), Verdict::Forward);
        assert!(BlockPackages::new("unknown: 1").is_err(), "no config keys are accepted");
    }

    #[test]
    fn judges_only_what_the_server_sends() {
        assert_eq!(hooks_of!(BlockPackages), Hooks::FILTER_SERVER_TO_AGENT);
    }
}
