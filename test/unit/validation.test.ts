// Bad policy input produces precise errors (file, document, field path, line, message) and
// nothing else; every problem is reported at once; the CLI exits 1 and prints them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { KINDS, PLANNED_KINDS } from '../../src/api/v1alpha1/index.js';
import { ErrorCode, formatPolicyError, type PolicyError } from '../../src/errors.js';
import { parsePolicyText } from '../../src/sources/files/loader.js';
import { repoRoot } from '../helpers/envoy.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const formatted = (errors: PolicyError[]) => errors.map(formatPolicyError);
/** The kinds this build enforces, as error messages list them. */
const KIND_LIST = Object.keys(KINDS).join(', ');

const ORDERS = doc(
  'Service',
  'orders',
  `
  port: 8080
  endpoints:
    - { address: 127.0.0.1, port: 9001, labels: { version: v1 } }
    - { address: 127.0.0.1, port: 9002, labels: { version: v2 } }
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }`,
);
const PUBLIC = doc(
  'Gateway',
  'public',
  `
  listeners:
    - { name: http, port: 8080, protocol: HTTP }
    - { name: admin, port: 9090, protocol: HTTP }`,
);

/** A route on Gateway "public" whose single rule is `rule` (YAML lines indented by 6). */
function route(name: string, rule: string, parentRef = '{ kind: Gateway, name: public }'): string {
  return doc('HTTPRoute', name, `  parentRefs: [ ${parentRef} ]\n  rules:\n    - ${rule.trim().replace(/\n/g, '\n      ')}`);
}

function parse(text: string, file = 'p.yaml') {
  return parsePolicyText(text, file);
}

describe('YAML syntax', () => {
  test('malformed YAML is one SB_YAML_SYNTAX error with its document and line', () => {
    const text = 'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: orders\nspec:\n  port: 80\n';
    const r = parse(text);
    assert.equal(r.docs.length, 0);
    assert.equal(r.errors.length, 1, formatted(r.errors).join('\n'));
    const e = r.errors[0]!;
    assert.equal(e.code, ErrorCode.YAML_SYNTAX);
    assert.equal(e.file, 'p.yaml');
    assert.equal(e.doc, 1);
    assert.match(e.message, /^YAML: /);
    assert.equal(typeof e.line, 'number', 'a YAML error carries a line number');
    assert.ok(e.line! >= 3 && e.line! <= 5, `line ${e.line} should point at the unclosed mapping`);
  });

  test('a duplicate key is refused, on its line, in the right document', () => {
    const ok = doc('Service', 'a', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }');
    const text = `${ok}---\napiVersion: signalbox.dev/v1alpha1\nkind: Service\nkind: Gateway\nmetadata: { name: b }\nspec: {}\n`;
    const r = parse(text);
    assert.deepEqual(
      r.docs.map((d) => d.name),
      ['a'],
      'the good document still loads',
    );
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0]!.code, ErrorCode.YAML_SYNTAX);
    assert.equal(r.errors[0]!.doc, 2);
    assert.match(r.errors[0]!.message, /unique/i);
    assert.equal(r.errors[0]!.line, 8, 'the second "kind" key is on line 8 of the file');
  });

  test('a document that is not a mapping is refused', () => {
    const r = parse('- just\n- a list\n');
    assert.deepEqual(formatted(r.errors), ['p.yaml#1: a policy document must be a mapping with apiVersion, kind, metadata and spec (line 1)']);
  });

  test('empty documents (leading, trailing or doubled ---) are skipped, and do not shift indexes', () => {
    const svc = doc('Service', 'a', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }');
    const r = parse(`---\n${svc}---\n---\n${svc.replace('name: a', 'name: b')}---\n`);
    assert.deepEqual(formatted(r.errors), []);
    assert.deepEqual(
      r.docs.map((d) => [d.name, d.source.doc]),
      [
        ['a', 1],
        ['b', 3],
      ],
    );
  });
});

describe('kinds', () => {
  test('an unknown kind suggests the closest one', () => {
    const r = parse(doc('Servce', 'orders', '{ port: 80 }'));
    assert.deepEqual(formatted(r.errors), [`p.yaml#1 kind: unknown kind "Servce" (did you mean "Service"?); expected one of ${KIND_LIST} (line 2)`]);
    assert.equal(r.errors[0]!.code, ErrorCode.UNKNOWN_KIND);
    assert.equal(r.docs.length, 0);
  });

  test('an unknown kind far from every known one gets no suggestion', () => {
    const r = parse(doc('Frobnicator', 'x', '{}'));
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0]!.code, ErrorCode.UNKNOWN_KIND);
    assert.doesNotMatch(r.errors[0]!.message, /did you mean/);
  });

  for (const kind of PLANNED_KINDS) {
    test(`planned kind ${kind} is refused with SB_UNSUPPORTED_KIND, not ignored`, () => {
      const r = parse(doc(kind, 'p', '{ targetRef: { kind: Service, name: orders } }'));
      assert.equal(r.docs.length, 0);
      assert.equal(r.errors.length, 1);
      const e = r.errors[0]!;
      assert.equal(e.code, ErrorCode.UNSUPPORTED_KIND);
      assert.equal(e.path, 'kind');
      assert.equal(e.line, 2);
      assert.match(e.message, new RegExp(`kind ${kind} .*not enforced`));
    });
  }

  test('a wrong apiVersion is reported', () => {
    const r = parse(doc('Service', 'a', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }').replace('v1alpha1', 'v1'));
    assert.deepEqual(
      r.errors.map((e) => [e.path, e.line]),
      [['apiVersion', 1]],
    );
    assert.match(r.errors[0]!.message, /must be "signalbox.dev\/v1alpha1"/);
  });

  test('a missing kind says which kinds exist', () => {
    const r = parse('apiVersion: signalbox.dev/v1alpha1\nmetadata: { name: a }\nspec: {}\n');
    assert.deepEqual(formatted(r.errors), [`p.yaml#1 kind: required: the kind of policy, one of ${KIND_LIST} (line 1)`]);
  });
});

describe('schema', () => {
  test('unknown fields are errors naming the full field path and line', () => {
    const text = doc(
      'Service',
      'orders',
      `
  port: 8080
  endpoints:
    - address: 127.0.0.1
      port: 9001
      weight: 3
  colour: red`,
    );
    const r = parse(text);
    assert.deepEqual(formatted(r.errors), [
      'p.yaml#1 spec.endpoints[0].weight: unknown field "weight" (line 9)',
      'p.yaml#1 spec.colour: unknown field "colour" (line 10)',
    ]);
    assert.ok(r.errors.every((e) => e.code === ErrorCode.SCHEMA));
    assert.equal(r.docs.length, 0);
  });

  test('an unknown field at the top level of a document', () => {
    const r = parse(`${doc('Service', 'a', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }')}status: {}\n`);
    assert.deepEqual(formatted(r.errors), ['p.yaml#1 status: unknown field "status" (line 5)']);
  });

  test('ports out of range', () => {
    for (const [port, message] of [
      ['0', 'must be a port from 1 to 65535'],
      ['65536', 'must be a port from 1 to 65535'],
      ['80.5', 'must be a whole number'],
      ['"80"', 'expected number'],
    ] as const) {
      const r = parse(doc('Gateway', 'g', `  listeners:\n    - { name: http, port: ${port}, protocol: HTTP }`));
      assert.deepEqual(formatted(r.errors), [`p.yaml#1 spec.listeners[0].port: ${message} (line 6)`], `port ${port}`);
    }
  });

  test('invalid durations get exactly one error each', () => {
    const text = route('r', `backendRefs: [ { name: orders } ]\ntimeout: 5 sec\nretries: { attempts: 1, perTryTimeout: 0s, backoff: { baseInterval: 10 } }`);
    const r = parse(text);
    assert.deepEqual(formatted(r.errors), [
      'p.yaml#1 spec.rules[0].timeout: must be a duration such as "250ms", "5s", "1m" or "24h" (line 8)',
      'p.yaml#1 spec.rules[0].retries.perTryTimeout: must be greater than zero (line 9)',
      'p.yaml#1 spec.rules[0].retries.backoff.baseInterval: expected string (line 9)',
    ]);
  });

  test('invalid regular expressions, in paths and in header matches', () => {
    const text = route(
      'r',
      `matches:
  - path: { type: RegularExpression, value: "/a([" }
  - headers: [ { name: x-id, type: RegularExpression, value: "(?=x)y" } ]
backendRefs: [ { name: orders } ]`,
    );
    const r = parse(text);
    assert.equal(r.errors.length, 2, formatted(r.errors).join('\n'));
    assert.deepEqual(
      r.errors.map((e) => [e.path, e.line]),
      [
        ['spec.rules[0].matches[0].path.value', 8],
        ['spec.rules[0].matches[1].headers[0].value', 9],
      ],
    );
    assert.equal(r.errors[0]!.message, 'not a valid RE2 regular expression (Envoy uses RE2): missing closing ]: `[`');
    assert.match(r.errors[1]!.message, /lookaround and back-references are not supported/);
  });

  test('a path that does not start with "/" and an unknown path type', () => {
    const text = route(
      'r',
      `matches:
  - path: { type: PathPrefix, value: orders }
  - path: { type: Prefix, value: /orders }
backendRefs: [ { name: orders } ]`,
    );
    assert.deepEqual(formatted(parse(text).errors), [
      'p.yaml#1 spec.rules[0].matches[0].path.value: must start with "/" (line 8)',
      'p.yaml#1 spec.rules[0].matches[1].path.type: must be one of "Exact", "PathPrefix", "RegularExpression" (line 9)',
    ]);
  });

  test('a bad metadata.name', () => {
    const r = parse(doc('Service', 'Orders_Svc', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'));
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0]!.path, 'metadata.name');
    assert.equal(r.errors[0]!.line, 3);
    assert.match(r.errors[0]!.message, /DNS label/);
  });

  test('rule-level consistency: redirect with backends, no backends, all weights zero', () => {
    const text = doc(
      'HTTPRoute',
      'r',
      `
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - backendRefs: [ { name: orders } ]
      filters: [ { type: RequestRedirect, requestRedirect: { scheme: https } } ]
    - timeout: 1s
    - backendRefs: [ { name: orders, weight: 0 } ]`,
    );
    assert.deepEqual(formatted(parse(text).errors), [
      'p.yaml#1 spec.rules[0].backendRefs: a rule with a RequestRedirect filter must not have backendRefs (line 7)',
      'p.yaml#1 spec.rules[1].backendRefs: required (at least one backend) unless the rule redirects (line 9)',
      'p.yaml#1 spec.rules[2].backendRefs: at least one backend needs a weight above 0 (line 10)',
    ]);
  });

  test('every problem of a document is reported, not just the first', () => {
    const text = doc(
      'Gateway',
      'g',
      `
  listeners:
    - { name: http, port: 70000, protocol: HTTP, tls: { certificateFile: a, privateKeyFile: b } }
    - { name: http, port: 8443, protocol: HTTPS }
    - { name: other, port: 8443, protocol: TCP }`,
    );
    const r = parse(text);
    const got = r.errors.map((e) => `${e.path}: ${e.message}`).sort();
    assert.deepEqual(got, [
      'spec.listeners[0].port: must be a port from 1 to 65535',
      'spec.listeners[0].tls: only allowed on an HTTPS listener',
      'spec.listeners[1].tls: required for an HTTPS listener',
      'spec.listeners[2].protocol: must be one of "HTTP", "HTTPS"',
    ]);
  });

  test('document indexes and lines are right for the 2nd and 3rd document of a file', () => {
    const good = doc('Service', 'a', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }');
    const text = docs(
      good,
      doc('Service', 'b', '{ port: 0, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'),
      doc('Gateway', 'c', '{ listeners: [], extra: 1 }'),
    );
    const r = parse(text, 'multi.yaml');
    assert.deepEqual(
      r.docs.map((d) => [d.name, d.source.doc]),
      [['a', 1]],
    );
    // Lines count from the top of the file: document 3 starts on line 11, its spec is on line 14.
    assert.deepEqual(r.errors.map((e) => `${e.file}#${e.doc} ${e.path} (line ${e.line})`).sort(), [
      'multi.yaml#2 spec.port (line 9)',
      'multi.yaml#3 spec.extra (line 14)',
      'multi.yaml#3 spec.listeners (line 14)',
    ]);
    assert.equal(r.errors.find((e) => e.path === 'spec.port')!.message, 'must be a port from 1 to 65535');
    assert.equal(r.errors.find((e) => e.path === 'spec.extra')!.message, 'unknown field "extra"');
  });
});

describe('cross references (model)', () => {
  test('a misspelt backendRefs name: path, document index, line and a suggestion', async () => {
    const dir = policyDir({
      'services.yaml': ORDERS,
      'orders.yaml': docs(
        PUBLIC,
        route(
          'orders',
          `backendRefs:
  - { name: orders, weight: 90 }
  - { name: ordrs, weight: 10 }`,
        ),
      ),
    });
    const { errors, model } = await validateDir(dir);
    assert.equal(model, undefined, 'no model is produced when a reference is broken');
    assert.deepEqual(formatted(errors), [
      `${path.join(dir, 'orders.yaml')}#2 spec.rules[0].backendRefs[1].name: unknown Service "ordrs" (did you mean "orders"?) (line 17)`,
    ]);
    assert.equal(errors[0]!.code, ErrorCode.UNKNOWN_REFERENCE);
  });

  test('an unknown subset, with a suggestion', async () => {
    const dir = policyDir({ 'a.yaml': docs(ORDERS, PUBLIC, route('r', 'backendRefs: [ { name: orders, subset: v3 } ]')) });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => [e.code, e.doc, e.path, e.message]),
      [[ErrorCode.UNKNOWN_REFERENCE, 3, 'spec.rules[0].backendRefs[0].subset', 'Service "orders" has no subset "v3" (did you mean "v1"?)']],
    );
  });

  test('an unknown Gateway listener (sectionName) and an unknown Gateway', async () => {
    const dir = policyDir({
      'a.yaml': docs(
        ORDERS,
        PUBLIC,
        doc(
          'HTTPRoute',
          'r',
          `
  parentRefs:
    - { kind: Gateway, name: public, sectionName: htp }
    - { kind: Gateway, name: pubic }
    - { kind: Service, name: order }
  rules:
    - backendRefs: [ { name: orders } ]`,
        ),
      ),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => `#${e.doc} ${e.path}: ${e.message} (line ${e.line})`),
      [
        '#3 spec.parentRefs[0].sectionName: Gateway "public" has no listener "htp" (did you mean "http"?) (line 26)',
        '#3 spec.parentRefs[1].name: unknown Gateway "pubic" (did you mean "public"?) (line 27)',
        '#3 spec.parentRefs[2].name: unknown Service "order" (did you mean "orders"?) (line 28)',
      ],
    );
  });

  test('duplicate names of one kind name both files; the same name in another kind is fine', async () => {
    const dir = policyDir({
      'a.yaml': ORDERS,
      'b.yaml': docs(PUBLIC, doc('Service', 'orders', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }')),
      'c.yaml': route('orders', 'backendRefs: [ { name: orders } ]'),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [
      `${path.join(dir, 'b.yaml')}#2 metadata.name: Service "orders" is already defined in ${path.join(dir, 'a.yaml')}#1 (line 11)`,
    ]);
    assert.equal(errors[0]!.code, ErrorCode.DUPLICATE_NAME);
  });

  test('perTryTimeout longer than the rule timeout', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC, route('r', `backendRefs: [ { name: orders } ]\ntimeout: 1s\nretries: { attempts: 2, perTryTimeout: 1500ms }`)),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => [e.code, e.doc, e.path, e.message]),
      [[ErrorCode.CONFLICT, 3, 'spec.rules[0].retries.perTryTimeout', "1500ms is longer than the rule's timeout 1s"]],
    );
  });

  test('a perTryTimeout equal to the timeout is accepted', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC, route('r', `backendRefs: [ { name: orders } ]\ntimeout: 1s\nretries: { attempts: 2, perTryTimeout: 1000ms }`)),
    });
    const { errors, model } = await validateDir(dir);
    assert.deepEqual(errors, []);
    assert.ok(model);
  });

  test('all broken references across files are reported at once', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC),
      'b.yaml': route('b', 'backendRefs: [ { name: payments } ]'),
      'c.yaml': docs(
        route('c1', 'backendRefs: [ { name: orders, subset: v9 } ]'),
        route('c2', 'backendRefs: [ { name: ordres } ]', '{ kind: Gateway, name: private }'),
      ),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => `${path.basename(e.file)}#${e.doc} ${e.path}`),
      [
        'b.yaml#1 spec.rules[0].backendRefs[0].name',
        'c.yaml#1 spec.rules[0].backendRefs[0].subset',
        'c.yaml#2 spec.parentRefs[0].name',
        'c.yaml#2 spec.rules[0].backendRefs[0].name',
      ],
    );
    assert.ok(errors.every((e) => e.code === ErrorCode.UNKNOWN_REFERENCE));
    assert.match(errors[0]!.message, /^unknown Service "payments"$/, 'no suggestion when nothing is close');
  });

  test('schema errors in several files are all reported at once', async () => {
    const dir = policyDir({
      'a.yaml': doc('Service', 'a', '{ port: 99999, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'),
      'b.yaml': doc('Servce', 'b', '{}'),
      'c.yaml': 'kind: [\n',
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => [path.basename(e.file), e.code]),
      [
        ['a.yaml', ErrorCode.SCHEMA],
        ['b.yaml', ErrorCode.UNKNOWN_KIND],
        ['c.yaml', ErrorCode.YAML_SYNTAX],
      ],
    );
  });

  test('TLS files with the wrong content are reported by name, never by content', async () => {
    const key = '-----BEGIN PRIVATE KEY-----\nTOP-SECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n';
    const dir = policyDir({
      'certs/swapped.crt': key,
      'certs/junk.key': 'TOP-SECRET-NOT-A-KEY\n',
      'g.yaml': doc(
        'Gateway',
        'g',
        `  listeners:\n    - { name: https, port: 8443, protocol: HTTPS, tls: { certificateFile: certs/swapped.crt, privateKeyFile: certs/junk.key } }`,
      ),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => [e.code, e.path, e.message]),
      [
        [ErrorCode.FILE_READ, 'spec.listeners[0].tls.certificateFile', 'certs/swapped.crt is not a PEM certificate'],
        [ErrorCode.FILE_READ, 'spec.listeners[0].tls.privateKeyFile', 'certs/junk.key is not a PEM private key'],
      ],
    );
    assert.doesNotMatch(JSON.stringify(errors), /TOP-SECRET|PRIVATE KEY/);
  });

  test('a TLS file that does not exist is reported on its field', async () => {
    const dir = policyDir({
      'g.yaml': doc(
        'Gateway',
        'g',
        `  listeners:\n    - { name: https, port: 8443, protocol: HTTPS, tls: { certificateFile: certs/none.crt, privateKeyFile: certs/none.key } }`,
      ),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => [e.code, e.path, e.message]),
      [
        [ErrorCode.FILE_READ, 'spec.listeners[0].tls.certificateFile', 'cannot read certs/none.crt (relative to the policy directory): ENOENT'],
        [ErrorCode.FILE_READ, 'spec.listeners[0].tls.privateKeyFile', 'cannot read certs/none.key (relative to the policy directory): ENOENT'],
      ],
    );
  });
});

describe('policy directories', () => {
  test('an empty directory is an error, not an empty configuration', async () => {
    const dir = policyDir({});
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [`${dir}: no *.yaml or *.yml policy files found`]);
    assert.equal(errors[0]!.code, ErrorCode.NO_POLICIES);
  });

  test('only *.yaml / *.yml files are read, also in subfolders; others are ignored', async () => {
    const dir = policyDir({
      'expected.json': '{ "not": "policy" }',
      'README.md': 'kind: Nonsense',
      'certs/x.key': 'garbage',
      'nested/svc.yml': ORDERS,
      'gw.yaml': PUBLIC,
      '.hidden.yaml': 'kind: [',
    });
    const { errors, documents } = await validateDir(dir);
    assert.deepEqual(errors, []);
    assert.equal(documents, 2);
  });

  test('a directory with only non-policy files is reported as empty', async () => {
    const dir = policyDir({ 'expected.json': '{}' });
    const { errors } = await validateDir(dir);
    assert.deepEqual(
      errors.map((e) => e.code),
      [ErrorCode.NO_POLICIES],
    );
  });

  test('a directory that does not exist', async () => {
    const dir = path.join(policyDir({}), 'missing');
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [`${dir}: cannot read the policy directory: ENOENT`]);
    assert.equal(errors[0]!.code, ErrorCode.FILE_READ);
  });
});

describe('signalbox validate (CLI)', () => {
  const root = repoRoot();
  const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/signalbox.js', ...args], { cwd: root, encoding: 'utf8', timeout: 30_000 });

  test("the repository's policies/ are valid: exit 0", () => {
    const r = cli('validate', 'policies');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^policies: valid \(\d+ documents: .*\d+ Gateway.*\)\n$/);
    assert.equal(r.stderr, '');
  });

  test('a broken copy of policies/ exits 1 with the precise message on stderr', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-cli-'));
    const copy = path.join(dir, 'policies');
    cpSync(path.join(root, 'policies'), copy, { recursive: true });
    const inventory = doc('Service', 'inventory', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9100 } ] }');
    const broken = doc('HTTPRoute', 'stock', '  parentRefs: [ { kind: Service, name: inventory } ]\n  rules:\n    - backendRefs: [ { name: inventroy } ]');
    writeFileSync(path.join(copy, 'zz-broken.yaml'), docs(inventory, broken));
    try {
      const r = cli('validate', copy);
      assert.equal(r.status, 1, r.stdout + r.stderr);
      assert.equal(r.stdout, '');
      assert.equal(
        r.stderr,
        `${path.join(copy, 'zz-broken.yaml')}#2 spec.rules[0].backendRefs[0].name: unknown Service "inventroy" (did you mean "inventory"?) (line 12)\n` +
          `1 error(s) in ${copy}\n`,
      );
      // The same copy without the typo is valid: the failure came from the typo alone.
      writeFileSync(path.join(copy, 'zz-broken.yaml'), docs(inventory, broken.replace('inventroy', 'inventory')));
      const fixed = cli('validate', copy);
      assert.equal(fixed.status, 0, fixed.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--format github prints one GitHub Actions annotation per error, on its file and line', () => {
    const dir = policyDir({
      'a.yaml': docs(doc('Gateway', 'public', '  listners: []'), doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }')),
      'b,1.yaml':
        'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: "x,y:z" }\nspec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }\n',
      'c.yaml': '{ not: yaml',
    });
    const r = cli('validate', dir, '--format', 'github');
    assert.equal(r.status, 1, r.stderr);
    // ',' and ':' separate a command's properties: GitHub's escapes for them.
    const file = (n: string) => path.join(dir, n).replace(/:/g, '%3A').replace(/,/g, '%2C');
    assert.ok(file('b,1.yaml').includes('b%2C1.yaml'));
    const lines = r.stdout.trim().split('\n');
    assert.deepEqual(lines.slice(0, 3), [
      `::error file=${file('a.yaml')},line=4,title=SB_SCHEMA::document 1 spec.listeners: required`,
      `::error file=${file('a.yaml')},line=5,title=SB_SCHEMA::document 1 spec.listners: unknown field "listners"`,
      `::error file=${file('b,1.yaml')},line=3,title=SB_SCHEMA::document 1 metadata.name: must be a DNS label: lower-case letters, digits and "-", starting and ending with a letter or digit`,
    ]);
    assert.match(
      lines[3]!,
      new RegExp(`^::error file=${file('c.yaml').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')},line=\\d+,title=SB_YAML_SYNTAX::document 1: YAML: `),
    );
    assert.equal(lines.length, 4);
    assert.match(r.stderr, /^4 error\(s\) in /);
  });

  test('--format: a valid directory prints its summary; an unknown format or --json with another format is a usage error', () => {
    const ok = cli('validate', 'policies', '--format', 'github');
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /^policies: valid/);
    const bad = cli('validate', 'policies', '--format', 'yaml');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--format: unknown format "yaml"; expected one of text, json, github/);
    const both = cli('validate', 'policies', '--json', '--format', 'github');
    assert.equal(both.status, 2);
    assert.match(both.stderr, /--json is --format json/);
    assert.deepEqual(JSON.parse(cli('validate', 'policies', '--format', 'json').stdout), JSON.parse(cli('validate', 'policies', '--json').stdout));
  });

  test('--json reports the errors with their codes', () => {
    const dir = policyDir({ 'a.yaml': doc('Frobnicator', 'x', '{}') });
    const r = cli('validate', '--json', dir);
    assert.equal(r.status, 1);
    const out = JSON.parse(r.stdout) as { valid: boolean; errors: PolicyError[] };
    assert.equal(out.valid, false);
    assert.deepEqual(
      out.errors.map((e) => [e.code, e.doc, e.path]),
      [[ErrorCode.UNKNOWN_KIND, 1, 'kind']],
    );
  });
});
