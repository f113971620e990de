// The Prometheus series Signalbox exposes. Label values are bounded: roles, protocols, type
// short names and result words, never proxy ids, tokens or free text.
import client from 'prom-client';

export class Metrics {
  readonly registry = new client.Registry();
  readonly connectedProxies = new client.Gauge({
    name: 'signalbox_connected_proxies',
    help: 'xDS streams open now, by proxy role and protocol (sotw or delta).',
    labelNames: ['role', 'protocol'],
    registers: [this.registry],
  });
  readonly pushes = new client.Counter({
    name: 'signalbox_xds_pushes_total',
    help: 'xDS responses sent, by resource type.',
    labelNames: ['type', 'protocol'],
    registers: [this.registry],
  });
  readonly pushAck = new client.Histogram({
    name: 'signalbox_xds_push_ack_seconds',
    help: 'Time from sending an xDS response to its ACK.',
    labelNames: ['type'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly warmWait = new client.Histogram({
    name: 'signalbox_xds_warm_wait_seconds',
    help: 'Time a listener or route change was held back until the clusters it names were warm on the proxy (ACKed with their endpoints), by how the wait ended (warm, timeout, nack: the clusters were refused, closed).',
    labelNames: ['outcome'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly nacks = new client.Counter({
    name: 'signalbox_xds_nacks_total',
    help: 'xDS responses rejected by a proxy (NACK), by resource type.',
    labelNames: ['type'],
    registers: [this.registry],
  });
  readonly nacksRateLimited = new client.Counter({
    name: 'signalbox_xds_nacks_rate_limited_total',
    help: "NACKs past their stream's allowance of searched NACKs per second: counted and recorded, not attributed, by resource type.",
    labelNames: ['type'],
    registers: [this.registry],
  });
  readonly requestedGroups = new client.Gauge({
    name: 'signalbox_requested_groups',
    help: 'Sidecar groups (service and port shapes) compiled because proxies asked for them, idle ones included; capped (a proxy of a new shape past the cap is refused: signalbox_xds_stream_errors_total{reason="group-limit"}).',
    registers: [this.registry],
  });
  readonly requestedGroupsDropped = new client.Counter({
    name: 'signalbox_requested_groups_dropped_total',
    help: 'Requested proxy groups no longer compiled, by reason (idle: no proxy for the grace period; evicted: an idle group made room for a new shape at the cap).',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly streamErrors = new client.Counter({
    name: 'signalbox_xds_stream_errors_total',
    help: 'xDS streams refused or closed for a protocol error, by reason.',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly compileSeconds = new client.Histogram({
    name: 'signalbox_compile_duration_seconds',
    help: 'Time to compile the policy directory into Envoy resources.',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly policyErrors = new client.Gauge({
    name: 'signalbox_policy_errors',
    help: 'Validation errors in the policy directory now (0 when the last load was valid).',
    registers: [this.registry],
  });
  readonly policyWarnings = new client.Gauge({
    name: 'signalbox_policy_warnings',
    help: 'Documents in the policy directory skipped because they are not Signalbox documents (see /api/errors).',
    registers: [this.registry],
  });
  readonly reloads = new client.Counter({
    name: 'signalbox_policy_reloads_total',
    help: 'Policy directory loads, by result (applied, unchanged, rejected).',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly servingLastGood = new client.Gauge({
    name: 'signalbox_serving_last_good',
    help: '1 while the policy directory is invalid and proxies get the last good configuration instead (kept from an earlier load, or restored from the data directory at start); 0 otherwise.',
    registers: [this.registry],
  });
  readonly configApplied = new client.Gauge({
    name: 'signalbox_config_last_applied_timestamp_seconds',
    help: 'When a valid policy configuration was last applied.',
    registers: [this.registry],
  });
  readonly endpointUpdates = new client.Counter({
    name: 'signalbox_endpoint_updates_total',
    help: 'Endpoint set changes applied, by source.',
    labelNames: ['source'],
    registers: [this.registry],
  });

  readonly certificates = new client.Counter({
    name: 'signalbox_certificates_total',
    help: 'Workload certificates issued by the mesh CA, by kind (issued, renewed).',
    labelNames: ['kind'],
    registers: [this.registry],
  });

  /** Exposes the seconds to the nearest certificate expiry, read at scrape time. */
  trackCertificates(nearest: () => number | undefined): void {
    new client.Gauge({
      name: 'signalbox_certificate_expiry_seconds',
      help: 'Seconds until the nearest workload certificate expires.',
      registers: [this.registry],
      collect() {
        const v = nearest();
        if (v !== undefined) this.set(v);
      },
    });
  }

  /** --state consul: how long Consul has been unreadable, and whether certificate issuance is stopped for it. */
  trackSharedState(read: () => { unreadableSeconds: number; stale: boolean }): void {
    new client.Gauge({
      name: 'signalbox_state_unreadable_seconds',
      help: 'Seconds the shared state in Consul has been unreadable (0 while it answers).',
      registers: [this.registry],
      collect() {
        this.set(read().unreadableSeconds);
      },
    });
    new client.Gauge({
      name: 'signalbox_certificate_issuance_stopped',
      help: '1 while workload certificates are neither issued nor renewed because Consul has been unreadable longer than --state-stale-max, else 0.',
      registers: [this.registry],
      collect() {
        this.set(read().stale ? 1 : 0);
      },
    });
  }

  constructor() {
    client.collectDefaultMetrics({ register: this.registry, prefix: 'signalbox_process_' });
  }
}
