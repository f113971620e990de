// Reads who a proxy is from the Node in its first xDS request. A node without an identity Signalbox
// understands is refused.
import { gatewayGroup, JWT_MODULE_GROUP_SUFFIX, sidecarGroup } from '../../ir/types.js';
import { JWT_MODULE } from '../../protocol/jwt-fast-path.js';
import { envoySupport, envoyVersionList } from './envoy-versions.js';
import type { NodeIdentity } from './proxy-status.js';

// protobufjs's built-in google.protobuf.Struct uses camelCase field names (stringValue), unlike
// the Envoy types loaded with keepCase; accept both spellings.
interface StructValue {
  string_value?: string;
  stringValue?: string;
}

export interface WireNode {
  id?: string;
  cluster?: string;
  metadata?: { fields?: Record<string, StructValue> };
  user_agent_name?: string;
  user_agent_version?: string;
  /** Envoy fills this in (user_agent_name "envoy"); other xDS clients send user_agent_version. */
  user_agent_build_version?: { version?: { major_number?: number; minor_number?: number; patch?: number } | null } | null;
}

export class NodeError extends Error {}

function str(meta: WireNode['metadata'], key: string): string | undefined {
  const v = meta?.fields?.[key];
  return v?.stringValue || v?.string_value || undefined;
}

/**
 * The Envoy release a node runs (major.minor.patch), from the build version Envoy puts in its
 * node; undefined for other xDS clients and for a node that does not say.
 */
export function envoyVersionOf(node: WireNode): string | undefined {
  if (node.user_agent_name !== 'envoy') return undefined;
  const v = node.user_agent_build_version?.version;
  if (!v) return undefined;
  const parts = [v.major_number ?? 0, v.minor_number ?? 0, v.patch ?? 0];
  return parts.every((n) => Number.isInteger(n) && n >= 0 && n <= 99999) ? parts.join('.') : undefined;
}

/**
 * Why a node's Envoy is refused (older than the oldest Envoy Signalbox supports), or undefined.
 * A node that does not report an Envoy version (another xDS client) is not refused.
 */
export function envoyRefusal(identity: NodeIdentity): string | undefined {
  if (identity.envoyVersion === undefined) return undefined;
  const s = envoySupport(identity.envoyVersion);
  return s.supported ? undefined : `node "${identity.id}" refused: ${s.reason}`;
}

/**
 * A node whose metadata says `signalbox.jwt_module: signalbox_jwt_check` loads Signalbox's compiled
 * JWT filter: it joins the `+jwt-module` variant of its group, if the module is built for its
 * Envoy (a module ABI is declared for that version in envoy-versions.json). On any other Envoy
 * release the module cannot load, so the proxy stays in its group and runs the Lua fast path;
 * why is shown in /api/proxies. (A node that does not report its Envoy version is taken at its word.)
 */
function withModule(node: WireNode, identity: NodeIdentity): NodeIdentity {
  const m = str(node.metadata, 'signalbox.jwt_module');
  if (m === undefined) return identity;
  if (m !== JWT_MODULE.name) throw new NodeError(`node "${node.id}" has signalbox.jwt_module "${m}"; the only module Signalbox knows is "${JWT_MODULE.name}"`);
  if (identity.envoyVersion !== undefined && !envoySupport(identity.envoyVersion).jwtModule) {
    const built = envoyVersionList()
      .versions.filter((v) => v.jwtModule)
      .map((v) => v.version)
      .join(', ');
    return { ...identity, jwtModuleFallback: `the JWT module is built for Envoy ${built}, not ${identity.envoyVersion}: this proxy runs the Lua fast path` };
  }
  return { ...identity, group: identity.group + JWT_MODULE_GROUP_SUFFIX };
}

/** Node ids, instance ids and clusters: printable ASCII without spaces, bounded. */
const PRINTABLE = /^[\x21-\x7e]{1,256}$/;
/** Gateway and Service names: what the policy language allows (a DNS label). */
const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** A value quoted in an error: short and printable, whatever the client sent. */
function quote(v: string): string {
  const clean = v.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 64 ? `${clean.slice(0, 64)}...` : clean;
}

/**
 * Who the node says it is, checked for shape before anything is created for it: a node id,
 * cluster and instance of printable characters within bounds, names the policy language allows.
 */
export function identify(node: WireNode | null | undefined): NodeIdentity {
  if (!node?.id) throw new NodeError('the first request carries no node id');
  if (!PRINTABLE.test(node.id)) throw new NodeError(`node id "${quote(node.id)}" must be 1 to 256 printable characters without spaces`);
  if (node.cluster && !PRINTABLE.test(node.cluster)) throw new NodeError(`node "${node.id}" has a cluster that is not 1 to 256 printable characters`);
  const base = identifyBase(node as WireNode & { id: string });
  const envoyVersion = envoyVersionOf(node);
  const identity = withModule(node, envoyVersion === undefined ? base : { ...base, envoyVersion });
  if (!NAME.test(identity.name))
    throw new NodeError(`node "${node.id}" claims the name "${quote(identity.name)}", which is not a valid Gateway or Service name`);
  if (identity.instance !== undefined && !PRINTABLE.test(identity.instance))
    throw new NodeError(`node "${node.id}" has a signalbox.instance that is not 1 to 256 printable characters`);
  return identity;
}

function identifyBase(node: WireNode & { id: string }): NodeIdentity {
  const role = str(node.metadata, 'signalbox.role');
  if (!role) throw new NodeError(`node "${node.id}" has no signalbox.role in its metadata (write its bootstrap with \`signalbox bootstrap\`)`);
  if (role === 'gateway') {
    const name = str(node.metadata, 'signalbox.gateway');
    if (!name) throw new NodeError(`gateway node "${node.id}" has no signalbox.gateway in its metadata`);
    return {
      id: node.id,
      role: 'gateway',
      name,
      group: gatewayGroup(name),
      cluster: node.cluster || undefined,
      userAgent: node.user_agent_name ? `${node.user_agent_name}/${node.user_agent_version ?? ''}` : undefined,
    };
  }
  if (role === 'sidecar') {
    const service = str(node.metadata, 'signalbox.service');
    if (!service || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(service))
      throw new NodeError(`sidecar node "${node.id}" has no valid signalbox.service in its metadata`);
    const port = (key: string, fallback?: number): number => {
      const raw = str(node.metadata, key);
      const n = raw === undefined ? fallback : Number(raw);
      if (n === undefined || !Number.isInteger(n) || n < 1 || n > 65535) throw new NodeError(`sidecar node "${node.id}" has no valid ${key} in its metadata`);
      return n;
    };
    const shape = {
      service,
      appPort: port('signalbox.app_port'),
      inboundPort: port('signalbox.inbound_port'),
      outboundPort: port('signalbox.outbound_port', 15001),
    };
    return {
      id: node.id,
      role: 'sidecar',
      name: service,
      instance: str(node.metadata, 'signalbox.instance'),
      group: sidecarGroup(shape),
      cluster: node.cluster || undefined,
      userAgent: node.user_agent_name ? `${node.user_agent_name}/${node.user_agent_version ?? ''}` : undefined,
    };
  }
  throw new NodeError(`node "${node.id}" has an unknown signalbox.role "${role}"`);
}
