#!/usr/bin/env python3
"""Writes the seed corpus: a few realistic inputs per target, in each
target's input format (see the header comment of fuzz_targets/<name>.rs).

    python3 fuzz/seeds.py     # rewrites fuzz/corpus/<target>/seed-*
"""

import gzip
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
UID = bytes(range(1, 17))
ULID = b"01HZX3T4KQ8W9V2B7N5M6C1D0E"  # a legacy 26-character uid
CAPABILITY = b"com.bindplane.opamp-gateway"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    """One protobuf field: int -> varint, bytes -> length-delimited."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def custom(type_, data, capability=CAPABILITY):
    return field(1, capability) + field(2, type_) + field(3, data)


def kv(key, value):
    return field(1, key) + field(2, field(1, value))  # KeyValue{key, AnyValue{string}}


# AgentToServer / ServerToAgent payloads (no WebSocket header).
DESCRIPTION = field(1, kv(b"service.name", b"otelcol")) + field(2, kv(b"host.name", b"node-1"))
A2S = {
    "hello": field(1, UID) + field(2, 1) + field(3, DESCRIPTION) + field(4, 0x3F07),
    "health": field(1, UID) + field(2, 2) + field(5, field(1, 1) + field(3, b"ok")),
    "goodbye": field(1, UID) + field(2, 3) + field(9, b""),
    "ulid": field(1, ULID) + field(2, 1) + field(4, 1),
    "custom": field(1, UID) + field(13, custom(b"ping", b"{}", b"io.example.custom")),
    "forged": field(1, UID) + field(13, custom(b"connect", b'{"request_uid":"r1"}')),
}
S2A = {
    "reply": field(1, UID) + field(7, 0x7),
    "flags": field(1, UID) + field(6, 1) + field(7, 0x7),
    "new_uid": field(1, UID) + field(8, field(1, bytes(range(16, 32)))),
    "error": field(1, UID) + field(2, field(1, 1) + field(2, b"bad")),
    "caps": field(1, UID) + field(10, field(1, b"io.example.custom")),
    "result": field(11, custom(b"connectResult", b'{"request_uid":"r1","accept":true,"http_status_code":200}')),
}


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def scan():
    prefixes = [bytes([5, 0]) + bytes(8), bytes([6, 1]) + struct.pack("<Q", 1), bytes([13, 4]) + struct.pack("<Q", 7)]
    for i, (name, msg) in enumerate(list(A2S.items()) + list(S2A.items())):
        write("scan", name, prefixes[i % len(prefixes)] + b"\x00" + msg)
    write("scan", "legacy-no-header", prefixes[0] + A2S["hello"])


def session():
    def rec(op, payload):
        return bytes([op]) + struct.pack("<H", len(payload)) + payload

    hello, health, goodbye = (b"\x00" + A2S[k] for k in ("hello", "health", "goodbye"))
    write("session", "agent", b"\x00" + rec(0, hello) + rec(0, health) + rec(2, b"hi") + rec(0, goodbye))
    write("session", "agent-reply", b"\x00" + rec(0, hello) + rec(5, b"\x00" + S2A["reply"]) + rec(5, b"\x00" + S2A["new_uid"]) + rec(0, health))
    write("session", "no-header", b"\x00" + rec(7, A2S["hello"]) + rec(4, b"\x03\xe8bye"))
    write("session", "fragmented", b"\x00" + rec(8, hello[:10]) + rec(2, b"") + rec(0, hello[10:]) + rec(1, b"text"))
    write("session", "second-uid", b"\x00" + rec(0, hello) + rec(0, b"\x00" + A2S["ulid"]))
    write("session", "forged", b"\x00" + rec(0, b"\x00" + A2S["forged"]))
    connect = json.dumps({"request_uid": "down-1", "remote_address": "10.0.0.1:5000", "headers": {"Authorization": ["Secret-Key x"]}}).encode()
    write("session", "gateway", b"\x01" + rec(0, b"\x00" + field(13, custom(b"connect", connect))) + rec(0, hello) + rec(0, b"\x00" + A2S["ulid"]))
    write("session", "raw-unmasked", b"\x00" + rec(6, b"\x82\x05\x00\x0a\x01\x01\x10"))


def handshake_json():
    write("handshake_json", "result", b'{"request_uid":"r1","accept":true,"http_status_code":200,"response_headers":{"X-A":"b"}}')
    write("handshake_json", "result-go", b'{"RequestUID":"r2","Accept":false,"HTTPStatusCode":401,"ResponseHeaders":null}')
    write("handshake_json", "request", b'{"request_uid":"r3","remote_address":"10.0.0.1:5000","headers":{"Authorization":["Secret-Key a"],"X-Multi":["a","b"]}}')
    write("handshake_json", "escapes", '{"request_uid":"\\u00e9\\ud83d\\ude00","accept":true,"http_status_code":2e2}'.encode())
    write("handshake_json", "empty", b"{}")


def http_body():
    hello = A2S["hello"]
    write("http_body", "plain", b"\x00" + hello)
    write("http_body", "gzip", b"\x05" + hello)
    write("http_body", "gzip-raw", b"\x02" + gzip.compress(hello))
    write("http_body", "goodbye", b"\x04" + A2S["goodbye"])
    write("http_body", "wrong-type", b"\x08" + hello)
    write("http_body", "link-down", b"\x10" + hello)
    write("http_body", "bomb", b"\x02" + gzip.compress(b"\x0a" * 40000))


def config():
    write("config", "minimal", b"server:\n  endpoint: ws://127.0.0.1:4321/v1/opamp\n")
    write("config", "full", b"""server:
  endpoint: wss://opamp.example.com/v1/opamp
  headers:
    Authorization: "Secret-Key ${env:SECRET}"
    X-Multi: [a, b]
  connections: 3
  tls: { insecure_skip_verify: false, min_version: "1.3" }
listener:
  endpoint: ${env:HOST:-0.0.0.0}:${env:PORT}
  max_message_size: 16MiB
  http: { enabled: true }
  downstream_gateways:
    trusted:
      - header: { name: X-Gateway-Key, value: "$${literal}" }
telemetry:
  metrics: { endpoint: 127.0.0.1:8888 }
policies: { directory: policies.d, watch: false }
""")
    write("config", "collector", b"""extensions:
  opampgateway:
    server:
      endpoint: wss://opamp.example.com/v1/opamp
      headers: { Authorization: "${env:UNSET:-none}" }
    listener: { endpoint: ":4320" }
""")
    write("config", "anchors", b"a: &x ${env:DOLLAR}\nb: *x\nserver: !tag {endpoint: ${env:MISSING}}\n")


def policy_verdict():
    # arbitrary's encoding is not worth writing by hand: raw messages make
    # useful starting bytes all the same.
    for name, msg in list(A2S.items())[:4]:
        write("policy_verdict", name, msg + msg)


for f in (scan, session, handshake_json, http_body, config, policy_verdict):
    f()
