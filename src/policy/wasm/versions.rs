//! Dispatch over the WIT versions the gateway loads (see `bindings`): a
//! compiled component ([`Pre`]) and an instance's exports ([`Bindings`]) of
//! either version, and 0.2.0's types as 0.3.0's, so the relay converts from
//! one set (every type but `assign`'s is the same in both versions).

use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::Store;

use super::bindings::v2::opamp_gateway::policy::types as old;
use super::bindings::v3::opamp_gateway::policy::types as new;
use super::bindings::{v2, v3, WitVersion};
use super::sandbox::HostState;

/// A compiled, type-checked component of either version (cheap to clone).
#[derive(Clone)]
pub(crate) enum Pre {
    V2(v2::GatewayPolicyPre<HostState>),
    V3(v3::GatewayPolicyPre<HostState>),
}

/// One instance's exports, of the version its component targets.
pub(crate) enum Bindings {
    V2(v2::GatewayPolicy),
    V3(v3::GatewayPolicy),
}

impl Pre {
    pub(crate) fn new(version: WitVersion, pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(match version {
            WitVersion::V0_2 => Pre::V2(v2::GatewayPolicyPre::new(pre)?),
            WitVersion::V0_3 => Pre::V3(v3::GatewayPolicyPre::new(pre)?),
        })
    }

    pub(crate) fn version(&self) -> WitVersion {
        match self {
            Pre::V2(_) => WitVersion::V0_2,
            Pre::V3(_) => WitVersion::V0_3,
        }
    }

    pub(crate) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V2(p) => Bindings::V2(p.instantiate(store)?),
            Pre::V3(p) => Bindings::V3(p.instantiate(store)?),
        })
    }
}

/// Adds the host side of every version to `linker`. Their interface
/// names differ by version, so both live in one linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v2::GatewayPolicy::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v3::GatewayPolicy::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

// 0.2.0's types as 0.3.0's, and back where the host passes them in.

impl From<new::Direction> for old::Direction {
    fn from(d: new::Direction) -> Self {
        match d {
            new::Direction::AgentToServer => old::Direction::AgentToServer,
            new::Direction::ServerToAgent => old::Direction::ServerToAgent,
        }
    }
}

impl From<new::Transport> for old::Transport {
    fn from(t: new::Transport) -> Self {
        match t {
            new::Transport::Websocket => old::Transport::Websocket,
            new::Transport::Http => old::Transport::Http,
        }
    }
}

impl From<old::Hooks> for new::Hooks {
    fn from(h: old::Hooks) -> Self {
        let mut out = new::Hooks::empty();
        for (was, is) in [
            (old::Hooks::ASSIGN, new::Hooks::ASSIGN),
            (old::Hooks::FORWARD_HEADERS, new::Hooks::FORWARD_HEADERS),
            (old::Hooks::FILTER_AGENT_TO_SERVER, new::Hooks::FILTER_AGENT_TO_SERVER),
            (old::Hooks::FILTER_SERVER_TO_AGENT, new::Hooks::FILTER_SERVER_TO_AGENT),
        ] {
            if h.contains(was) {
                out |= is;
            }
        }
        out
    }
}

impl From<old::FieldValue> for new::FieldValue {
    fn from(v: old::FieldValue) -> Self {
        match v {
            old::FieldValue::Varint(x) => new::FieldValue::Varint(x),
            old::FieldValue::Fixed64(x) => new::FieldValue::Fixed64(x),
            old::FieldValue::Fixed32(x) => new::FieldValue::Fixed32(x),
            old::FieldValue::Bytes(b) => new::FieldValue::Bytes(b),
        }
    }
}

impl From<old::Verdict> for new::Verdict {
    fn from(v: old::Verdict) -> Self {
        match v {
            old::Verdict::Forward => new::Verdict::Forward,
            old::Verdict::Drop => new::Verdict::Drop,
            old::Verdict::Close => new::Verdict::Close,
            old::Verdict::Replace(b) => new::Verdict::Replace(b),
            old::Verdict::SetField(e) => {
                new::Verdict::SetField(new::FieldEdit { number: e.number, value: e.value.map(Into::into) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_answers_convert_unchanged() {
        let all = old::Hooks::ASSIGN | old::Hooks::FORWARD_HEADERS | old::Hooks::FILTER_AGENT_TO_SERVER;
        assert_eq!(
            new::Hooks::from(all),
            new::Hooks::ASSIGN | new::Hooks::FORWARD_HEADERS | new::Hooks::FILTER_AGENT_TO_SERVER
        );
        assert_eq!(new::Hooks::from(old::Hooks::FILTER_SERVER_TO_AGENT), new::Hooks::FILTER_SERVER_TO_AGENT);
        // A 0.2.0 component cannot announce 0.3.0's hooks: never asked to admit or told of sessions.
        assert!(!new::Hooks::from(old::Hooks::all()).intersects(new::Hooks::ADMIT | new::Hooks::LIFECYCLE));
        let edit = old::Verdict::SetField(old::FieldEdit { number: 5, value: Some(old::FieldValue::Fixed32(7)) });
        assert!(matches!(
            new::Verdict::from(edit),
            new::Verdict::SetField(new::FieldEdit { number: 5, value: Some(new::FieldValue::Fixed32(7)) })
        ));
        assert!(matches!(new::Verdict::from(old::Verdict::Replace(vec![1])), new::Verdict::Replace(b) if b == [1]));
        assert_eq!(old::Direction::from(new::Direction::ServerToAgent), old::Direction::ServerToAgent);
    }
}
