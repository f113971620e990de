// The Envoy versions Signalbox runs on, read from envoy-versions.json at the package root (the one
// list: the test scripts provision and test the same versions, and build the JWT module for them).
// What the xDS server takes from it: the oldest Envoy it accepts, which versions were tested, and
// which versions Signalbox's compiled JWT filter declares a module ABI for.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface EnvoyVersionEntry {
  version: string;
  role: 'pinned' | 'newest' | string;
  /** The module ABI the JWT filter is built with for this Envoy; absent: no module for it. */
  jwtModule?: { layout: string; abiVersion: string };
}

export interface EnvoyVersionList {
  minimum: string;
  versions: EnvoyVersionEntry[];
}

/** major.minor.patch, compared numerically. */
export type Semver = readonly [number, number, number];

const SEMVER = /^(\d{1,5})\.(\d{1,5})\.(\d{1,5})$/;

export function parseSemver(v: string): Semver | undefined {
  const m = SEMVER.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

export function compareSemver(a: Semver, b: Semver): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'envoy-versions.json')) && existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`envoy-versions.json not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** Checks the list's shape: a bad list is a packaging error, reported at start. */
export function checkVersionList(raw: unknown): EnvoyVersionList {
  const l = raw as Partial<EnvoyVersionList> | null;
  if (!l || typeof l.minimum !== 'string' || !parseSemver(l.minimum) || !Array.isArray(l.versions) || l.versions.length === 0) {
    throw new Error('envoy-versions.json: needs "minimum" (x.y.z) and a non-empty "versions" list');
  }
  for (const v of l.versions) {
    if (!v || typeof v.version !== 'string' || !parseSemver(v.version)) throw new Error(`envoy-versions.json: bad version entry ${JSON.stringify(v)}`);
    if (compareSemver(parseSemver(v.version)!, parseSemver(l.minimum)!) < 0)
      throw new Error(`envoy-versions.json: ${v.version} is below the minimum ${l.minimum}`);
    if (v.jwtModule && (typeof v.jwtModule.layout !== 'string' || typeof v.jwtModule.abiVersion !== 'string'))
      throw new Error(`envoy-versions.json: bad jwtModule for ${v.version}`);
  }
  if (l.versions.filter((v) => v.role === 'pinned').length !== 1) throw new Error('envoy-versions.json: exactly one version must be "pinned"');
  return l as EnvoyVersionList;
}

let cached: EnvoyVersionList | undefined;

export function envoyVersionList(): EnvoyVersionList {
  cached ??= checkVersionList(JSON.parse(readFileSync(path.join(packageRoot(), 'envoy-versions.json'), 'utf8')));
  return cached;
}

/** What Signalbox says of an Envoy version. */
export interface EnvoySupport {
  /** Below the minimum: the proxy is refused (with `reason`). */
  supported: boolean;
  /** The suite runs on exactly this version. */
  tested: boolean;
  /** The compiled JWT filter is built for this version (else such a proxy runs the Lua fast path). */
  jwtModule: boolean;
  reason?: string;
}

export function envoySupport(version: string, list: EnvoyVersionList = envoyVersionList()): EnvoySupport {
  const v = parseSemver(version);
  const entry = list.versions.find((e) => e.version === version);
  const tested = entry !== undefined;
  const jwtModule = entry?.jwtModule !== undefined;
  if (!v || compareSemver(v, parseSemver(list.minimum)!) < 0) {
    const range = `${list.minimum} or later (tested: ${list.versions.map((e) => e.version).join(', ')})`;
    return { supported: false, tested, jwtModule, reason: `Envoy ${version} is not supported: Signalbox needs Envoy ${range}; upgrade this proxy's Envoy` };
  }
  return { supported: true, tested, jwtModule };
}
