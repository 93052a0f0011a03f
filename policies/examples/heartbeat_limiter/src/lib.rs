//! `heartbeat_limiter`: drops agent→server heartbeats that come closer
//! together than `min_interval` for the same agent, so chatty agents cost
//! the server less. It never drops a message that changes state.
//!
//! ```yaml
//! # heartbeat_limiter.yaml
//! min_interval: 30s
//! ```
//!
//! The rule. A message is a heartbeat when its top-level fields are only
//! `instance_uid` (1), `sequence_num` (2) and `capabilities` (4), and its
//! capabilities are the ones this agent's last forwarded message carried.
//! Anything else (a status, health, a config, a disconnect, flags such as
//! a request for an instance uid, a field this policy does not know, a
//! change of capabilities) is forwarded, always. A heartbeat is dropped
//! when the agent's previous forwarded message went through less than
//! `min_interval` ago.
//!
//! Sequence numbers. OpAMP servers watch `sequence_num` for gaps and ask
//! for the full state when they see one, which would cost more than the
//! heartbeat saved. So after dropping, the policy renumbers that agent's
//! later messages (`sequence_num` minus the number dropped, with
//! `set-field`): the server sees an unbroken sequence.
//!
//! State: one entry per agent (`hb/<uid>`, about 60 bytes: last forward
//! time, capabilities, count dropped), with a TTL of 10 × `min_interval`
//! (at least one hour) refreshed on each message, in the gateway's shared
//! store, so every instance sees the same agent the same way. An entry with
//! nothing dropped is removed when the agent disconnects; one that
//! renumbers is kept (with its TTL) so a reconnecting agent's sequence
//! stays unbroken. If the store is full, messages are forwarded as they
//! are. Hooks: `filter` (agent→server), `lifecycle`.

use opamp_policy::config::Config;
use opamp_policy::wire::{self, Value};
use opamp_policy::{
    export_policy, state, Direction, Directions, FieldEdit, FieldValue, Filter, Lifecycle, Message, Policy,
    SessionEvent, Verdict,
};

/// Largest message that can be a heartbeat: uid (18 for 16 bytes, 28 for a
/// 26-byte ULID) + two varint fields of at most 11 bytes each.
const MAX_HEARTBEAT: u32 = 28 + 11 + 11;

const UID: u32 = 1;
const SEQUENCE_NUM: u32 = 2;
const CAPABILITIES: u32 = 4;

#[derive(Debug)]
pub struct HeartbeatLimiter {
    min_interval_ms: u64,
    ttl_ms: u64,
}

/// What the policy keeps per agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// `now_ms` of the last forwarded message.
    pub forwarded_at: u64,
    pub capabilities: u64,
    /// Heartbeats dropped so far: subtracted from later sequence numbers.
    pub dropped: u64,
}

impl Seen {
    fn encode(&self) -> [u8; 24] {
        let mut b = [0; 24];
        b[..8].copy_from_slice(&self.forwarded_at.to_le_bytes());
        b[8..16].copy_from_slice(&self.capabilities.to_le_bytes());
        b[16..].copy_from_slice(&self.dropped.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Seen> {
        let word = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Seen { forwarded_at: word(0)?, capabilities: word(8)?, dropped: word(16)? })
    }
}

/// `hb/` and the uid in lower-case hex. Called for every message: by hand,
/// not `format!` (whose machinery, per byte, was a large part of the call).
fn key(uid: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = String::with_capacity(3 + uid.len() * 2);
    k.push_str("hb/");
    for b in uid {
        k.push(char::from(HEX[usize::from(b >> 4)]));
        k.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    k
}

/// `(sequence_num, capabilities)` when `message` is only uid, sequence
/// number and capabilities; `None` for anything else.
pub fn heartbeat(message: &Message) -> Option<(u64, u64)> {
    if message.len() > MAX_HEARTBEAT {
        return None;
    }
    let bytes = message.bytes();
    let (mut seq, mut caps) = (0, 0);
    for field in wire::fields(&bytes) {
        let field = field.ok()?;
        match (field.number, field.value) {
            (UID, Value::Bytes(_)) => {}
            (SEQUENCE_NUM, Value::Varint(v)) => seq = v,
            (CAPABILITIES, Value::Varint(v)) => caps = v,
            _ => return None,
        }
    }
    Some((seq, caps))
}

fn sequence_num(message: &Message) -> Option<u64> {
    match message.field(SEQUENCE_NUM)? {
        FieldValue::Varint(v) => Some(v),
        _ => None,
    }
}

fn capabilities(message: &Message) -> u64 {
    match message.field(CAPABILITIES) {
        Some(FieldValue::Varint(v)) => v,
        _ => 0,
    }
}

impl HeartbeatLimiter {
    /// The verdict for `message` from agent `uid` at `now` (ms).
    pub fn judge(&self, uid: &[u8], message: &Message, now: u64) -> Verdict {
        let key = key(uid);
        let seen = state::get(&key).and_then(|b| Seen::decode(&b));
        let beat = heartbeat(message);
        if let (Some(seen), Some((_, caps))) = (seen, beat) {
            if caps == seen.capabilities && now.saturating_sub(seen.forwarded_at) < self.min_interval_ms {
                let next = Seen { dropped: seen.dropped + 1, ..seen };
                // Not recorded (store full): forward rather than lose count.
                if state::set(&key, &next.encode(), Some(self.ttl_ms)).is_ok() {
                    return Verdict::Drop;
                }
                return self.renumbered(message, seen.dropped);
            }
        }
        let dropped = seen.map_or(0, |s| s.dropped);
        let next = Seen {
            forwarded_at: now,
            capabilities: beat.map_or_else(|| capabilities(message), |(_, caps)| caps),
            dropped,
        };
        let _ = state::set(&key, &next.encode(), Some(self.ttl_ms));
        self.renumbered(message, dropped)
    }

    /// `message` with its sequence number lowered by `dropped`.
    fn renumbered(&self, message: &Message, dropped: u64) -> Verdict {
        if dropped == 0 {
            return Verdict::Forward; // nothing to take off: no field to read
        }
        match sequence_num(message) {
            Some(seq) => Verdict::SetField(FieldEdit {
                number: SEQUENCE_NUM,
                value: Some(FieldValue::Varint(seq.saturating_sub(dropped))),
            }),
            _ => Verdict::Forward,
        }
    }
}

impl Policy for HeartbeatLimiter {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["min_interval"])?;
        let min_interval_ms = config.millis("min_interval")?.ok_or("`min_interval` is required (e.g. `30s`)")?;
        let ttl_ms = min_interval_ms.saturating_mul(10).max(3_600_000);
        Ok(Self { min_interval_ms, ttl_ms })
    }
}

impl Filter for HeartbeatLimiter {
    const DIRECTIONS: Directions = Directions::AgentToServer;

    fn filter(&self, _direction: Direction, uid: &[u8], message: &Message) -> Verdict {
        self.judge(uid, message, state::now_ms())
    }
}

impl Lifecycle for HeartbeatLimiter {
    fn on_disconnect(&self, event: &SessionEvent, _reason: &str) {
        let Some(uid) = &event.uid else { return };
        let key = key(uid);
        if state::get(&key).and_then(|b| Seen::decode(&b)).is_some_and(|s| s.dropped == 0) {
            state::delete(&key);
        }
    }
}

export_policy!(HeartbeatLimiter);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::proto::{AgentDisconnect, AgentToServer, ComponentHealth};
    use opamp_policy::{hooks_of, Hooks, Transport};

    const UID16: [u8; 16] = [7; 16];

    #[test]
    fn keys_are_the_uid_in_lower_case_hex() {
        assert_eq!(key(&[0x00, 0xab, 0x1f, 0xf0]), "hb/00ab1ff0");
        let every: Vec<u8> = (0..=255).collect();
        let hex: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key(&every), format!("hb/{hex}"), "the same keys as before: state survives an upgrade");
    }

    fn beat(seq: u64, caps: u64) -> Message {
        Message::from_proto(&AgentToServer {
            instance_uid: UID16.to_vec(),
            sequence_num: seq,
            capabilities: caps,
            ..Default::default()
        })
    }

    fn limiter() -> HeartbeatLimiter {
        state::clear();
        HeartbeatLimiter::new("min_interval: 30s").unwrap()
    }

    fn seq_of(v: &Verdict) -> Option<u64> {
        match v {
            Verdict::SetField(FieldEdit { number: 2, value: Some(FieldValue::Varint(s)) }) => Some(*s),
            _ => None,
        }
    }

    #[test]
    fn announces_upward_filter_and_lifecycle() {
        assert_eq!(hooks_of!(HeartbeatLimiter), Hooks::FILTER_AGENT_TO_SERVER | Hooks::LIFECYCLE);
    }

    #[test]
    fn what_is_a_heartbeat() {
        assert_eq!(heartbeat(&beat(3, 5)), Some((3, 5)));
        let health = AgentToServer {
            instance_uid: UID16.to_vec(),
            health: Some(ComponentHealth { healthy: true, ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(heartbeat(&Message::from_proto(&health)), None);
        let flags = AgentToServer { instance_uid: UID16.to_vec(), flags: 1, ..Default::default() };
        assert_eq!(heartbeat(&Message::from_proto(&flags)), None, "asks for a uid");
        let bye = AgentToServer {
            instance_uid: UID16.to_vec(),
            agent_disconnect: Some(AgentDisconnect {}),
            ..Default::default()
        };
        assert_eq!(heartbeat(&Message::from_proto(&bye)), None);
        let mut unknown = beat(1, 1).bytes();
        wire::put_field(&mut unknown, 99, Value::Varint(1));
        assert_eq!(heartbeat(&Message::new(unknown)), None, "a field it does not know is not a heartbeat");
    }

    #[test]
    fn one_heartbeat_per_interval_and_the_sequence_stays_unbroken() {
        let p = limiter();
        assert_eq!(p.judge(&UID16, &beat(1, 5), 0), Verdict::Forward);
        assert_eq!(p.judge(&UID16, &beat(2, 5), 10_000), Verdict::Drop);
        assert_eq!(p.judge(&UID16, &beat(3, 5), 29_999), Verdict::Drop);
        // An interval after the last forwarded one: passes, renumbered.
        let v = p.judge(&UID16, &beat(4, 5), 30_000);
        assert_eq!(seq_of(&v), Some(2), "{v:?}");
        assert_eq!(p.judge(&UID16, &beat(5, 5), 30_001), Verdict::Drop);
        // A status message always passes, renumbered too.
        let status = AgentToServer {
            instance_uid: UID16.to_vec(),
            sequence_num: 6,
            health: Some(ComponentHealth::default()),
            ..Default::default()
        };
        assert_eq!(seq_of(&p.judge(&UID16, &Message::from_proto(&status), 30_002)), Some(3));
        // Agents are limited apart.
        assert_eq!(p.judge(&[8; 16], &beat(1, 5), 30_003), Verdict::Forward);
    }

    #[test]
    fn a_change_of_capabilities_is_not_dropped() {
        let p = limiter();
        assert_eq!(p.judge(&UID16, &beat(1, 5), 0), Verdict::Forward);
        assert_eq!(p.judge(&UID16, &beat(2, 7), 1), Verdict::Forward);
        assert_eq!(p.judge(&UID16, &beat(3, 7), 2), Verdict::Drop);
    }

    #[test]
    fn disconnect_forgets_only_agents_with_nothing_to_renumber() {
        let p = limiter();
        let event = |uid: &[u8]| SessionEvent {
            session: 1,
            uid: Some(uid.to_vec()),
            headers: vec![],
            remote_address: "127.0.0.1:1".into(),
            transport: Transport::Websocket,
            upstream: "default".into(),
        };
        p.judge(&UID16, &beat(1, 5), 0);
        p.on_disconnect(&event(&UID16), "peer");
        assert_eq!(state::get(&key(&UID16)), None);
        p.judge(&UID16, &beat(2, 5), 0);
        p.judge(&UID16, &beat(3, 5), 1); // dropped
        p.on_disconnect(&event(&UID16), "peer");
        assert!(state::get(&key(&UID16)).is_some(), "kept: its next session continues the renumbering");
    }

    #[test]
    fn config() {
        assert!(HeartbeatLimiter::new("").is_err());
        assert!(HeartbeatLimiter::new("min_interval: often").is_err());
        assert!(HeartbeatLimiter::new("min_interval: 0s").is_err());
        HeartbeatLimiter::new(include_str!("../heartbeat_limiter.yaml")).unwrap();
    }
}
