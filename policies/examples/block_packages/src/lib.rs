//! `block_packages`: this segment's agents never receive package offers.
//!
//! OpAMP servers can push packages (binaries, plugins) to agents through
//! `ServerToAgent.packages_available` (field 5). Where that is not allowed —
//! an air-gapped segment, a change freeze — the gateway can strip the offer
//! and forward everything else, so remote config and commands keep working.
//!
//! No config. Hook: `filter`, server→agent only. A message without field 5
//! is judged with one `has` call: nothing is copied. One with it is rebuilt
//! by copying every other top-level field byte for byte (no decode, so
//! fields newer than this policy's proto survive).

use opamp_policy::{export_policy, wire, Direction, Hooks, Message, Policy, Verdict};

/// `ServerToAgent.packages_available`.
pub const PACKAGES_AVAILABLE: u32 = 5;

pub struct BlockPackages;

impl Policy for BlockPackages {
    fn new(config: &str) -> Result<Self, String> {
        opamp_policy::config::Config::parse(config)?.expect_keys(&[])?;
        Ok(BlockPackages)
    }

    fn hooks(&self) -> Hooks {
        Hooks::FILTER_SERVER_TO_AGENT
    }

    fn filter(&self, direction: Direction, _uid: &[u8], message: &Message) -> Verdict {
        if direction != Direction::ServerToAgent || !message.has(PACKAGES_AVAILABLE) {
            return Verdict::Forward;
        }
        match wire::without_fields(&message.bytes(), &[PACKAGES_AVAILABLE]) {
            Ok(stripped) => {
                opamp_policy::debug!("stripped packages_available");
                Verdict::Replace(stripped)
            }
            // The gateway validated the message; this cannot happen. If it
            // does, do not forward an offer we failed to remove.
            Err(e) => {
                opamp_policy::error!("cannot strip packages_available: {e}");
                Verdict::Drop
            }
        }
    }
}

export_policy!(BlockPackages);
