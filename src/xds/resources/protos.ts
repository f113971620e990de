// Loads Envoy's v3 API types from the .proto trees shipped by the registry package
// @grpc/grpc-js-xds (envoy-api, xds, googleapis, protoc-gen-validate). Nothing is copied into
// this repository. The root is loaded once per process and shared.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
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

function includeDirs(): string[] {
  const pkgJson = require.resolve('@grpc/grpc-js-xds/package.json');
  const deps = path.join(path.dirname(pkgJson), 'deps');
  return ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(deps, d));
}

let cached: protobuf.Root | undefined;

/** The protobufjs root holding Envoy's v3 types (field names kept in snake_case). */
export function envoyRoot(): protobuf.Root {
  if (cached) return cached;
  const dirs = includeDirs();
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
  root.loadSync(ENTRY_FILES, { keepCase: true });
  defineDynamicModuleTypes(root);
  root.resolveAll();
  cached = root;
  return root;
}

/**
 * Envoy's dynamic-module filter messages (envoy.extensions.filters.http.dynamic_modules.v3), which
 * the registry package's proto trees do not carry. Only the fields Signalbox sets are declared, by
 * their numbers in Envoy's API (v1.36); the rest of each message is never written.
 */
function defineDynamicModuleTypes(root: protobuf.Root): void {
  const { Type, Field } = protobuf;
  root.define('envoy.extensions.dynamic_modules.v3').add(new Type('DynamicModuleConfig').add(new Field('name', 1, 'string')).add(new Field('do_not_close', 3, 'bool')));
  const config = '.envoy.extensions.dynamic_modules.v3.DynamicModuleConfig';
  root
    .define('envoy.extensions.filters.http.dynamic_modules.v3')
    .add(new Type('DynamicModuleFilter').add(new Field('dynamic_module_config', 1, config)).add(new Field('filter_name', 2, 'string')).add(new Field('filter_config', 3, '.google.protobuf.Any')))
    .add(new Type('DynamicModuleFilterPerRoute').add(new Field('dynamic_module_config', 1, config)).add(new Field('per_route_config_name', 2, 'string')).add(new Field('filter_config', 3, '.google.protobuf.Any')));
}

export function lookupType(name: string): protobuf.Type {
  return envoyRoot().lookupType(name);
}
