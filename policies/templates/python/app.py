"""An opamp-gateway policy in Python: blocks packages by name.

Config (`<name>.yaml`, handed to `init` as text):

    block: [collector-contrib, evil-plugin]   # package names

Hooks: `filter`, both directions.
- server -> agent: a ServerToAgent whose `packages_available` (field 5)
  offers a blocked package is dropped.
- agent -> server: an AgentToServer whose `package_statuses` (field 8)
  reports a blocked package is dropped.
Every other message passes unchanged; the policy reads one field of it.

Build: ./build.sh (componentize-py). See README.md.
"""

from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

# ServerToAgent.packages_available and AgentToServer.package_statuses; in
# both, field 1 is `map<string, ...> packages` (entries: key 1, value 2).
PACKAGES_AVAILABLE = 5
PACKAGE_STATUSES = 8


def parse_config(text: str) -> List[str]:
    """The `block:` list of a flat YAML text. Unknown keys are refused; the
    gateway's own keys (on_error, call_timeout, memory_limit, ...) are not
    the policy's business and are skipped."""
    gateway_keys = {
        "on_error", "call_timeout", "memory_limit", "mode", "state",
        "filter_agent_to_server", "filter_server_to_agent", "visible_headers",
    }
    block: List[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or raw[:1].isspace():
            raise Err(f"expected `key: value` lines, got {raw!r}")
        if key in gateway_keys or key.startswith("quarantine_"):
            continue
        if key != "block":
            raise Err(f"unknown key {key!r}; this policy reads `block: [names]`")
        if not (value.startswith("[") and value.endswith("]")):
            raise Err(f"block must be a list such as [collector-contrib], got {value!r}")
        block = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
    return block


def varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf: bytes):
    """(number, value) of each field of an encoded message; `value` is the
    bytes of length-delimited fields, else None."""
    i = 0
    while i < len(buf):
        tag, i = varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = varint(buf, i)
            yield number, None
        elif wire == 1:
            i += 8
            yield number, None
        elif wire == 5:
            i += 4
            yield number, None
        elif wire == 2:
            n, i = varint(buf, i)
            yield number, buf[i : i + n]
            i += n
        else:
            raise ValueError(f"wire type {wire}")


def package_names(packages: bytes) -> List[str]:
    """The keys of `map<string, ...> packages = 1` in PackagesAvailable or
    PackageStatuses."""
    names = []
    for number, entry in fields(packages):
        if number == 1 and entry is not None:
            for k, key in fields(entry):
                if k == 1 and key is not None:
                    names.append(key.decode("utf-8", "replace"))
    return names


# The instance's state lives at module level: componentize-py makes a new
# `Policy` object for each call, so attributes set in `init` would be lost.
BLOCK: List[str] = []


class Policy(exports.Policy):
    def init(self, config: str) -> types.Hooks:
        BLOCK[:] = parse_config(config)
        host.log(host.Level.INFO, f"blocking packages {BLOCK}")
        return types.Hooks.FILTER_AGENT_TO_SERVER | types.Hooks.FILTER_SERVER_TO_AGENT

    def filter(self, direction: types.Direction, uid: bytes, message: types.Message) -> types.Verdict:
        number = PACKAGES_AVAILABLE if direction == types.Direction.SERVER_TO_AGENT else PACKAGE_STATUSES
        value = message.field(number)
        if not isinstance(value, types.FieldValue_Bytes):
            return types.Verdict_Forward()
        try:
            names = package_names(value.value)
        except (ValueError, IndexError):
            return types.Verdict_Forward()  # not ours to judge: the server will
        blocked = [n for n in names if n in BLOCK]
        if blocked:
            host.log(host.Level.DEBUG, f"dropped a message naming {blocked}")
            return types.Verdict_Drop()
        return types.Verdict_Forward()

    # Not announced from `init`, so never called; every function of the
    # interface must still be exported.
    def admit(self, input: types.AssignInput) -> types.AdmitVerdict:
        return types.AdmitVerdict_Allow()

    def assign(self, input: types.AssignInput) -> Optional[types.Route]:
        return None

    def forward_headers(self, headers: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
        return headers

    def on_connect(self, event: types.SessionEvent) -> None:
        pass

    def on_disconnect(self, event: types.SessionEvent, reason: str) -> None:
        pass
