//! [`WasmPolicy`]: a loaded component behind the [`Policy`] trait.
//!
//! Converts between the relay's types and the WIT types; what comes back is
//! checked by [`crate::policy::verdict`] (valid HTTP headers, a replacement
//! that parses and keeps the agent's uid).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::bindings::v2::opamp_gateway::policy::types as wit2;
use super::bindings::v3::opamp_gateway::policy::types as wit;
use super::bindings::WitVersion;
use super::message::{MessageHandle, Wire};
use super::pool::InstancePool;
use super::versions::Bindings;
use crate::policy::filter_fields::{FieldSet, FilterFields};
use crate::policy::verdict::{self, check_header, check_replacement};
use crate::policy::visible_headers::VisibleHeaders;
use crate::policy::{
    AdmitVerdict, AssignInput, BreakerConfig, Direction, FailureMode, HeaderList, HookError, Hooks, Mode, Policy,
    Rejection, Route, SessionEvent, Transport, Verdict,
};

/// One policy component, ready to be called from any thread.
pub struct WasmPolicy {
    pub(crate) name: Arc<str>,
    pub(crate) digest: String,
    pub(crate) config_digest: Option<String>,
    pub(crate) wasm_path: PathBuf,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) failure_mode: FailureMode,
    /// Its own breaker settings, when its YAML has `quarantine_*` keys.
    pub(crate) quarantine: Option<BreakerConfig>,
    pub(crate) hooks: Hooks,
    /// The WIT version its component targets.
    pub(crate) version: WitVersion,
    /// `mode:` in its YAML.
    pub(crate) mode: Mode,
    /// `filter_agent_to_server` / `filter_server_to_agent` in its YAML.
    pub(crate) filter_fields: FilterFields,
    /// `visible_headers` in its YAML: the agent headers its hooks are shown.
    pub(crate) visible_headers: VisibleHeaders,
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

    /// The `opamp-gateway:policy` version its component was built against.
    pub fn wit_version(&self) -> WitVersion {
        self.version
    }

    /// Idle pooled instances (diagnostics, tests).
    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }

    /// Instances alive or being made (idle, in a call, or on the refill
    /// thread): at most `max(instances, concurrency)`.
    pub fn live_instances(&self) -> usize {
        self.pool.live()
    }
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("hooks", &self.hooks)
            .field("version", &self.version)
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

    fn quarantine(&self) -> Option<BreakerConfig> {
        self.quarantine
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn admit(&self, input: &AssignInput<'_>) -> Result<AdmitVerdict, HookError> {
        let verdict = self.pool.call(|store, b| match b {
            // 0.2.0 has no `admit`; never announced, never called.
            Bindings::V2(_) => Ok(wit::AdmitVerdict::Allow),
            Bindings::V3(b) => with_assign_input(input, &self.visible_headers, |arg| {
                b.opamp_gateway_policy_policy().call_admit(store, arg)
            }),
        })?;
        Ok(match verdict {
            wit::AdmitVerdict::Allow => AdmitVerdict::Allow,
            wit::AdmitVerdict::Reject(r) => {
                AdmitVerdict::Reject(Rejection { status: r.status, headers: r.headers, body: r.body })
            }
        })
    }

    fn on_connect(&self, event: &SessionEvent) -> Result<(), HookError> {
        let headers = self.visible_headers.select(&event.headers);
        self.pool.call(|store, b| match b {
            Bindings::V2(_) => Ok(()),
            Bindings::V3(b) => b.opamp_gateway_policy_policy().call_on_connect(store, session_event(event, &headers)),
        })
    }

    fn on_disconnect(&self, event: &SessionEvent, reason: &str) -> Result<(), HookError> {
        let headers = self.visible_headers.select(&event.headers);
        self.pool.call(|store, b| match b {
            Bindings::V2(_) => Ok(()),
            Bindings::V3(b) => {
                b.opamp_gateway_policy_policy().call_on_disconnect(store, session_event(event, &headers), reason)
            }
        })
    }

    fn assign(&self, input: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        self.pool.call(|store, b| match b {
            // 0.2.0 sees the default upstream only, and answers one of its links.
            Bindings::V2(b) => {
                let links: Vec<wit2::Link> = input
                    .links()
                    .iter()
                    .map(|l| wit2::Link { index: l.index, load: l.load, connected: l.connected })
                    .collect();
                let arg = wit2::AssignInput {
                    headers: &self.visible_headers.select(input.headers),
                    remote_address: input.remote_addr,
                    transport: wit_transport(input.transport).into(),
                    links: &links,
                };
                let link = b.opamp_gateway_policy_policy().call_assign(store, arg)?;
                Ok(link.map(Route::default_link))
            }
            Bindings::V3(b) => {
                let route = with_assign_input(input, &self.visible_headers, |arg| {
                    b.opamp_gateway_policy_policy().call_assign(store, arg)
                })?;
                Ok(route.map(|r| Route { upstream: Some(r.upstream), link: r.link }))
            }
        })
    }

    fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, HookError> {
        let shown = self.visible_headers.select(headers);
        let out = self.pool.call(|store, b| match b {
            Bindings::V2(b) => b.opamp_gateway_policy_policy().call_forward_headers(store, &shown),
            Bindings::V3(b) => b.opamp_gateway_policy_policy().call_forward_headers(store, &shown),
        })?;
        let answer = out.into_iter().map(check_header).collect::<Result<HeaderList, _>>()?;
        self.visible_headers.complete(answer, headers)
    }

    fn filter_fields(&self, dir: Direction) -> Option<FieldSet> {
        self.filter_fields.wanted(dir)
    }

    fn filter(&self, dir: Direction, uid: &[u8], message: &Bytes) -> Result<Verdict, HookError> {
        let direction = match dir {
            Direction::AgentToServer => wit::Direction::AgentToServer,
            Direction::ServerToAgent => wit::Direction::ServerToAgent,
        };
        let verdict = self.pool.call(|store, b| {
            let handle = store.data_mut().table.push(MessageHandle { bytes: message.clone() })?;
            let borrowed = wasmtime::component::Resource::new_borrow(handle.rep());
            let verdict = match b {
                Bindings::V2(b) => {
                    let p = b.opamp_gateway_policy_policy();
                    p.call_filter(&mut *store, direction.into(), uid, borrowed)?.into()
                }
                Bindings::V3(b) => {
                    b.opamp_gateway_policy_policy().call_filter(&mut *store, direction, uid, borrowed)?
                }
            };
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

fn wit_transport(t: Transport) -> wit::Transport {
    match t {
        Transport::WebSocket => wit::Transport::Websocket,
        Transport::Http => wit::Transport::Http,
    }
}

/// Calls `f` with what `assign` and `admit` (0.3.0) see. The generated
/// parameter types borrow (`ownership: Borrowing` in the bindings), so the
/// only copies are the small vectors their slices point into (headers: the
/// ones the policy is shown, see [`VisibleHeaders::select`]).
fn with_assign_input<R>(
    input: &AssignInput<'_>,
    visible: &VisibleHeaders,
    f: impl FnOnce(wit::AssignInput<'_>) -> R,
) -> R {
    let headers = visible.select(input.headers);
    let links: Vec<Vec<wit::Link>> = input
        .upstreams
        .iter()
        .map(|u| u.links.iter().map(|l| wit::Link { index: l.index, load: l.load, connected: l.connected }).collect())
        .collect();
    let upstreams: Vec<wit::Upstream<'_>> =
        input.upstreams.iter().zip(&links).map(|(u, links)| wit::Upstream { name: &u.name, links }).collect();
    f(wit::AssignInput {
        headers: &headers,
        remote_address: input.remote_addr,
        transport: wit_transport(input.transport),
        upstreams: &upstreams,
    })
}

fn session_event<'a>(e: &'a SessionEvent, headers: &'a [(&'a str, &'a str)]) -> wit::SessionEvent<'a> {
    wit::SessionEvent {
        session: e.session,
        uid: e.uid.as_deref(),
        headers,
        remote_address: &e.remote_addr,
        transport: wit_transport(e.transport),
        upstream: &e.upstream,
    }
}

/// The WIT edit in host types; [`verdict::apply_edit`] does the checking.
fn apply_edit(original: &Bytes, edit: wit::FieldEdit) -> Result<Bytes, HookError> {
    let value = edit.value.as_ref().map(|v| match v {
        wit::FieldValue::Varint(x) => Wire::Varint(*x),
        wit::FieldValue::Fixed64(x) => Wire::Fixed64(*x),
        wit::FieldValue::Fixed32(x) => Wire::Fixed32(*x),
        wit::FieldValue::Bytes(b) => Wire::Bytes(b),
    });
    verdict::apply_edit(original, edit.number, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_field_values_reach_the_host_check() {
        let orig = Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 1]);
        let set = |number, value| apply_edit(&orig, wit::FieldEdit { number, value });
        assert_eq!(
            set(5, Some(wit::FieldValue::Bytes(b"xy".to_vec()))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 2, b'x', b'y', 0x10, 1])
        );
        assert_eq!(
            set(2, Some(wit::FieldValue::Varint(5))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 5])
        );
        assert!(matches!(set(1, None), Err(HookError::Invalid(_))), "the uid is off limits");
    }
}
