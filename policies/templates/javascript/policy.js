// An opamp-gateway policy in JavaScript: blocks packages by name.
//
// Config (`<name>.yaml`, handed to `init` as text):
//
//     block: [collector-contrib, evil-plugin]   # package names
//
// Hooks: `filter`, both directions.
// - server -> agent: a ServerToAgent whose `packages_available` (field 5)
//   offers a blocked package is dropped.
// - agent -> server: an AgentToServer whose `package_statuses` (field 8)
//   reports a blocked package is dropped.
// Every other message passes unchanged; the policy reads one field of it.
//
// Build: npm run build (componentize-js). See README.md.

import { log } from 'opamp-gateway:policy/host@0.3.0';

// ServerToAgent.packages_available and AgentToServer.package_statuses; in
// both, field 1 is `map<string, ...> packages` (entries: key 1, value 2).
const PACKAGES_AVAILABLE = 5;
const PACKAGE_STATUSES = 8;

// The gateway's own keys in the same YAML: not the policy's business.
const GATEWAY_KEYS = new Set([
  'on_error', 'call_timeout', 'memory_limit', 'mode', 'state',
  'filter_agent_to_server', 'filter_server_to_agent', 'visible_headers',
]);

let block = [];

// The `block:` list of a flat YAML text; unknown keys are refused.
function parseConfig(text) {
  let out = [];
  for (const raw of text.split('\n')) {
    const line = raw.split('#')[0].trimEnd();
    if (!line.trim()) continue;
    const colon = line.indexOf(':');
    if (colon < 0 || /^\s/.test(raw)) throw `expected \`key: value\` lines, got ${JSON.stringify(raw)}`;
    const key = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (GATEWAY_KEYS.has(key) || key.startsWith('quarantine_')) continue;
    if (key !== 'block') throw `unknown key ${JSON.stringify(key)}; this policy reads \`block: [names]\``;
    if (!value.startsWith('[') || !value.endsWith(']')) {
      throw `block must be a list such as [collector-contrib], got ${JSON.stringify(value)}`;
    }
    out = value.slice(1, -1).split(',').map((v) => v.trim().replace(/^['"]|['"]$/g, '')).filter((v) => v);
  }
  return out;
}

function varint(buf, i) {
  let result = 0;
  let scale = 1;
  for (;;) {
    const b = buf[i++];
    if (b === undefined) throw new RangeError('truncated varint');
    result += (b & 0x7f) * scale;
    if (b < 0x80) return [result, i];
    scale *= 128;
  }
}

// [number, bytes-or-null] of each field of an encoded message.
function* fields(buf) {
  let i = 0;
  while (i < buf.length) {
    let tag;
    [tag, i] = varint(buf, i);
    const number = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      [, i] = varint(buf, i);
      yield [number, null];
    } else if (wire === 1) {
      i += 8;
      yield [number, null];
    } else if (wire === 5) {
      i += 4;
      yield [number, null];
    } else if (wire === 2) {
      let n;
      [n, i] = varint(buf, i);
      if (i + n > buf.length) throw new RangeError('truncated field');
      yield [number, buf.subarray(i, i + n)];
      i += n;
    } else {
      throw new RangeError(`wire type ${wire}`);
    }
  }
}

// The keys of `map<string, ...> packages = 1`.
function packageNames(packages) {
  const names = [];
  const utf8 = new TextDecoder();
  for (const [number, entry] of fields(packages)) {
    if (number !== 1 || entry === null) continue;
    for (const [k, key] of fields(entry)) {
      if (k === 1 && key !== null) names.push(utf8.decode(key));
    }
  }
  return names;
}

export const policy = {
  init(config) {
    block = parseConfig(config);
    log('info', `blocking packages ${JSON.stringify(block)}`);
    return {
      assign: false,
      forwardHeaders: false,
      filterAgentToServer: true,
      filterServerToAgent: true,
      admit: false,
      lifecycle: false,
    };
  },

  filter(direction, uid, message) {
    const number = direction === 'server-to-agent' ? PACKAGES_AVAILABLE : PACKAGE_STATUSES;
    const value = message.field(number);
    if (!value || value.tag !== 'bytes') return { tag: 'forward' };
    let names;
    try {
      names = packageNames(value.val);
    } catch {
      return { tag: 'forward' }; // not ours to judge: the server will
    }
    const blocked = names.filter((n) => block.includes(n));
    if (blocked.length > 0) {
      log('debug', `dropped a message naming ${JSON.stringify(blocked)}`);
      return { tag: 'drop' };
    }
    return { tag: 'forward' };
  },

  // Not announced from `init`, so never called; every function of the
  // interface must still be exported.
  admit(_input) {
    return { tag: 'allow' };
  },
  assign(_input) {
    return undefined;
  },
  forwardHeaders(headers) {
    return headers;
  },
  onConnect(_event) {},
  onDisconnect(_event, _reason) {},
};
