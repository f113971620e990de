// `serve --preflight-envoy PATH`: a real Envoy checks each new configuration before it is applied.
// A header regex that plain validation accepts and Envoy refuses (RE2 program size) rejects the
// reload like a validation error: /api/errors names the file and field with SB_ENVOY_REJECTED, the
// rejected-reloads counter moves, nothing is applied (the groups' versions stay). A valid edit after
// it is applied, and Envoy checks only the groups whose configuration changed.
import assert from 'node:assert/strict';
import { unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { provisionEnvoy } from '../helpers/envoy.js';
import { waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { doc, docs, policyDir, removePolicyDirs } from '../unit/policy-dir.js';

type Versions = Record<string, Record<string, string>>;
async function groupVersions(sb: SignalboxProcess): Promise<Versions> {
  const { groups } = await sb.admin<{ groups: { group: string; types: Record<string, { version: string }> }[] }>('/api/groups');
  return Object.fromEntries(groups.map((g) => [g.group, Object.fromEntries(Object.entries(g.types).map(([t, v]) => [t, v.version]))]));
}

async function rejectedReloads(sb: SignalboxProcess): Promise<number> {
  const m = /^signalbox_policy_reloads_total\{result="rejected"\} (\S+)$/m.exec(await sb.adminText('/metrics'));
  return m ? Number(m[1]) : 0;
}

interface LogLine {
  msg: string;
  ms?: number;
  durationMs?: number;
  checked?: number;
  unchanged?: number;
  errors?: unknown;
}
function logLines(sb: SignalboxProcess): LogLine[] {
  return sb
    .logs()
    .split('\n')
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as LogLine];
      } catch {
        return [];
      }
    });
}

const route = (name: string, prefix: string, header: string) =>
  doc(
    'HTTPRoute',
    name,
    `  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - matches:
        - path: { type: PathPrefix, value: ${prefix} }
          headers: [ ${header} ]
      backendRefs: [ { name: orders } ]`,
  );

describe('serve --preflight-envoy', () => {
  let sb: SignalboxProcess;
  let dir: string;

  before(async () => {
    const envoy = await provisionEnvoy();
    dir = policyDir({
      'a-gateway.yaml': doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
      'b-orders.yaml': docs(
        doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
        route('orders', '/orders', '{ name: x-tenant, type: Exact, value: acme }'),
      ),
    });
    sb = await startSignalbox({ policies: dir, extraArgs: ['--preflight-envoy', envoy] });
  });
  after(async () => {
    await sb?.kill();
    removePolicyDirs();
  });

  test('what Envoy refuses is rejected like a validation error; a valid edit after it is applied', async (t) => {
    assert.equal((await sb.admin('/api/errors')).valid, true);
    const first = logLines(sb).filter((l) => l.msg === 'Envoy preflight');
    assert.equal(first.length, 1, sb.logs());
    assert.ok(first[0]!.checked! >= 2, JSON.stringify(first[0])); // the gateway and the orders sidecar
    const before = await groupVersions(sb);
    assert.ok(Object.keys(before).includes('gateway/public'), JSON.stringify(before));
    const rejected = await rejectedReloads(sb);

    writeFileSync(path.join(dir, 'c-unicode.yaml'), route('unicode', '/unicode', '{ name: x-name, type: RegularExpression, value: "[a-z]{98}" }'));
    await waitFor(async () => (await sb.admin('/api/errors')).errors.length > 0, { what: 'the Envoy refusal', timeoutMs: 20_000 });
    const { valid, errors } = await sb.admin<{
      valid: boolean;
      errors: { code: string; file: string; doc?: number; path?: string; line?: number; message: string }[];
    }>('/api/errors');
    assert.equal(valid, false);
    assert.equal(errors.length, 1, JSON.stringify(errors));
    const e = errors[0]!;
    assert.equal(e.code, 'SB_ENVOY_REJECTED');
    assert.equal(path.basename(e.file), 'c-unicode.yaml');
    assert.equal(e.path, 'spec.rules[0].matches[0].headers[0].value');
    assert.match(e.message, /RE2 program size/);
    assert.equal(await rejectedReloads(sb), rejected + 1);
    assert.deepEqual(await groupVersions(sb), before, 'nothing applied');

    // A valid edit of the same file is applied; only the gateway's configuration changed.
    writeFileSync(path.join(dir, 'c-unicode.yaml'), route('unicode', '/unicode', '{ name: x-name, type: RegularExpression, value: "[a-z]+" }'));
    await waitFor(async () => (await sb.admin('/api/errors')).valid === true, { what: 'the valid edit applied', timeoutMs: 20_000 });
    const afterFix = await groupVersions(sb);
    assert.notDeepEqual(afterFix['gateway/public'], before['gateway/public']);
    const runs = logLines(sb).filter((l) => l.msg === 'Envoy preflight');
    const last = runs.at(-1)!;
    assert.equal(last.errors, 0);
    assert.equal(last.checked, 1, JSON.stringify(last)); // the gateway; the orders sidecar is unchanged
    assert.ok(last.unchanged! >= 1, JSON.stringify(last));

    // The cost, for the record: one preflighted reload of this directory (one group checked), and
    // a reload that changes nothing Envoy sees (every group skipped).
    const n = logLines(sb).filter((l) => l.msg === 'policy configuration applied').length;
    unlinkSync(path.join(dir, 'c-unicode.yaml'));
    await waitFor(async () => logLines(sb).filter((l) => l.msg === 'policy configuration applied').length > n, {
      what: 'the removal applied',
      timeoutMs: 20_000,
    });
    const lines = logLines(sb);
    t.diagnostic(
      `preflight runs (ms, checked/unchanged): ${lines
        .filter((l) => l.msg === 'Envoy preflight')
        .map((r) => `${r.ms} (${r.checked}/${r.unchanged})`)
        .join(', ')}`,
    );
    t.diagnostic(
      `reloads (durationMs): ${lines
        .filter((l) => l.msg === 'policy configuration applied' || l.msg.startsWith('policy directory rejected'))
        .map((a) => a.durationMs ?? '?')
        .join(', ')}`,
    );
  });
});
