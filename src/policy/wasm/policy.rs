//! [`WasmPolicy`]: a loaded component behind the [`Policy`] trait.
//!
//! Converts between the relay's types and the WIT types, and checks what
//! comes back: header names and values must be valid HTTP, a replacement
//! message must be well-formed protobuf that keeps the agent's uid (routing
//! depends on it).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::bindings::opamp_gateway::policy::types as wit;
use super::message::{last, walk, MessageHandle, Wire};
use super::pool::InstancePool;
use crate::policy::{AssignInput, Direction, FailureMode, HeaderList, HookError, Hooks, Policy, Transport, Verdict};
use crate::protocol::wire::set_field;

/// Field 1 of both `AgentToServer` and `ServerToAgent`.
const INSTANCE_UID: u32 = 1;

/// One policy component, ready to be called from any thread.
pub struct WasmPolicy {
    pub(crate) name: Arc<str>,
    pub(crate) digest: String,
    pub(crate) config_digest: Option<String>,
    pub(crate) wasm_path: PathBuf,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) failure_mode: FailureMode,
    pub(crate) hooks: Hooks,
    pub(crate) pool: InstancePool,
}

impl WasmPolicy {
    /// Hex sha256 of the `.wasm` file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn wasm_path(&self) -> &std::path::Path {
        &self.wasm_path
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Idle pooled instances (diagnostics, tests).
    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("hooks", &self.hooks)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

impl Policy for WasmPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    fn hooks(&self) -> Hooks {
        self.hooks
    }

    fn assign(&self, input: &AssignInput<'_>) -> Result<Option<u32>, HookError> {
        let arg = wit::AssignInput {
            headers: input.headers.to_vec(),
            remote_address: input.remote_addr.to_owned(),
            transport: match input.transport {
                Transport::WebSocket => wit::Transport::Websocket,
                Transport::Http => wit::Transport::Http,
            },
            links: input
                .links
                .iter()
                .map(|l| wit::Link { index: l.index, load: l.load, connected: l.connected })
                .collect(),
        };
        self.pool.call(|store, b| b.opamp_gateway_policy_policy().call_assign(store, &arg))
    }

    fn forward_headers(&self, headers: HeaderList) -> Result<HeaderList, HookError> {
        let out = self.pool.call(|store, b| b.opamp_gateway_policy_policy().call_forward_headers(store, &headers))?;
        out.into_iter().map(check_header).collect()
    }

    fn filter(&self, dir: Direction, uid: &[u8], message: &Bytes) -> Result<Verdict, HookError> {
        let direction = match dir {
            Direction::AgentToServer => wit::Direction::AgentToServer,
            Direction::ServerToAgent => wit::Direction::ServerToAgent,
        };
        let verdict = self.pool.call(|store, b| {
            let handle = store.data_mut().table.push(MessageHandle { bytes: message.clone() })?;
            let borrowed = wasmtime::component::Resource::new_borrow(handle.rep());
            let verdict = b.opamp_gateway_policy_policy().call_filter(&mut *store, direction, uid, borrowed)?;
            store.data_mut().table.delete(handle)?;
            Ok(verdict)
        })?;
        Ok(match verdict {
            wit::Verdict::Forward => Verdict::Forward,
            wit::Verdict::Drop => Verdict::Drop,
            wit::Verdict::Close => Verdict::Close,
            wit::Verdict::Replace(bytes) => Verdict::Replace(check_replacement(message, bytes)?),
            wit::Verdict::SetField(edit) => Verdict::Replace(apply_edit(message, edit)?),
        })
    }
}

/// Header names are lower-cased (the relay's convention) and both halves
/// must be valid HTTP, since they end up in a request to the server.
fn check_header((name, value): (String, String)) -> Result<(String, String), HookError> {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(HookError::Invalid(format!("invalid header name {name:?}")));
    }
    if value.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
        return Err(HookError::Invalid(format!("invalid value for header {name:?}")));
    }
    Ok((name.to_ascii_lowercase(), value))
}

/// Applies a `set-field` answer. The original was validated by the relay,
/// so the result is well-formed; only the uid is off limits.
fn apply_edit(original: &Bytes, edit: wit::FieldEdit) -> Result<Bytes, HookError> {
    if edit.number == INSTANCE_UID || edit.number == 0 || edit.number >= 1 << 29 {
        return Err(HookError::Invalid(format!("set-field cannot set field {}", edit.number)));
    }
    let value = edit.value.as_ref().map(|v| match v {
        wit::FieldValue::Varint(x) => Wire::Varint(*x),
        wit::FieldValue::Fixed64(x) => Wire::Fixed64(*x),
        wit::FieldValue::Fixed32(x) => Wire::Fixed32(*x),
        wit::FieldValue::Bytes(b) => Wire::Bytes(b),
    });
    set_field(original, edit.number, value)
        .map(Bytes::from)
        .map_err(|m| HookError::Invalid(format!("the message is not a valid protobuf (byte {})", m.offset)))
}

/// A replacement must parse at the top level and keep the original uid.
fn check_replacement(original: &Bytes, replacement: Vec<u8>) -> Result<Bytes, HookError> {
    // One walk validates the whole replacement and finds its uid.
    let mut new_uid: Option<Vec<u8>> = None;
    let walked = walk(&replacement, |n, v| {
        if let (INSTANCE_UID, Wire::Bytes(u)) = (n, v) {
            new_uid = Some(u.to_vec());
        } else if n == INSTANCE_UID {
            new_uid = None; // not bytes: no usable uid
        }
        true
    });
    if let Err(m) = walked {
        return Err(HookError::Invalid(format!("replacement is not a valid protobuf (byte {})", m.offset)));
    }
    let old_uid = match last(original, INSTANCE_UID) {
        Some(Wire::Bytes(u)) => Some(u),
        _ => None,
    };
    if old_uid != new_uid.as_deref() {
        return Err(HookError::Invalid("replacement changes the instance_uid".into()));
    }
    Ok(Bytes::from(replacement))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_and_lowercased() {
        assert_eq!(check_header(("X-Tenant".into(), "a".into())).unwrap(), ("x-tenant".into(), "a".into()));
        assert!(check_header(("bad name".into(), "a".into())).is_err());
        assert!(check_header(("".into(), "a".into())).is_err());
        assert!(check_header(("x".into(), "a\r\nInjected: 1".into())).is_err());
    }

    #[test]
    fn field_edits_are_applied_by_the_host() {
        let orig = Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 1]);
        let set = |number, value| apply_edit(&orig, wit::FieldEdit { number, value });
        assert_eq!(set(5, None).unwrap(), Bytes::from_static(&[0x0a, 2, 1, 2, 0x10, 1]));
        assert_eq!(
            set(5, Some(wit::FieldValue::Bytes(b"xy".to_vec()))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 2, b'x', b'y', 0x10, 1])
        );
        assert_eq!(
            set(2, Some(wit::FieldValue::Varint(5))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 5])
        );
        assert!(matches!(set(1, None), Err(HookError::Invalid(_))), "the uid is off limits");
        assert!(matches!(set(0, None), Err(HookError::Invalid(_))));
        assert!(matches!(set(1 << 29, None), Err(HookError::Invalid(_))));
    }

    #[test]
    fn replacement_keeps_uid_and_parses() {
        let orig = Bytes::from_static(&[0x0a, 2, 1, 2, 0x10, 1]);
        assert!(check_replacement(&orig, vec![0x0a, 2, 1, 2]).is_ok());
        assert!(matches!(check_replacement(&orig, vec![0x0a, 2, 9, 9]), Err(HookError::Invalid(_))));
        assert!(matches!(check_replacement(&orig, vec![0x10]), Err(HookError::Invalid(_))));
        assert!(matches!(check_replacement(&orig, vec![0x10, 1]), Err(HookError::Invalid(_))));
    }
}
