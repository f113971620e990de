// Loads Envoy's v3 API types from the .proto trees shipped by the registry package
// @grpc/grpc-js-xds (envoy-api, xds, googleapis, protoc-gen-validate), none of which is copied
// into this repository, and Signalbox's own .proto files from protos/ at the package's root (the
// part of Envoy's dynamic-module API the registry package lacks; protos/README.md). The root is
// loaded once per process and shared.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const require = createRequire(import.meta.url);

/** Every Envoy .proto file whose messages Signalbox encodes or decodes. */
const ENTRY_FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/discovery/v3/discovery.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/network/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/http/fault/v3/fault.proto',
  'envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto',
  'envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto',
  'envoy/service/ratelimit/v3/rls.proto',
  'envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto',
  'envoy/extensions/filters/http/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/lua/v3/lua.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'envoy/extensions/access_loggers/grpc/v3/als.proto',
  'envoy/extensions/access_loggers/stream/v3/stream.proto',
  'envoy/service/auth/v3/external_auth.proto',
  'envoy/service/accesslog/v3/als.proto',
  'envoy/config/trace/v3/opentelemetry.proto',
  'envoy/config/rbac/v3/rbac.proto',
  'envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto',
];

/**
 * Signalbox's own .proto files (paths below protos/). Their imports are resolved like Envoy's:
 * first in the registry package's trees, then in protos/ (so a file of ours never shadows one of
 * Envoy's).
 */
export const SIGNALBOX_PROTO_FILES = ['signalbox/envoy_subset/dynamic_modules.proto', 'signalbox/envoy_subset/http_dynamic_modules.proto'];

/**
 * The protos/ folder at the package's root, found from `from` (default: this module's folder) by
 * walking up to the folder holding package.json: the same from src/ (tests run from the sources'
 * layout) and from dist/src/ (the compiled package), since both sit below the root.
 */
export function protosDir(from: string = path.dirname(fileURLToPath(import.meta.url))): string {
  let dir = from;
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) {
      const protos = path.join(dir, 'protos');
      if (!existsSync(path.join(protos, SIGNALBOX_PROTO_FILES[0]!)))
        throw new Error(
          `Signalbox's .proto files are missing: ${path.join(protos, SIGNALBOX_PROTO_FILES[0]!)} does not exist (they ship in the package's protos/ folder)`,
        );
      return protos;
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`Signalbox's .proto files not found: no package.json above ${from}`);
    dir = up;
  }
}

function includeDirs(): string[] {
  const pkgJson = require.resolve('@grpc/grpc-js-xds/package.json');
  const deps = path.join(path.dirname(pkgJson), 'deps');
  return ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(deps, d));
}

let cached: protobuf.Root | undefined;

/** The protobufjs root holding Envoy's v3 types (field names kept in snake_case). */
export function envoyRoot(): protobuf.Root {
  if (cached) return cached;
  const dirs = [...includeDirs(), protosDir()];
  const protobufDir = path.dirname(require.resolve('protobufjs/package.json'));
  const root = new protobuf.Root();
  root.resolvePath = (_origin: string, target: string): string | null => {
    if (path.isAbsolute(target) && existsSync(target)) return target;
    for (const dir of dirs) {
      const candidate = path.join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    if (target.startsWith('google/protobuf/')) {
      // descriptor.proto ships with protobufjs; the other well-known types are built in.
      const shipped = path.join(protobufDir, target);
      return existsSync(shipped) ? shipped : target;
    }
    return null;
  };
  root.loadSync([...ENTRY_FILES, ...SIGNALBOX_PROTO_FILES], { keepCase: true });
  root.resolveAll();
  cached = root;
  return root;
}

export function lookupType(name: string): protobuf.Type {
  return envoyRoot().lookupType(name);
}
