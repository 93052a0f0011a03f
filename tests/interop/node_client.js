#!/usr/bin/env node
/*
 * Interop driver: the npm package `@elastic/opamp-client-node` (pinned in
 * package.json) talking plain-HTTP OpAMP to an endpoint.
 *
 * It runs the package's own client: `start()` sends the full-state report,
 * heartbeats follow on the client's own schedule, `shutdown()` stops it (this
 * package sends no agent_disconnect; it just stops and closes its HTTP
 * connection). Every exchange is observed through the package's documented
 * diagnostics channels (`diagEnabled`), which carry each AgentToServer and the
 * ServerToAgent it got back, so we can check replies are addressed to us.
 *
 * Usage:
 *   node node_client.js --url http://127.0.0.1:4320/v1/opamp \
 *       [--header 'Authorization: Secret-Key k'] [--heartbeats 3] \
 *       [--interval 0.3] [--timeout 20]
 *
 * The package must be resolvable (e.g. NODE_PATH=target/interop/node/node_modules).
 * Prints one JSON line and exits 0 only if every check passed.
 */
'use strict';

const diagch = require('diagnostics_channel');

const summary = {
    client: 'node',
    package: '@elastic/opamp-client-node',
    version: null,
    uid: null,
    sent: {full_state: 0, heartbeat: 0, disconnect: 0},
    replies: 0,
    own_uid_replies: 0,
    foreign_uid_replies: 0,
    heartbeat_replies: 0,
    http_statuses: [],
    content_types: [],
    content_encodings: [],
    errors: [],
};
let emitted = false;

function emitAndExit(code) {
    if (emitted) return;
    emitted = true;
    if (code === 0 && summary.errors.length > 0) code = 1;
    process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code));
}

function fail(msg) {
    summary.errors.push(msg);
    emitAndExit(1);
}

function hex(u8) {
    return Buffer.from(u8 ?? []).toString('hex');
}

function parseArgs(argv) {
    const args = {
        url: process.env.OPAMP_URL,
        headers: {},
        heartbeats: 3,
        interval: 0.3,
        timeout: 20,
    };
    for (let i = 0; i < argv.length; i++) {
        const flag = argv[i];
        const val = argv[++i];
        if (val === undefined) throw new Error(`missing value for ${flag}`);
        switch (flag) {
            case '--url':
                args.url = val;
                break;
            case '--header': {
                const at = val.indexOf(':');
                if (at < 0) throw new Error(`bad --header ${val}: expected 'Name: value'`);
                args.headers[val.slice(0, at).trim()] = val.slice(at + 1).trim();
                break;
            }
            case '--heartbeats':
                args.heartbeats = Number(val);
                break;
            case '--interval':
                args.interval = Number(val);
                break;
            case '--timeout':
                args.timeout = Number(val);
                break;
            default:
                throw new Error(`unknown argument ${flag}`);
        }
    }
    if (!args.url) throw new Error('no --url (or OPAMP_URL) given');
    return args;
}

async function main() {
    const args = parseArgs(process.argv.slice(2));

    // Hard bound on the run. Not unref'd: it also keeps the process alive.
    const watchdog = setTimeout(() => fail(`timed out after ${args.timeout}s`), args.timeout * 1000);

    let opamp, pkg;
    try {
        opamp = require('@elastic/opamp-client-node');
        pkg = require('@elastic/opamp-client-node/package.json');
    } catch (e) {
        fail(
            `cannot load @elastic/opamp-client-node (${e.message}); run tests/interop/install.sh ` +
                'and put target/interop/node/node_modules on NODE_PATH'
        );
        return;
    }
    summary.version = pkg.version;

    // What came back over HTTP (undici's global diagnostics channel).
    diagch.subscribe('undici:request:headers', ({response}) => {
        summary.http_statuses.push(response.statusCode);
        const h = {};
        for (let i = 0; i + 1 < response.headers.length; i += 2) {
            h[response.headers[i].toString().toLowerCase()] = response.headers[i + 1].toString();
        }
        for (const [key, name] of [
            ['content_types', 'content-type'],
            ['content_encodings', 'content-encoding'],
        ]) {
            const v = h[name] ?? '';
            if (!summary[key].includes(v)) summary[key].push(v);
        }
    });

    let wake = () => {};
    diagch.subscribe(opamp.DIAG_CH_SEND_SUCCESS, ({a2s, s2a}) => {
        const kind = a2s.agentDisconnect ? 'disconnect' : a2s.agentDescription ? 'full_state' : 'heartbeat';
        summary.sent[kind] += 1;
        summary.replies += 1;
        if (hex(s2a.instanceUid) === hex(a2s.instanceUid)) {
            summary.own_uid_replies += 1;
            if (kind === 'heartbeat') summary.heartbeat_replies += 1;
        } else {
            summary.foreign_uid_replies += 1;
            summary.errors.push(`${kind} reply addressed to '${hex(s2a.instanceUid)}', not to us`);
        }
        wake();
    });
    diagch.subscribe(opamp.DIAG_CH_SEND_FAIL, ({a2s, err}) => {
        const kind = a2s.agentDisconnect ? 'disconnect' : a2s.agentDescription ? 'full_state' : 'heartbeat';
        summary.sent[kind] += 1;
        summary.errors.push(`${kind} request failed: ${err && err.message ? err.message : err}`);
        wake();
    });

    const client = opamp.createOpAMPClient({
        endpoint: args.url,
        headers: args.headers,
        heartbeatIntervalSeconds: args.interval,
        headersTimeout: 5000,
        bodyTimeout: 5000,
        diagEnabled: true,
    });
    summary.uid = hex(client.getInstanceUid());
    client.setAgentDescription({
        identifyingAttributes: {'service.name': 'interop-node'},
        nonIdentifyingAttributes: {'interop.driver': 'tests/interop/node_client.js'},
    });
    client.start();

    await new Promise((resolve) => {
        wake = () => {
            if (summary.errors.length > 0 || summary.heartbeat_replies >= args.heartbeats) resolve();
        };
    });
    // An in-flight send is waited for by shutdown (undici drains on close).
    await client.shutdown();
    clearTimeout(watchdog);

    if (summary.sent.full_state !== 1) {
        summary.errors.push(`expected one full-state report, sent ${summary.sent.full_state}`);
    }
    if (summary.uid !== hex(client.getInstanceUid())) {
        summary.errors.push(`the server changed our instance uid to ${hex(client.getInstanceUid())}`);
    }
    emitAndExit(0);
}

// The client's own failures (e.g. it throws on a reply whose instance_uid is
// not a valid UUID) surface here; they still end in one JSON line.
for (const ev of ['unhandledRejection', 'uncaughtException']) {
    process.on(ev, (e) => {
        summary.errors.push(`${ev} in the client: ${e && e.stack ? e.stack : e}`);
        emitAndExit(2);
    });
}

main().catch((e) => {
    summary.errors.push(`driver crashed: ${e && e.stack ? e.stack : e}`);
    emitAndExit(2);
});
