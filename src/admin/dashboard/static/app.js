// Signalbox dashboard: plain browser JavaScript, no build step. Reads the admin API; live updates
// over Server-Sent Events (/api/events). Every value from the server is inserted as text, never
// as HTML.

const $ = (id) => document.getElementById(id);

/** Creates an element with attributes and children (strings become text nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const fmtRate = (v) => (v === undefined ? '–' : v >= 100 ? v.toFixed(0) : v.toFixed(1));
const fmtMs = (v) => (v === undefined ? '–' : v >= 100 ? v.toFixed(0) : v.toFixed(1));
const fmtInt = (v) => (v === undefined ? '–' : String(Math.round(v)));

function until(iso) {
  if (!iso) return '–';
  const sec = (Date.parse(iso) - Date.now()) / 1000;
  if (sec < 0) return 'expired';
  if (sec < 120) return `${Math.round(sec)} s`;
  if (sec < 7200) return `${Math.round(sec / 60)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} d`;
}

function spark(points, width = 90, height = 18) {
  const svg = s('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, 'aria-hidden': 'true' });
  if (!points || points.length === 0) return svg;
  const max = Math.max(1, ...points);
  const step = width / Math.max(1, points.length - 1);
  const coords = points.map((p, i) => `${(i * step).toFixed(1)},${(height - 1 - (p / max) * (height - 2)).toFixed(1)}`).join(' ');
  svg.append(s('polyline', { points: coords }));
  return svg;
}

/** A numeric cell carrying its raw value (for tests and copy/paste) and a formatted text. */
function num(field, value, fmt = fmtInt, cls) {
  return h('td', { 'data-field': field, 'data-value': value === undefined ? '' : value, class: cls, text: fmt(value) });
}

// ---------------------------------------------------------------------------------------------
// Summary cards and mesh map

let lastSummary;
let lastTraffic;

function renderSummary(sum) {
  lastSummary = sum;
  const st = sum.proxies.states;
  $('card-proxies').textContent = String(sum.proxies.total);
  $('card-proxy-states').replaceChildren(
    h('span', { class: 'state-SYNCED', text: `${st.SYNCED} synced` }),
    ' · ',
    h('span', { class: 'state-PENDING', text: `${st.PENDING} pending` }),
    ' · ',
    h('span', { class: 'state-NACKED', text: `${st.NACKED} NACKed` }),
  );
  // Valid is not enough: green only when the newest configuration is live (SYNCED) on every proxy.
  const cfg = sum.config;
  $('card-config').textContent = cfg.headline ?? (cfg.valid ? 'valid' : `${cfg.errors} error(s)`);
  const cfgState = !cfg.valid || cfg.notLive?.NACKED ? 'NACKED' : cfg.notLive?.PENDING ? 'PENDING' : 'SYNCED';
  $('card-config').className = `value state-${cfgState}`;
  $('card-config').dataset.live = cfg.live ? 'true' : 'false';
  renderConfigSub();
  $('card-cert').textContent = until(sum.certificates.nearestExpiry);
  $('card-cert-sub').textContent = `${sum.certificates.count} instance certificates`;
  if (sum.revision !== proxyRevision) {
    proxyRevision = sum.revision;
    scheduleProxies();
  }
  if (`${sum.config.errors}/${sum.config.warnings}` !== lastErrorCount) {
    lastErrorCount = `${sum.config.errors}/${sum.config.warnings}`;
    loadErrors();
    loadCerts();
  }
  // Each proxy instance has its own certificate: the list moves as instances come, go and renew.
  const certSig = `${sum.certificates.count}/${sum.certificates.nearestExpiry}`;
  if (certSig !== lastCertSig) {
    lastCertSig = certSig;
    loadCerts();
  }
  renderMap();
}

// /api/status's config part: it carries servingLastGood while the policy directory is invalid and
// proxies get an older configuration (kept, or restored from disk at start), which the card says.
let lastConfigStatus;

function renderConfigSub() {
  const sub = $('card-config-sub');
  const config = lastSummary?.config;
  const kept = lastConfigStatus?.servingLastGood && config && !config.valid ? lastConfigStatus : undefined;
  sub.dataset.servingLastGood = kept ? 'true' : 'false';
  if (kept) {
    const applied = kept.appliedAt ? new Date(kept.appliedAt).toLocaleString() : 'earlier';
    sub.textContent = `serving the last good configuration (applied ${applied}${kept.restoredFrom ? ', restored at start' : ''})`;
    sub.style.color = 'var(--warn)'; // (.card .sub is muted; this line must not be)
  } else {
    sub.textContent = config?.lastAppliedAt ? `applied ${new Date(config.lastAppliedAt).toLocaleTimeString()}` : 'nothing applied yet';
    sub.style.color = '';
  }
}

function renderTraffic(t) {
  lastTraffic = t;
  let rps = 0;
  let req = 0;
  let errors = 0;
  for (const e of t.edges) if (e.from === 'clients') rps += e.rps;
  for (const svc of t.services) {
    req += svc.window.requests;
    errors += svc.window.c5xx;
  }
  $('card-rps').textContent = fmtRate(rps);
  $('card-errors').textContent = req ? `${((100 * errors) / req).toFixed(2)}% 5xx over 60 s` : 'no traffic in the last 60 s';
  renderServices(t.services);
  renderRoutes(t);
  renderMap();
}

function renderMap() {
  const box = $('map');
  const sum = lastSummary;
  if (!sum) return;
  const edges = (lastTraffic?.edges ?? []).filter((e) => e.to);
  const nodes = new Map();
  const add = (id, kind, label, sub, nacked) => {
    if (!nodes.has(id)) nodes.set(id, { id, kind, label, sub, nacked, col: kind === 'clients' ? 0 : kind === 'gateway' ? 1 : 2 });
    return nodes.get(id);
  };
  if (edges.some((e) => e.from === 'clients')) add('clients', 'clients', 'clients', '');
  for (const g of sum.map.gateways) add(`gateway/${g.name}`, 'gateway', g.name, `gateway · ${g.proxies} proxies`, g.nacked > 0);
  for (const svc of sum.map.services) add(`service/${svc.name}`, 'service', svc.name, svc.sidecars ? `${svc.sidecars} sidecars` : 'no sidecar', svc.nacked > 0);
  for (const e of edges) {
    for (const id of [e.from, e.to]) {
      if (nodes.has(id)) continue;
      const [kind, name] = id.split('/');
      add(id, kind === 'gateway' ? 'gateway' : kind === 'clients' ? 'clients' : 'service', name ?? id, '');
    }
  }
  // Layered layout: a service called from column c sits at column c + 1 (cycles stop growing).
  for (let pass = 0; pass < 6; pass++) {
    for (const e of edges) {
      const a = nodes.get(e.from);
      const b = nodes.get(e.to);
      if (a && b && b.kind === 'service' && b.col <= a.col && a.col < 8) b.col = a.col + 1;
    }
  }
  const cols = new Map();
  for (const n of nodes.values()) {
    if (!cols.has(n.col)) cols.set(n.col, []);
    cols.get(n.col).push(n);
  }
  const W = 150,
    H = 40,
    GX = 110,
    GY = 18,
    PAD = 20;
  let maxRows = 1;
  const colKeys = [...cols.keys()].sort((a, b) => a - b);
  colKeys.forEach((c, ci) => {
    const list = cols.get(c).sort((a, b) => (a.label < b.label ? -1 : 1));
    maxRows = Math.max(maxRows, list.length);
    list.forEach((n, i) => {
      n.x = PAD + ci * (W + GX);
      n.y = PAD + i * (H + GY);
    });
  });
  const width = PAD * 2 + colKeys.length * (W + GX) - GX;
  const height = PAD * 2 + maxRows * (H + GY) + 30;
  const svg = s('svg', { width: Math.max(width, 300), height, role: 'img', 'aria-label': 'mesh map' });
  const defs = s('defs');
  const marker = s('marker', {
    id: 'arrow',
    viewBox: '0 0 10 10',
    refX: 9,
    refY: 5,
    markerWidth: 9,
    markerHeight: 9,
    markerUnits: 'userSpaceOnUse',
    orient: 'auto-start-reverse',
  });
  marker.append(s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#90a4c0' }));
  defs.append(marker);
  svg.append(defs);
  for (const e of edges) {
    const a = nodes.get(e.from);
    const b = nodes.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + W,
      y1 = a.y + H / 2,
      x2 = b.x,
      y2 = b.y + H / 2;
    let d;
    if (x2 > x1) d = `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2} ${y2}`;
    else d = `M ${a.x + W / 2} ${a.y + H} C ${a.x + W / 2} ${a.y + H + 40}, ${b.x + W / 2} ${b.y + H + 40}, ${b.x + W / 2} ${b.y + H}`;
    const width = Math.min(6, 1 + Math.log10(1 + e.rps) * 2);
    svg.append(
      s('path', {
        d,
        class: e.errorRate > 0.01 ? 'edge errors' : 'edge',
        'stroke-width': width.toFixed(1),
        'marker-end': 'url(#arrow)',
        'data-edge': `${e.from}>${e.to}`,
      }),
    );
    const mx = x2 > x1 ? (x1 + x2) / 2 : (a.x + b.x + W) / 2;
    const my = x2 > x1 ? (y1 + y2) / 2 - 4 : Math.max(a.y, b.y) + H + 34;
    const label = `${fmtRate(e.rps)}/s${e.errorRate > 0 ? ` · ${(e.errorRate * 100).toFixed(1)}% err` : ''}`;
    svg.append(s('text', { x: mx, y: my, class: 'edge-label', 'text-anchor': 'middle' }, label));
  }
  for (const n of nodes.values()) {
    const g = s('g', { class: `node ${n.kind}${n.nacked ? ' nacked' : ''}`, 'data-node': n.id, transform: `translate(${n.x},${n.y})` });
    g.append(s('rect', { width: W, height: H, rx: 6 }));
    g.append(s('text', { x: 10, y: 17 }, n.label));
    if (n.sub) g.append(s('text', { x: 10, y: 32, class: 'sub' }, n.sub + (n.nacked ? ' · NACK' : '')));
    svg.append(g);
  }
  if (nodes.size === 0) box.replaceChildren(h('p', { class: 'muted', text: 'No gateways or services yet.' }));
  else box.replaceChildren(svg);
}

// ---------------------------------------------------------------------------------------------
// Services and routes

function counterCells(t) {
  return [
    num('requests', t.totals.requests),
    num('c2xx', t.totals.c2xx),
    num('c4xx', t.totals.c4xx, fmtInt, t.totals.c4xx ? 'warn' : undefined),
    num('c5xx', t.totals.c5xx, fmtInt, t.totals.c5xx ? 'bad' : undefined),
    num('retries', t.totals.retries),
    num('rateLimited', t.totals.rateLimited),
    num('authzDenied', t.totals.authzDenied),
    num('overflow', t.totals.overflow, fmtInt, t.totals.overflow ? 'bad' : undefined),
    num('resets', t.totals.resets, fmtInt, t.totals.resets ? 'bad' : undefined),
  ];
}

function renderServices(list) {
  const body = $('services').tBodies[0];
  if (list.length === 0) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 15, text: 'No traffic reported yet.' })));
    return;
  }
  body.replaceChildren(
    ...list.map((svc) =>
      h(
        'tr',
        { 'data-service': svc.key },
        h('td', { class: 'text', text: svc.key }),
        num('rps', svc.rps, fmtRate),
        h('td', {}, spark(svc.spark)),
        num('p50', svc.p50, fmtMs),
        num('p90', svc.p90, fmtMs),
        num('p99', svc.p99, fmtMs),
        ...counterCells(svc),
      ),
    ),
  );
}

function renderRoutes(t) {
  const filter = $('route-filter').value.trim().toLowerCase();
  const list = filter ? t.routes.filter((r) => r.key.toLowerCase().includes(filter) || (r.service ?? '').includes(filter)) : t.routes;
  $('routes-note').textContent = t.routesTotal > t.routesShown ? `the ${t.routesShown} busiest of ${t.routesTotal} routes` : '';
  const body = $('routes').tBodies[0];
  if (list.length === 0) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 17, text: filter ? 'No route matches.' : 'No traffic reported yet.' })));
    return;
  }
  body.replaceChildren(
    ...list.map((r) =>
      h(
        'tr',
        { 'data-route': r.key, title: r.file ? `from ${r.file}` : undefined },
        h('td', { class: 'text', text: r.httpRoute }),
        h('td', { class: 'text', text: r.rule }),
        h('td', { class: 'text', text: r.match }),
        h('td', { class: 'text', text: r.service ?? '' }),
        num('rps', r.rps, fmtRate),
        h('td', {}, spark(r.spark)),
        num('p50', r.p50, fmtMs),
        num('p99', r.p99, fmtMs),
        ...counterCells(r),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Proxies: searched and paged on the server

const proxyQuery = { q: '', state: '', role: '', page: 1, size: 50 };
let proxyRevision;
let proxyTimer;
let proxyFetching = false;

function scheduleProxies(delay = 150) {
  clearTimeout(proxyTimer);
  proxyTimer = setTimeout(loadProxies, delay);
}

async function loadProxies() {
  if (proxyFetching) return scheduleProxies(300);
  proxyFetching = true;
  try {
    const params = new URLSearchParams(Object.entries(proxyQuery).map(([k, v]) => [k, String(v)]));
    const res = await fetch(`/api/dashboard/proxies?${params}`);
    const data = await res.json();
    proxyQuery.page = data.page;
    renderProxies(data);
  } catch {
    /* the next live update retries */
  } finally {
    proxyFetching = false;
  }
}

function versionsCell(types) {
  const td = h('td', { class: 'versions' });
  for (const [t, v] of Object.entries(types)) {
    const stale = v.sent !== v.acked;
    td.append(
      h(
        'div',
        { class: stale ? 'stale' : undefined, title: stale ? 'sent, not ACKed' : 'ACKed' },
        `${t} ${(v.sent ?? '–').slice(0, 8)} / ${(v.acked ?? '–').slice(0, 8)}`,
      ),
    );
  }
  return td;
}

function renderProxies(data) {
  // With --state consul the list holds every replica's proxies, each naming the replica it is on.
  const withReplica = data.replica !== undefined;
  $('proxies-replica').hidden = !withReplica;
  $('page-info').textContent =
    `${data.total} proxies · page ${data.page} of ${data.pages}${data.replicasError ? " · only this replica's (Consul cannot be read)" : ''}`;
  $('prev').disabled = data.page <= 1;
  $('next').disabled = data.page >= data.pages;
  const body = $('proxies').tBodies[0];
  if (data.proxies.length === 0) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: withReplica ? 8 : 7, text: 'No proxy matches.' })));
    return;
  }
  body.replaceChildren(
    ...data.proxies.map((p) => {
      const state = h('td', { class: 'text', 'data-field': 'state' }, h('span', { class: `state state-${p.state}`, text: p.state }));
      if (p.nack) {
        state.append(
          h(
            'div',
            { class: 'nack', 'data-field': 'nack' },
            h('div', { text: `${p.nack.type} rejected: ${p.nack.message}` }),
            h('div', {}, 'from ', h('span', { class: 'files', 'data-field': 'nack-files', text: p.nack.sources.join(', ') || '(no policy file)' })),
          ),
        );
        state.classList.add('wrap');
      }
      const cert = p.certificate?.notAfter;
      return h(
        'tr',
        { 'data-proxy': p.id },
        h('td', { class: 'text' }, h('strong', { text: p.id }), h('div', { class: 'muted small', text: `${p.group} · ${p.protocol}` })),
        h('td', { class: 'text', text: p.role }),
        withReplica
          ? h('td', {
              class: 'text',
              'data-field': 'replica',
              title: p.replica === data.replica ? 'the replica serving this page' : p.publishedAt ? `as it published at ${p.publishedAt}` : undefined,
              text: p.replica ?? '?',
            })
          : undefined,
        state,
        versionsCell(p.types),
        num('rps', p.traffic?.rps, fmtRate),
        h('td', {}, spark(p.traffic?.spark)),
        h('td', {
          'data-field': 'cert',
          title: p.certificate?.identity,
          class: cert && Date.parse(cert) - Date.now() < 3600_000 ? 'warn' : undefined,
          text: cert ? until(cert) : p.certificate ? 'not issued' : '–',
        }),
      );
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Replicas (--state consul): from Consul, refreshed with the banner; hidden with one replica

async function loadReplicas() {
  try {
    const res = await fetch('/api/dashboard/replicas');
    if (!res.ok) return;
    renderReplicas(await res.json());
  } catch {
    /* retried on the next refresh */
  }
}

function renderReplicas(data) {
  const section = $('replicas');
  section.hidden = data.state !== 'consul';
  if (section.hidden) return;
  $('replicas-self').textContent = data.self ?? '';
  const error = $('replicas-error');
  error.hidden = !data.error;
  error.textContent = data.error ?? '';
  const body = $('replicas-table').tBodies[0];
  if (!data.replicas?.length) {
    body.replaceChildren(
      h('tr', { class: 'empty' }, h('td', { colspan: 5, text: data.error ? 'Not known: Consul cannot be read.' : 'No replica registered.' })),
    );
    return;
  }
  body.replaceChildren(
    ...data.replicas.map((r) =>
      h(
        'tr',
        { 'data-replica': r.id, class: r.self ? 'self' : undefined },
        h('td', { class: 'text' }, h('strong', { text: r.id }), r.self ? h('span', { class: 'muted small', text: ' (this page)' }) : undefined),
        h('td', { class: 'text mono', 'data-field': 'xds', text: r.xds }),
        h('td', {
          class: r.alive ? 'text alive' : 'text bad',
          'data-field': 'alive',
          'data-value': r.alive ? 'true' : 'false',
          text: r.alive ? 'alive' : 'down',
        }),
        h('td', { class: 'text', 'data-field': 'leader', 'data-value': r.leader ? 'true' : 'false', text: r.leader ? 'leader' : '' }),
        num('proxies', r.proxies),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Certificates and validation errors

let lastErrorCount;
let lastCertSig;

async function loadCerts() {
  try {
    const data = await (await fetch('/api/certificates')).json();
    const body = $('certs').tBodies[0];
    if (!data.certificates.length) {
      body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 4, text: 'No workload certificates issued.' })));
      return;
    }
    body.replaceChildren(
      ...data.certificates.map((c) =>
        h(
          'tr',
          { 'data-identity': c.identity },
          h('td', { class: 'text', text: c.identity }),
          h('td', { class: 'text versions', text: c.serial }),
          h('td', { text: new Date(c.notAfter).toLocaleString() }),
          h('td', { class: Date.parse(c.notAfter) - Date.now() < 3600_000 ? 'warn' : undefined, text: until(c.notAfter) }),
        ),
      ),
    );
  } catch {
    /* retried on the next change */
  }
}

async function loadErrors() {
  try {
    const data = await (await fetch('/api/errors')).json();
    const list = $('errors');
    // Warnings (documents skipped as not Signalbox's) follow the errors; they never make it invalid.
    const warnings = (data.warnings ?? []).map((w) => h('li', { class: 'warning', text: `warning: ${w.text}` }));
    if (data.errors.length === 0) list.replaceChildren(h('li', { class: 'none', text: 'The policy directory is valid.' }), ...warnings);
    else list.replaceChildren(...data.errors.map((e) => h('li', { text: e.text })), ...warnings);
  } catch {
    /* retried on the next change */
  }
}

// ---------------------------------------------------------------------------------------------
// Warnings (/api/status): a banner while the control plane runs with a weakened posture or serves
// an older configuration than the policy directory's

let lastWarnings = '';

function renderWarnings(warnings) {
  const key = JSON.stringify(warnings);
  if (key === lastWarnings) return;
  lastWarnings = key;
  const box = $('warnings');
  box.hidden = warnings.length === 0;
  box.replaceChildren(
    h('strong', { text: warnings.length === 1 ? 'Warning' : `${warnings.length} warnings` }),
    h('ul', {}, ...warnings.map((w) => h('li', { 'data-warning': '', text: w }))),
  );
}

// ---------------------------------------------------------------------------------------------
// Global rate limits (/api/status's ratelimit part, the same as /api/ratelimit): Redis health,
// each policy's decisions, and what its failureMode does while Redis is down

const LIMIT_UNIT = { second: 's', minute: 'min', hour: 'h', day: 'day' };

/** What a policy's requests get right now: counted, or its failureMode's answer while Redis is down. */
function inEffect(redisUp, failureMode) {
  if (redisUp) return { text: 'counted in Redis', cls: undefined };
  return failureMode === 'deny'
    ? { text: 'Redis down: refused with 503 (failureMode deny)', cls: 'bad' }
    : { text: 'Redis down: let through uncounted (failureMode allow)', cls: 'warn' };
}

function renderRateLimit(rl) {
  const section = $('ratelimit');
  // Shown once the service exists: a global limit in the policies, or a port given to serve.
  const show = !!rl && (rl.listening || (rl.policies?.length ?? 0) > 0);
  section.hidden = !show;
  if (!show) return;
  const redis = rl.redis ?? {};
  const state = $('rl-redis-state');
  state.textContent = redis.up ? 'up' : 'down';
  state.className = `state state-${redis.up ? 'up' : 'down'}`;
  state.dataset.up = redis.up ? 'true' : 'false';
  $('rl-redis-url').textContent = `${redis.url ?? ''}${redis.tls ? ' (TLS)' : ''}`;
  const lat = redis.latencyMs;
  const latency = $('rl-redis-latency');
  latency.textContent = lat ? `p50 ${fmtMs(lat.p50)} ms · p99 ${fmtMs(lat.p99)} ms (last ${lat.samples} commands)` : 'no command yet';
  latency.dataset.p99 = lat ? String(lat.p99) : '';
  $('rl-redis-commands').textContent = fmtInt(redis.commands);
  $('rl-redis-commands').dataset.value = String(redis.commands ?? '');
  const errors = $('rl-redis-errors');
  const reasons = Object.entries(redis.errorsByReason ?? {})
    .map(([k, v]) => `${v} ${k}`)
    .join(', ');
  errors.textContent = redis.errors ? `${redis.errors} (${reasons})` : '0';
  errors.dataset.value = String(redis.errors ?? 0);
  errors.className = redis.errors ? 'warn' : '';
  $('rl-service').textContent = rl.listening
    ? `port ${rl.port}${rl.tls ? ', mTLS' : ', plain text'} · ${rl.calls} calls · proxies use ${rl.endpointForProxies?.address ?? '?'}:${rl.endpointForProxies?.port ?? '?'}`
    : `not listening${rl.error ? `: ${rl.error}` : ''}`;
  const lastError = $('rl-redis-error');
  lastError.hidden = redis.up || !redis.lastError;
  lastError.textContent =
    !redis.up && redis.lastError
      ? `last Redis error${redis.lastErrorAt ? ` (${new Date(redis.lastErrorAt).toLocaleTimeString()})` : ''}: ${redis.lastError}`
      : '';
  const body = $('rl-policies').tBodies[0];
  const policies = rl.policies ?? [];
  if (policies.length === 0) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8, text: 'No RateLimitPolicy has global limits.' })));
    return;
  }
  body.replaceChildren(
    ...policies.map((p) => {
      const effect = inEffect(redis.up, p.failureMode);
      const d = p.decisions ?? {};
      const limits = (p.limits ?? []).map((l) => `${l.requests}/${LIMIT_UNIT[l.per] ?? l.per}${l.by && l.by !== 'none' ? ` by ${l.by}` : ''}`).join(', ');
      return h(
        'tr',
        { 'data-policy': p.policy },
        h('td', { class: 'text', text: p.policy }),
        h('td', { class: 'text', text: limits }),
        h('td', { class: 'text', 'data-field': 'failureMode', text: p.failureMode }),
        h('td', { class: `text${effect.cls ? ` ${effect.cls}` : ''}`, 'data-field': 'inEffect', text: effect.text }),
        num('allowed', d.allowed),
        num('limited', d.limited, fmtInt, d.limited ? 'warn' : undefined),
        num('failureAllowed', d.failureAllowed, fmtInt, d.failureAllowed ? 'warn' : undefined),
        num('failureDenied', d.failureDenied, fmtInt, d.failureDenied ? 'bad' : undefined),
      );
    }),
  );
}

async function loadStatus() {
  try {
    const res = await fetch('/api/status');
    if (res.status === 401) {
      renderWarnings(['The admin API requires a bearer token (--admin-token-file): reach this dashboard through a proxy that adds it.']);
      return;
    }
    const data = await res.json();
    renderWarnings(Array.isArray(data.warnings) ? data.warnings.map(String) : []);
    renderRateLimit(data.ratelimit);
    lastConfigStatus = data.config;
    if (lastSummary) renderConfigSub();
  } catch {
    /* retried on the next refresh */
  }
}

// ---------------------------------------------------------------------------------------------
// Live updates

function connect() {
  const live = $('live');
  const es = new EventSource('/api/events');
  es.addEventListener('open', () => {
    live.dataset.state = 'live';
    live.textContent = 'live';
  });
  es.addEventListener('error', () => {
    live.dataset.state = 'reconnecting';
    live.textContent = 'reconnecting…';
  });
  es.addEventListener('summary', (ev) => renderSummary(JSON.parse(ev.data)));
  es.addEventListener('traffic', (ev) => {
    renderTraffic(JSON.parse(ev.data));
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  });
  es.addEventListener('config', () => {
    loadErrors();
    loadCerts();
    loadStatus();
    scheduleProxies();
  });
}

function init() {
  let searchTimer;
  $('proxy-search').addEventListener('input', (ev) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      proxyQuery.q = ev.target.value.trim();
      proxyQuery.page = 1;
      loadProxies();
    }, 200);
  });
  $('proxy-state').addEventListener('change', (ev) => {
    proxyQuery.state = ev.target.value;
    proxyQuery.page = 1;
    loadProxies();
  });
  $('proxy-role').addEventListener('change', (ev) => {
    proxyQuery.role = ev.target.value;
    proxyQuery.page = 1;
    loadProxies();
  });
  $('prev').addEventListener('click', () => {
    proxyQuery.page = Math.max(1, proxyQuery.page - 1);
    loadProxies();
  });
  $('next').addEventListener('click', () => {
    proxyQuery.page += 1;
    loadProxies();
  });
  $('route-filter').addEventListener('input', () => lastTraffic && renderRoutes(lastTraffic));
  // Per-proxy traffic and versions move even when no proxy changes state.
  setInterval(() => {
    if (document.visibilityState !== 'visible') return;
    loadProxies();
    loadStatus();
    loadReplicas();
  }, 5000);
  loadStatus();
  loadReplicas();
  loadProxies();
  loadCerts();
  loadErrors();
  connect();
}

init();
