// `signalbox serve`: wires the pipeline, the xDS server and the admin API together.
import path from 'node:path';
import { adminSecurityOf, buildAdmin, registeredRoutes } from '../admin/server.js';
import { publishedProxies, type ReplicaSource } from '../admin/replicas.js';
import { relativeToPolicyDir } from '../admin/dashboard/routes.js';
import { attachTelemetry } from '../telemetry/index.js';
import { startTracing } from '../observability/tracing.js';
import { DEFAULT_AUTHZ_PORT, type ServeConfig } from '../config/settings.js';
import { Pipeline } from '../controller/pipeline.js';
import { routeFaultFromEnv } from '../controller/compile-groups.js';
import { ErrorCode, formatPolicyError } from '../errors.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { watchPolicies } from '../sources/files/watcher.js';
import { envoyNarrowing, useNackPolicySide } from '../xds/server/nack-blame.js';
import { nackPolicySide } from '../controller/nack-policy-side.js';
import { SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { envoyRoot } from '../xds/resources/protos.js';
import { XdsServer } from '../xds/server/server.js';
import { attachConsul, untilConsulSynced } from '../sources/consul/index.js';
import { CertificateAuthority } from '../ca/ca.js';
import { IdentityManager } from '../ca/identities.js';
import { pruneExpiredRevocations, TokenVerifier } from '../ca/tokens.js';
import { ServerCertificate, type StoredServerCert } from '../ca/server-tls.js';
import { CaFollower, RotationLeader } from '../ca/rotation.js';
import { TypeUrl } from '../xds/resources/type-urls.js';
import { KEY_CHECK_RECORD, openSharedState, type SharedState } from '../state/index.js';
import { StateFreshness } from '../state/freshness.js';
import { Leadership } from '../state/leader.js';
import { ReplicaDirectory } from '../state/replicas.js';
import { writeDataFile } from '../util/data-dir.js';
import { XDS_CA_FILE } from './bootstrap.js';
import { BUILTIN_DEFAULTS } from '../model/model.js';
import { startEmbeddedAuthz } from '../authz/index.js';
import { startEmbeddedRateLimit } from '../ratelimit/index.js';
import { inlineKeysOnly } from '../translate/jwt.js';

/** After the signing root changed, live workload certificates are re-issued evenly over this long. */
const CERT_REISSUE_SPREAD_MS = 2_000;
/** After a new trust bundle was compiled, how long before this replica reports it applied (the fan-out to every stream). */
const FANOUT_SETTLE_MS = 500;

export interface RunningServer {
  xdsPort: number;
  adminPort: number;
  /** The ext_authz service's port (undefined while closed: no JWTPolicy yet and no --authz-port, or it could not bind). */
  readonly authzPort?: number;
  /** The rate-limit service's port (undefined while closed: no global limit yet and no --ratelimit-port). */
  readonly ratelimitPort?: number;
  pipeline: Pipeline;
  xds: XdsServer;
  logger: Logger;
  /** The admin API's paths (README's admin table must list each: test/unit/docs-coverage.test.ts). */
  adminRoutes(): string[];
  stop(): Promise<void>;
}

export async function startServer(cfg: ServeConfig, logger = createLogger({ level: cfg.logLevel })): Promise<RunningServer> {
  envoyRoot(); // load Envoy's types once, before the first stream arrives
  const tracing = await startTracing(logger); // off unless OTEL_* asks for it
  const metrics = new Metrics();
  const cache = new SnapshotCache();
  const policyDir = path.resolve(cfg.policies);
  // Flags that make the start impossible are refused before anything listens.
  const adminSecurity = await adminSecurityOf(cfg.adminAddress, cfg.adminTokenFile);
  // --state consul: the CA, token keys, revocations and server certificate are shared by every replica.
  const shared = cfg.state
    ? await openSharedState({ consulAddr: cfg.consulAddr, datacenter: cfg.consulDatacenter, prefix: cfg.state.prefix, keyFile: cfg.state.keyFile, logger })
    : undefined;
  if (shared) logger.info({ state: shared.location, replica: cfg.state!.replicaId }, 'shared state in Consul');
  // One leader (a Consul session lock) makes what must be made once; followers wait for it.
  const leadership = shared && new Leadership(shared, cfg.state!.replicaId, logger);
  await leadership?.start();
  if (shared) shared.leadership = leadership;
  const prune = () => {
    if (!shared || !leadership?.isLeader) return;
    void pruneExpiredRevocations(shared)
      .then((ids) => ids.length && logger.info({ pruned: ids.length }, 'expired tokens removed from the shared revocation list'))
      .catch((e: unknown) => logger.warn({ err: (e as Error).message }, 'pruning the shared revocation list failed; retrying later'));
  };
  leadership?.on('change', (leading) => leading && prune());
  prune();
  const pruneTimer = shared ? setInterval(prune, 10 * 60_000).unref() : undefined;
  const ca = await CertificateAuthority.open({ dataDir: path.resolve(cfg.dataDir), trustDomain: BUILTIN_DEFAULTS.trustDomain, files: cfg.ca, shared });
  logger.info({ ca: ca.source, subject: ca.certificate.subject, notAfter: ca.certificate.notAfter.toISOString() }, 'mesh CA ready');
  const identities = new IdentityManager(ca, {
    ttlMs: BUILTIN_DEFAULTS.mtls.certTTLms,
    logger,
    metrics: { issued: (kind) => metrics.certificates.inc({ kind }) },
  });
  metrics.trackCertificates(() => identities.nearestExpirySeconds());
  // --state consul: Consul unreadable longer than --state-stale-max stops workload certificate
  // issuance (revocations and rotations made elsewhere would be unknown); it resumes when Consul answers.
  const freshness = shared && new StateFreshness(() => shared.kv.get(shared.keyOf(KEY_CHECK_RECORD)), cfg.state!.staleMaxMs, { logger });
  freshness?.on('change', (stale, st) =>
    stale ? identities.halt(`Consul unreadable since ${st.unreadableSince}, longer than --state-stale-max (${st.staleMaxSeconds} s)`) : identities.resume(),
  );
  freshness?.start();
  if (freshness) metrics.trackSharedState(() => freshness.status());
  /** What /api/status and /api/replicas say of the shared state's freshness. */
  const freshnessStatus = () => freshness && { ...freshness.status(), certificatesWaiting: identities.halted?.waiting ?? 0 };
  // New or rotated JWKS keys change the JWT fast path's route versions (Envoy forgets what it
  // remembered under the old keys): recompile (coalesced).
  let keysTimer: NodeJS.Timeout | undefined;
  const onKeysChanged = () => {
    if (keysTimer || !cfg.jwtFastPath) return;
    keysTimer = setTimeout(() => {
      keysTimer = undefined;
      if (pipeline.model) void pipeline.reload();
    }, 50);
  };
  // Opened at once for an explicit --authz-port, else once a JWTPolicy exists; TLS from the mesh CA unless --xds-insecure.
  const authz = await startEmbeddedAuthz({
    bindAddress: cfg.xdsAddress,
    port: cfg.authzPort,
    defaultPort: DEFAULT_AUTHZ_PORT,
    tls: cfg.xdsTls ? { ca, trustDomain: BUILTIN_DEFAULTS.trustDomain } : undefined,
    addressForProxies: cfg.authzAddressForProxies,
    logger,
    registry: metrics.registry,
    onKeysChanged,
  });
  // Opened at once for an explicit --ratelimit-port, else once a global rate limit exists; same TLS as ext_authz.
  const ratelimit = await startEmbeddedRateLimit({
    bindAddress: cfg.xdsAddress,
    port: cfg.ratelimitPort,
    tls: cfg.xdsTls ? { ca, trustDomain: BUILTIN_DEFAULTS.trustDomain } : undefined,
    addressForProxies: cfg.ratelimitAddressForProxies,
    redis: cfg.redis,
    logger,
    registry: metrics.registry,
  });
  // NACKs are traced back to policy documents by the file source and preflight, handed to the server.
  useNackPolicySide(nackPolicySide);
  // A NACK Envoy's message does not pin down is narrowed with the same Envoy the preflight uses, if given.
  if (cfg.preflightEnvoy) envoyNarrowing.configure(cfg.preflightEnvoy);
  const pipeline = new Pipeline({
    policyDir,
    dataDir: path.resolve(cfg.dataDir),
    // Files holding the control plane's own secrets: no policy may point at them.
    forbiddenPaths: [cfg.ca?.keyFile, cfg.xdsTls?.files?.keyFile, cfg.adminTokenFile].filter((f): f is string => !!f).map((f) => path.resolve(f)),
    cache,
    logger,
    metrics,
    identities,
    authz: authz.endpoint,
    rateLimit: ratelimit.endpoint,
    accessLog: cfg.accessLogSampling === undefined ? undefined : { successSamplePercent: cfg.accessLogSampling },
    // Keys written in the policy are known at once; fetched and file keys once the service loaded them.
    jwtKeys: (p) => inlineKeysOnly(p) ?? authz.server.engine.keysOf(p),
    jwtFastPath: cfg.jwtFastPath,
    jwtFastPathModule: cfg.jwtFastPathModule,
    endpointPushIntervalMs: cfg.endpointPushIntervalMs,
    policyLimits: cfg.policyLimits,
    strictPolicies: cfg.strict,
    preflightEnvoy: cfg.preflightEnvoy,
    // Tests only: break the translation of the gateway groups a named HTTPRoute is attached to.
    beforeGroup: routeFaultFromEnv(),
    // A restart with an invalid policy directory serves the last good configuration (DATA_DIR/last-good.json).
    persistLastGood: true,
  });
  const tokens = await TokenVerifier.open(shared ?? path.resolve(cfg.dataDir), { logger });
  const xds = new XdsServer({
    cache,
    warmWaitMs: cfg.warmWaitMs,
    clusterDrainMs: cfg.clusterDrainMs,
    metrics,
    logger,
    tokens,
    requireToken: cfg.requireToken,
    identities,
    identityOf: (group) => pipeline.identityOf(group),
    declares: (role, name) => pipeline.declares(role, name),
  });
  // TLS on the xDS port by default: a certificate from the mesh CA (or the user's PKI), and the
  // CA proxies verify it with written next to the CA for `signalbox bootstrap`.
  const xdsCert = cfg.xdsTls
    ? await ServerCertificate.start({
        ca,
        trustDomain: BUILTIN_DEFAULTS.trustDomain,
        server: 'xds',
        bindAddress: cfg.xdsAddress,
        sans: cfg.xdsTls.sans,
        files: cfg.xdsTls.files,
        stored: shared && storedServerCert(shared, `replicas/${cfg.state!.replicaId}/xds-server`),
        logger,
      })
    : undefined;
  if (xdsCert?.source === 'mesh-ca') await writeDataFile(path.join(path.resolve(cfg.dataDir), XDS_CA_FILE), ca.trustBundlePem, 0o644, ErrorCode.CA); // a fault: file, cause, remedy
  const warnings: string[] = [];
  if (!xdsCert) warnings.push('xDS is served in plain text (--xds-insecure): configuration and private keys cross the network in clear');
  if (cfg.requireToken === 'secrets') warnings.push('--require-token secrets: proxies without a valid token receive every configuration except keys');
  for (const w of warnings) logger.warn(w);
  const consul = attachConsul(cfg, pipeline, metrics, logger); // undefined without --consul-addr
  await consul?.prepared(); // with --consul-import: the imported services, before the first load
  pipeline.on('applied', (model) => {
    authz.update(model);
    ratelimit.update(model);
  }); // before any proxy can get routes that name new policies
  // Watching before the first read: an edit made while serve starts is either in that read or reported after it.
  const watcher = watchPolicies(policyDir, cfg.watchDebounceMs, (changes) => void pipeline.reload(changes));
  await watcher.ready;
  const first = await pipeline.reload();
  if (!first.applied) {
    const kept = pipeline.servingLastGood;
    logger.error(
      { errors: first.errors.map(formatPolicyError) },
      kept
        ? `the policy directory is invalid; serving the last good configuration (applied ${kept.appliedAt?.toISOString()}, from ${kept.restoredFrom}) until it is fixed`
        : 'the policy directory is invalid; serving no configuration until it is fixed',
    );
  }
  await ratelimit.settled();
  await authz.settled(); // a JWTPolicy in the first model: its port is bound (or the failure known) before proxies connect
  await untilConsulSynced(consul, pipeline); // never hand proxies empty endpoint sets: xDS opens once Consul answered
  const xdsPort = await xds.listen(
    `${cfg.xdsAddress.includes(':') ? `[${cfg.xdsAddress}]` : cfg.xdsAddress}:${cfg.xdsPort}`,
    xdsCert?.grpcCredentials(() => tokens.caPem),
  );
  const telemetry = attachTelemetry({
    pipeline,
    registry: xds.registry,
    promRegistry: metrics.registry,
    logger,
    addService: (def, impl) => xds.addService(def, impl),
  });
  /** Proxies get an older configuration than the policy directory's: the banner says so until a valid edit. */
  const lastGoodWarning = (): string[] => {
    const kept = pipeline.servingLastGood;
    if (!kept) return [];
    const origin = kept.restoredFrom ? `restored from ${kept.restoredFrom} at start` : `kept since ${kept.since.toISOString()}`;
    return [
      `the policy directory is invalid (${kept.errors} error(s), see /api/errors): proxies get the last good configuration, applied ${kept.appliedAt?.toISOString() ?? 'earlier'} and ${origin}`,
    ];
  };
  /** The security posture and its downgrades, for /api/status and the dashboard's banner. */
  const status = () => ({
    xds: { tls: !!xdsCert, insecure: !xdsCert, certificate: xdsCert?.status() },
    proxyAuth: { requireToken: cfg.requireToken, revocationList: tokens.revocationProblem ?? 'ok' },
    authz: authz.status(),
    ratelimit: ratelimit.status(),
    ...(freshness ? { sharedState: freshnessStatus() } : {}),
    warnings: [
      ...warnings,
      ...(tokens.revocationProblem ? [tokens.revocationProblem] : []),
      ...lastGoodWarning(),
      ...ratelimit.warnings(),
      ...(identities.halted ? [`workload certificates are not issued nor renewed: ${identities.halted.reason}`] : []),
    ],
  });
  // --state consul: every replica, alive or not, the leader, and the proxies each holds (from Consul).
  // Registered once the xDS port is known (below); the admin API reads it through `replicas`.
  let directory: ReplicaDirectory | undefined;
  const replicas: ReplicaSource | undefined =
    shared && leadership
      ? {
          self: cfg.state!.replicaId,
          list: () => (directory ? directory.list({ details: true }) : Promise.reject(new Error('this replica is not registered in Consul yet'))),
        }
      : undefined;
  const admin = buildAdmin({
    pipeline,
    cache,
    registry: xds.registry,
    metrics,
    logger,
    identities,
    traffic: telemetry.store,
    security: adminSecurity,
    status,
    sources: () => ({ sources: consul ? [consul.status()] : [] }),
    readiness: authz.readinessWith(() => {
      const mine = ratelimit.readiness();
      return mine.ready && consul ? consul.readiness() : mine;
    }),
    policyDir,
    replicas,
  });
  admin.get('/api/authz', async () => ({ ...authz.status(), ...authz.server.engine.status() }));
  admin.get('/api/ratelimit', async () => ratelimit.status());
  // Each replica publishes its proxies' status (what `status` prints of them) for the others to show.
  directory =
    shared && leadership
      ? new ReplicaDirectory(
          shared,
          leadership,
          { id: cfg.state!.replicaId, xds: `${cfg.xdsAddress}:${xdsPort}`, startedAt: new Date().toISOString() },
          () => publishedProxies(xds.registry, (f) => relativeToPolicyDir(policyDir, f)),
          logger,
        )
      : undefined;
  await directory?.start();
  // CA rotation (--state consul): the leader carries out the operator's requests; every replica
  // follows the shared CA record, pushes the trust bundle it holds and re-issues its certificates
  // when the signing root changes (src/ca/rotation.ts, docs/ha.md).
  const xdsCaFile = path.join(path.resolve(cfg.dataDir), XDS_CA_FILE);
  const rotationLeader =
    shared && leadership ? new RotationLeader(shared, { isLeader: () => leadership.isLeader, trustDomain: BUILTIN_DEFAULTS.trustDomain, logger }) : undefined;
  rotationLeader?.start();
  leadership?.on('change', (leading) => leading && rotationLeader?.kick());
  const caFollower = shared
    ? new CaFollower(shared, ca, {
        replicaId: cfg.state!.replicaId,
        logger,
        onChange: async (what) => {
          const work: Promise<unknown>[] = [];
          if (what.bundle) {
            // What `bootstrap` on this host writes for new proxies: every root trusted now.
            if (xdsCert?.source === 'mesh-ca')
              await writeDataFile(xdsCaFile, ca.trustBundlePem, 0o644, ErrorCode.CA).catch((e: unknown) =>
                logger.warn({ err: (e as Error).message }, 'cannot rewrite the xDS CA file for bootstraps'),
              );
            // Twice: the first may join a compile that began before the change; the second is after it.
            // Then a pause: the server fans a change out to its streams in slices, and this replica's
            // report (which the leader's switch waits on) should count the proxies sent it as pending.
            work.push(
              pipeline
                .reload()
                .then(() => pipeline.reload())
                .then(() => new Promise((r) => setTimeout(r, FANOUT_SETTLE_MS))),
            );
          }
          if (what.signing || what.chain) work.push(xdsCert?.reissue() ?? Promise.resolve());
          if (what.signing)
            void identities
              .reissueAll(CERT_REISSUE_SPREAD_MS)
              .then((n) => logger.info({ certificates: n }, 'live workload certificates re-issued by the new signing root'));
          await Promise.all(work);
        },
        counts: () => {
          const signing = ca.certificate.subject;
          const live = identities.list();
          const pendingProxies = xds.registry.all().filter((p) => {
            const t = p.types.get(TypeUrl.Secret);
            return t?.sent !== undefined && t.acked?.version !== t.sent.version;
          }).length;
          return {
            certificates: live.length,
            oldCertificates: live.filter((c) => c.issuer !== signing).length,
            serverOld: xdsCert?.signedByOtherThan(ca) ?? false,
            pendingProxies,
          };
        },
      })
    : undefined;
  caFollower?.start();
  admin.get('/api/replicas', async (_req, reply) => {
    if (!directory) return { state: 'file', replicas: [] };
    try {
      return { state: 'consul', ...(await directory.list()), freshness: freshnessStatus() };
    } catch (e) {
      return reply.code(503).send({ state: 'consul', error: (e as Error).message, freshness: freshnessStatus() });
    }
  });
  await admin.listen({ host: cfg.adminAddress, port: cfg.adminPort });
  const adminPort = (admin.server.address() as { port: number }).port;
  logger.info(
    {
      xds: `${cfg.xdsAddress}:${xdsPort}`,
      xdsTls: xdsCert ? xdsCert.source : 'off (--xds-insecure)',
      admin: `http://${cfg.adminAddress}:${adminPort}`,
      policies: policyDir,
    },
    'signalbox serving',
  );
  return {
    xdsPort,
    adminPort,
    get authzPort() {
      return authz.port;
    },
    get ratelimitPort() {
      return ratelimit.port;
    },
    pipeline,
    xds,
    logger,
    adminRoutes: () => registeredRoutes(admin),
    stop: async () => {
      await watcher.close();
      await consul?.stop();
      await admin.close();
      await xds.close();
      xdsCert?.stop();
      tokens.close();
      clearInterval(pruneTimer);
      directory?.stop();
      freshness?.stop();
      rotationLeader?.stop();
      caFollower?.stop();
      await leadership?.stop();
      shared?.close();
      clearTimeout(keysTimer);
      await authz.close();
      await ratelimit.close();
      telemetry.stop();
      identities.stop();
      await tracing?.stop();
    },
  };
}

/** A replica's xDS server certificate kept in the shared state (its key sealed), reused by its next start while valid. */
function storedServerCert(shared: SharedState, name: string): StoredServerCert {
  return {
    load: async () => {
      const r = await shared.read(name);
      const c = r?.data;
      return typeof c?.certificate === 'string' && typeof c.privateKey === 'string'
        ? { certificatePem: c.certificate, privateKeyPem: c.privateKey }
        : undefined;
    },
    save: async (c) => {
      await shared.update(name, () => ({ certificate: c.certificatePem, privateKey: c.privateKeyPem }), ['privateKey']);
    },
  };
}
