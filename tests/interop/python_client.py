#!/usr/bin/env python3
"""Interop driver: the PyPI package `opentelemetry-opamp-client` (pinned in
requirements.txt) talking plain-HTTP OpAMP to an endpoint.

It runs the package's own OpAMPAgent/OpAMPClient: the agent sends its
full-state report, then heartbeats on its own schedule, and `stop()` sends
`agent_disconnect`. The only thing added is a recording transport (the
package's `transport=` hook, a subclass of its RequestsTransport) that notes
each request's kind and each reply's `instance_uid`, because the package's
callbacks only expose remote config.

Usage:
    python_client.py --url http://127.0.0.1:4320/v1/opamp \
        [--header 'Authorization: Secret-Key k'] [--heartbeats 3] \
        [--interval 0.3] [--timeout 20]

The installed package must be importable (e.g. PYTHONPATH=target/interop/python).
Prints one JSON line and exits 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time

SUMMARY = {
    "client": "python",
    "package": "opentelemetry-opamp-client",
    "version": None,
    "uid": None,
    "sent": {"full_state": 0, "heartbeat": 0, "disconnect": 0},
    "replies": 0,
    "own_uid_replies": 0,
    "foreign_uid_replies": 0,
    "heartbeat_replies": 0,
    "disconnect_status": None,
    "http_statuses": [],
    "content_types": [],
    "content_encodings": [],
    "errors": [],
}
_emitted = threading.Lock()


def emit_and_exit(code: int) -> None:
    """Prints the summary once and leaves at once (threads may still be alive)."""
    if not _emitted.acquire(blocking=False):
        return
    if code == 0 and SUMMARY["errors"]:
        code = 1
    sys.stdout.write(json.dumps(SUMMARY, sort_keys=True) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail(msg: str) -> None:
    SUMMARY["errors"].append(msg)
    emit_and_exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("OPAMP_URL"), help="OpAMP HTTP endpoint")
    ap.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    ap.add_argument("--heartbeats", type=int, default=3, help="heartbeat replies to wait for")
    ap.add_argument("--interval", type=float, default=0.3, help="heartbeat interval, seconds")
    ap.add_argument("--timeout", type=float, default=20.0, help="hard limit for the whole run, seconds")
    args = ap.parse_args()
    if not args.url:
        fail("no --url (or OPAMP_URL) given")

    # Hard bound on the run, whatever the client's threads are doing.
    watchdog = threading.Timer(args.timeout, lambda: fail(f"timed out after {args.timeout}s"))
    watchdog.daemon = True
    watchdog.start()

    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            fail(f"bad --header {h!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()

    try:
        from opentelemetry._opamp import OpAMPAgent, OpAMPCallbacks, OpAMPClient
        from opentelemetry._opamp.proto import opamp_pb2
        from opentelemetry._opamp.transport.requests import RequestsTransport
        from opentelemetry._opamp.version import __version__
    except ImportError as e:
        fail(f"cannot import opentelemetry-opamp-client ({e}); run tests/interop/install.sh "
             "and put target/interop/python on PYTHONPATH")
        return
    SUMMARY["version"] = __version__

    progress = threading.Condition()

    class RecordingTransport(RequestsTransport):
        """The package's HTTP transport, recording what goes by. Sends are
        serialized: the agent's worker and `stop()` share one requests.Session,
        which is not thread-safe."""

        def __init__(self) -> None:
            super().__init__()
            self._send_lock = threading.Lock()
            self.session.hooks["response"].append(self._on_response)

        def _on_response(self, resp, *a, **kw):
            with progress:
                SUMMARY["http_statuses"].append(resp.status_code)
                for key, header in (("content_types", "Content-Type"),
                                    ("content_encodings", "Content-Encoding")):
                    v = resp.headers.get(header, "")
                    if v not in SUMMARY[key]:
                        SUMMARY[key].append(v)
            return resp

        def send(self, *, url, headers, data, **kw):
            req = opamp_pb2.AgentToServer()
            req.ParseFromString(data)
            if req.HasField("agent_disconnect"):
                kind = "disconnect"
            elif req.HasField("agent_description"):
                kind = "full_state"
            else:
                kind = "heartbeat"
            with progress:
                SUMMARY["uid"] = req.instance_uid.hex()
                SUMMARY["sent"][kind] += 1
            with self._send_lock:
                try:
                    reply = super().send(url=url, headers=headers, data=data, **kw)
                except Exception as e:
                    with progress:
                        SUMMARY["errors"].append(f"{kind} request failed: {e}")
                        if kind == "disconnect":
                            SUMMARY["disconnect_status"] = "failed"
                        progress.notify_all()
                    raise
            with progress:
                SUMMARY["replies"] += 1
                if reply.instance_uid == req.instance_uid:
                    SUMMARY["own_uid_replies"] += 1
                    if kind == "heartbeat":
                        SUMMARY["heartbeat_replies"] += 1
                else:
                    SUMMARY["foreign_uid_replies"] += 1
                    SUMMARY["errors"].append(
                        f"{kind} reply addressed to {reply.instance_uid.hex()!r}, not to us")
                if reply.HasField("error_response"):
                    SUMMARY["errors"].append(f"{kind} got error_response: {reply.error_response}")
                if kind == "disconnect":
                    SUMMARY["disconnect_status"] = SUMMARY["http_statuses"][-1]
                progress.notify_all()
            return reply

    class Callbacks(OpAMPCallbacks):
        def on_connect_failed(self, agent, client, error):
            with progress:
                SUMMARY["errors"].append(f"on_connect_failed: {error}")
                progress.notify_all()

        def on_error(self, agent, client, error_response):
            with progress:
                SUMMARY["errors"].append(f"on_error: {error_response}")
                progress.notify_all()

    transport = RecordingTransport()
    client = OpAMPClient(
        endpoint=args.url,
        headers=headers,
        timeout_millis=5_000,
        agent_identifying_attributes={"service.name": "interop-python"},
        agent_non_identifying_attributes={"interop.driver": "tests/interop/python_client.py"},
        transport=transport,
    )
    agent = OpAMPAgent(
        interval=args.interval,
        callbacks=Callbacks(),
        client=client,
        max_retries=0,  # a failure is a test failure, not something to ride out
        heartbeat_max_retries=0,
        initial_backoff=0.1,
    )
    agent.start()

    def done() -> bool:
        return bool(SUMMARY["errors"]) or SUMMARY["heartbeat_replies"] >= args.heartbeats

    with progress:
        progress.wait_for(done)
    if SUMMARY["errors"]:
        emit_and_exit(1)

    # Quiesce before saying goodbye, so no heartbeat races the disconnect
    # (stop() sends it straight away, next to the worker thread). These two
    # are private to the pinned version: stop scheduling, drain the queue.
    agent._schedule = False
    drained = threading.Thread(target=agent._queue.join, daemon=True)
    drained.start()
    drained.join(timeout=5)
    if drained.is_alive():
        fail("the agent's send queue did not drain")

    agent.stop(timeout=5)  # sends AgentToServer{agent_disconnect}
    atexit.unregister(agent.stop)  # or it says goodbye a second time at exit

    if SUMMARY["sent"]["full_state"] != 1:
        SUMMARY["errors"].append(f"expected one full-state report, sent {SUMMARY['sent']['full_state']}")
    if SUMMARY["sent"]["disconnect"] != 1:
        SUMMARY["errors"].append(f"expected one agent_disconnect, sent {SUMMARY['sent']['disconnect']}")
    if SUMMARY["disconnect_status"] != 200:
        SUMMARY["errors"].append(f"agent_disconnect answered with HTTP {SUMMARY['disconnect_status']}")
    emit_and_exit(0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # anything unexpected still yields one JSON line
        SUMMARY["errors"].append(f"driver crashed: {e!r}")
        emit_and_exit(2)
