// Signalbox JWT fast path as an Envoy dynamic module (the compiled form of the Lua script in
// src/xds/translator/filters/jwt-fast.ts; the behaviour is the same, see that file). The protocol
// it speaks, version 1, is specified in docs/jwt-fast-path-protocol.md and held by test/contract/.
//
// The ext_authz service makes every decision. This filter only remembers the allows the service
// gave for a token and repeats them while they hold:
//   - Each route's per-route config names its check: "<policy, URL-encoded> <header> <version>",
//     or "skip" for a route that has no fast-path check. A named route with no per-route config
//     gets 503: the filter fails closed rather than guess (a request no route matches is left to
//     Envoy's router, which answers 404).
//   - A request whose token header holds exactly a value allowed before under that version, in
//     the second range that allow holds for, gets the same allow: headers set and removed, passed.
//   - Anything else is asked of the service (POST <check path><policy> on the authz cluster); its
//     answer is applied (allow: headers, remembered when it judged a token; deny: the reply as
//     written). No answer in time or an answer this cannot read: 503.
//   - Allows repeated from memory are counted per worker and policy and reported about once a
//     second (POST <report path>, body "<policy> <count>" lines, with an id the service uses to
//     count a report once even when it is sent again after being cut off).
// Everything here runs on Envoy's worker threads; each worker keeps its own memory (thread-local),
// so there is no locking. The per-route configs are made on the main thread and only read after.
//
// Envoy's side of the interface is declared in envoy_abi.h (Signalbox's own statement of the
// functions used, for each generation of Envoy's module ABI); the few calls whose shape differs
// between generations go through the sb_* shims below. Answers, route checks and the memory of
// allows are in jwt_core.c, which has no Envoy in it (unit-tested and fuzzed by check.sh).
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "envoy_abi.h"
#include "jwt_core.h"

#define CHECK_PATH "/signalbox.jwt/check/"
#define REPORT_PATH "/signalbox.jwt/report"
#define REPORT_ID_HEADER "x-signalbox-report-id"
#define AUTHORITY "signalbox-authz"
#define MAX_POLICIES 1024
#define MAX_POLICY_LEN 500

typedef struct {
  char* cluster;
  size_t cluster_len;
  uint64_t timeout_ms;
  int64_t max_seconds;
} filter_config;

typedef struct {
  char* name;
  size_t len;
  uint64_t count;
} policy_count;

typedef struct {
  sb_cache cache;
  policy_count policies[MAX_POLICIES];
  int n_policies;
  int64_t reported_at;
  int report_busy;      // a report callout is outstanding
  char* inflight;       // the report being delivered (kept until the service has it)
  size_t inflight_len;
  char inflight_id[48];
  uint64_t worker_id, seq;
} worker_state;

static __thread worker_state* W;

typedef struct {
  const filter_config* config;
  const sb_route_check* check;
  char* raw; // the token header's value, kept while the service is asked (owned)
  size_t raw_len;
  int has_raw;
  int waiting;
  int report_out;
  uint64_t check_id, report_id; // the callouts this stream started
} stream;

// ---------------------------------------------------------------- Envoy calls whose shape differs

#if SB_ABI_LAYOUT == SB_ABI_PTRLEN
// The module numbers its callouts itself (unique per stream).
#define CALLOUT_CHECK 1u
#define CALLOUT_REPORT 2u

static void sb_log_warn(const char* msg, size_t len) { envoy_dynamic_module_callback_log(SB_LOG_WARN, msg, len); }

static size_t sb_request_header(sb_envoy_filter f, const char* name, size_t name_len, size_t index, const char** v, size_t* vl) {
  *v = NULL;
  *vl = 0;
  return envoy_dynamic_module_callback_http_get_request_header(f, name, name_len, v, vl, index);
}

static void sb_set_request_header(sb_envoy_filter f, const sb_change* c) {
  envoy_dynamic_module_callback_http_set_request_header(f, c->name, c->name_len, c->value, c->value == NULL ? 0 : c->value_len);
}

static void sb_send(sb_envoy_filter f, unsigned status, const sb_header* h, size_t n, const char* body, size_t body_len) {
  envoy_dynamic_module_callback_http_send_response(f, status, h, n, body, body_len);
}

static int sb_callout(sb_envoy_filter f, uint32_t which, uint64_t* id, const filter_config* c, const sb_header* h, size_t n, const char* body,
                      size_t body_len) {
  *id = which;
  return envoy_dynamic_module_callback_http_filter_http_callout(f, which, c->cluster, c->cluster_len, h, n, body, body_len, c->timeout_ms) ==
         SB_CALLOUT_INIT_SUCCESS;
}

static int sb_has_route_name(sb_envoy_filter f) {
  const char* v = NULL;
  size_t vl = 0;
  return envoy_dynamic_module_callback_http_filter_get_attribute_string(f, SB_ATTRIBUTE_XDS_ROUTE_NAME, &v, &vl) && vl > 0;
}
#else
#define CALLOUT_CHECK 1u  // (only tells the two kinds apart here: Envoy numbers the callouts)
#define CALLOUT_REPORT 2u

static void sb_log_warn(const char* msg, size_t len) { envoy_dynamic_module_callback_log(SB_LOG_WARN, (sb_bytes){msg, len}); }

static size_t sb_request_header(sb_envoy_filter f, const char* name, size_t name_len, size_t index, const char** v, size_t* vl) {
  sb_bytes out = {NULL, 0};
  size_t count = 0;
  if (!envoy_dynamic_module_callback_http_get_header(f, SB_REQUEST_HEADERS, (sb_bytes){name, name_len}, &out, index, &count)) count = 0;
  *v = out.ptr;
  *vl = out.len;
  return count;
}

static void sb_set_request_header(sb_envoy_filter f, const sb_change* c) {
  // An empty value removes the header in this generation; so does a remove line.
  envoy_dynamic_module_callback_http_set_header(f, SB_REQUEST_HEADERS, (sb_bytes){c->name, c->name_len},
                                                (sb_bytes){c->value, c->value == NULL ? 0 : c->value_len});
}

static void sb_send(sb_envoy_filter f, unsigned status, const sb_header* h, size_t n, const char* body, size_t body_len) {
  envoy_dynamic_module_callback_http_send_response(f, status, h, n, (sb_bytes){body, body_len}, (sb_bytes){NULL, 0});
}

static int sb_callout(sb_envoy_filter f, uint32_t which, uint64_t* id, const filter_config* c, const sb_header* h, size_t n, const char* body,
                      size_t body_len) {
  (void)which;
  *id = 0;
  return envoy_dynamic_module_callback_http_filter_http_callout(f, id, (sb_bytes){c->cluster, c->cluster_len}, h, n, (sb_bytes){body, body_len},
                                                                c->timeout_ms) == SB_CALLOUT_INIT_SUCCESS;
}

static int sb_has_route_name(sb_envoy_filter f) {
  sb_bytes v = {NULL, 0};
  return envoy_dynamic_module_callback_http_filter_get_attribute_string(f, SB_ATTRIBUTE_XDS_ROUTE_NAME, &v) && v.len > 0;
}
#endif

const char* envoy_dynamic_module_on_program_init(void) { return SB_ABI_VERSION; }

// ---------------------------------------------------------------- configuration (main thread)

static sb_module_ptr config_new(const char* config, size_t config_len) {
  filter_config* c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  if (sb_read_filter_config(config, config_len, &c->cluster, &c->cluster_len, &c->timeout_ms, &c->max_seconds) != SB_OK) {
    free(c);
    return NULL; // Envoy refuses the filter configuration
  }
  return c;
}

static sb_module_ptr per_route_config_new(const char* config, size_t config_len) {
  sb_route_check* r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  if (sb_read_route_check(config, config_len, r) != SB_OK) {
    free(r);
    return NULL; // Envoy refuses the route configuration (shown as the proxy's rejected config)
  }
  return r;
}

#if SB_ABI_LAYOUT == SB_ABI_PTRLEN
sb_module_ptr envoy_dynamic_module_on_http_filter_config_new(sb_envoy_filter_config envoy_config, const char* name, size_t name_len,
                                                             const char* config, size_t config_len) {
  (void)envoy_config; (void)name; (void)name_len;
  return config_new(config, config_len);
}
sb_module_ptr envoy_dynamic_module_on_http_filter_per_route_config_new(const char* name, size_t name_len, const char* config, size_t config_len) {
  (void)name; (void)name_len;
  return per_route_config_new(config, config_len);
}
#else
sb_module_ptr envoy_dynamic_module_on_http_filter_config_new(sb_envoy_filter_config envoy_config, sb_bytes name, sb_bytes config) {
  (void)envoy_config; (void)name;
  return config_new(config.ptr, config.len);
}
sb_module_ptr envoy_dynamic_module_on_http_filter_per_route_config_new(sb_bytes name, sb_bytes config) {
  (void)name;
  return per_route_config_new(config.ptr, config.len);
}
#endif

void envoy_dynamic_module_on_http_filter_config_destroy(sb_module_ptr p) {
  filter_config* c = (filter_config*)p;
  if (c == NULL) return;
  free(c->cluster);
  free(c);
}

void envoy_dynamic_module_on_http_filter_per_route_config_destroy(sb_module_ptr p) {
  sb_route_check* r = (sb_route_check*)p;
  if (r == NULL) return;
  sb_route_check_free(r);
  free(r);
}

// ---------------------------------------------------------------- worker memory

static worker_state* worker(void) {
  if (W != NULL) return W;
  uint8_t seed[24];
  if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) return NULL; // no key, no memory: fail closed
  worker_state* w = calloc(1, sizeof *w);
  if (w == NULL) return NULL;
  if (sb_cache_init(&w->cache, 16384, seed) != SB_OK) {
    free(w);
    return NULL;
  }
  memcpy(&w->worker_id, seed + 16, sizeof w->worker_id);
  W = w;
  return W;
}

static int policy_index(worker_state* w, const char* name, size_t len) {
  for (int i = 0; i < w->n_policies; i++)
    if (w->policies[i].len == len && memcmp(w->policies[i].name, name, len) == 0) return i;
  if (w->n_policies >= MAX_POLICIES) return -1;
  char* copy = malloc(len + 1);
  if (copy == NULL) return -1;
  memcpy(copy, name, len);
  copy[len] = 0;
  w->policies[w->n_policies] = (policy_count){copy, len, 0};
  return w->n_policies++;
}

// ---------------------------------------------------------------- requests

sb_module_ptr envoy_dynamic_module_on_http_filter_new(sb_module_ptr config, sb_envoy_filter f) {
  (void)f;
  stream* s = calloc(1, sizeof *s);
  if (s != NULL) s->config = (const filter_config*)config;
  return s;
}

static void fail_closed(sb_envoy_filter f, const char* why) {
  char msg[160];
  int n = snprintf(msg, sizeof msg, "signalbox jwt check failed closed: %s", why);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof msg) n = (int)sizeof msg - 1;
  sb_log_warn(msg, (size_t)n);
  sb_send(f, 503, NULL, 0, NULL, 0);
}

static void apply(sb_envoy_filter f, const sb_allow* a) {
  for (size_t i = 0; i < a->n_changes; i++) sb_set_request_header(f, &a->changes[i]);
}

static void send_report(sb_envoy_filter f, stream* s, worker_state* w) {
  if (w->inflight == NULL) {
    size_t cap = 64, len = 0;
    for (int i = 0; i < w->n_policies; i++) cap += w->policies[i].len + 24; // name, space, 20 digits, newline
    char* body = malloc(cap);
    if (body == NULL) return;
    for (int i = 0; i < w->n_policies; i++) {
      if (w->policies[i].count == 0) continue;
      int n = snprintf(body + len, cap - len, "%s %llu\n", w->policies[i].name, (unsigned long long)w->policies[i].count);
      if (n < 0 || (size_t)n >= cap - len) break; // cannot happen (cap counts every line); never overrun
      len += (size_t)n;
      w->policies[i].count = 0;
    }
    if (len == 0) { free(body); return; }
    w->inflight = body;
    w->inflight_len = len;
    snprintf(w->inflight_id, sizeof w->inflight_id, "%016llx-%llu", (unsigned long long)w->worker_id, (unsigned long long)++w->seq);
  }
  sb_header h[4] = {
      {":method", 7, "POST", 4},
      {":path", 5, REPORT_PATH, sizeof REPORT_PATH - 1},
      {"host", 4, AUTHORITY, sizeof AUTHORITY - 1},
      {REPORT_ID_HEADER, sizeof REPORT_ID_HEADER - 1, w->inflight_id, strlen(w->inflight_id)},
  };
  if (sb_callout(f, CALLOUT_REPORT, &s->report_id, s->config, h, 4, w->inflight, w->inflight_len)) {
    w->report_busy = 1;
    s->report_out = 1;
  }
}

// The token header's value: with one value, Envoy's own bytes (valid until a header is changed);
// with several, joined with "," (as Envoy's ext_authz filter and the Lua script see them) into a
// copy the stream owns. Returns 0 when absent, -1 when out of memory.
static int read_header(sb_envoy_filter f, stream* s, const char* name, size_t name_len, const char** out, size_t* out_len) {
  const char* v = NULL;
  size_t vl = 0;
  size_t count = sb_request_header(f, name, name_len, 0, &v, &vl);
  if (count == 0 || v == NULL) return 0;
  if (count == 1) {
    *out = v;
    *out_len = vl;
    return 1;
  }
  size_t total = 0;
  for (size_t i = 0; i < count; i++) {
    if (sb_request_header(f, name, name_len, i, &v, &vl) == 0 || v == NULL) vl = 0;
    if (vl > SIZE_MAX / 2 - total) return -1;
    total += vl + 1;
  }
  char* joined = malloc(total);
  if (joined == NULL) return -1;
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    if (sb_request_header(f, name, name_len, i, &v, &vl) == 0 || v == NULL) vl = 0;
    if (at + vl + 1 > total) break; // the headers changed under us: never overrun
    if (i > 0) joined[at++] = ',';
    if (vl > 0) memcpy(joined + at, v, vl);
    at += vl;
  }
  joined[at < total ? at : total - 1] = 0;
  s->raw = joined;
  *out = joined;
  *out_len = at < total ? at : total - 1;
  return 1;
}

int envoy_dynamic_module_on_http_filter_request_headers(sb_envoy_filter f, sb_module_ptr p, bool end_of_stream) {
  (void)end_of_stream;
  stream* s = (stream*)p;
  const sb_route_check* r = (const sb_route_check*)envoy_dynamic_module_callback_get_most_specific_route_config(f);
  if (r == NULL) {
    // No route at all: Envoy's router answers 404 itself. A route (Signalbox names every route)
    // without this filter's per-route config: fail closed.
    if (!sb_has_route_name(f)) return SB_HEADERS_CONTINUE;
    fail_closed(f, "route has no check");
    return SB_HEADERS_STOP_ITERATION;
  }
  if (r->skip) return SB_HEADERS_CONTINUE;
  worker_state* w = worker();
  if (w == NULL) {
    fail_closed(f, "out of memory");
    return SB_HEADERS_STOP_ITERATION;
  }
  s->check = r;
  const char* raw = NULL;
  size_t raw_len = 0;
  int got = read_header(f, s, r->header, r->header_len, &raw, &raw_len);
  if (got < 0) {
    fail_closed(f, "out of memory");
    return SB_HEADERS_STOP_ITERATION;
  }
  int64_t now = (int64_t)time(NULL);
  if (got) {
    sb_entry* e = sb_cache_get(&w->cache, r->version, r->version_len, raw, raw_len);
    if (e != NULL && e->from <= now && now <= e->last) {
      apply(f, &e->answer);
      if (e->policy >= 0) w->policies[e->policy].count++;
      if (now != w->reported_at && !w->report_busy) {
        w->reported_at = now;
        send_report(f, s, w);
      }
      return SB_HEADERS_CONTINUE;
    }
  }
  if (r->policy_len > MAX_POLICY_LEN) {
    fail_closed(f, "policy name too long");
    return SB_HEADERS_STOP_ITERATION;
  }
  // Ask the service (keeping the value: the answer is remembered under it).
  if (got && s->raw == NULL) {
    s->raw = malloc(raw_len + 1);
    if (s->raw == NULL) {
      fail_closed(f, "out of memory");
      return SB_HEADERS_STOP_ITERATION;
    }
    if (raw_len > 0) memcpy(s->raw, raw, raw_len);
    s->raw[raw_len] = 0;
  }
  s->has_raw = got;
  s->raw_len = raw_len;
  sb_header h[6];
  size_t n = 0;
  char path[sizeof CHECK_PATH + MAX_POLICY_LEN + 1];
  int path_len = snprintf(path, sizeof path, "%s%s", CHECK_PATH, r->policy);
  if (path_len < 0 || (size_t)path_len >= sizeof path) {
    fail_closed(f, "policy name too long");
    return SB_HEADERS_STOP_ITERATION;
  }
  h[n++] = (sb_header){":method", 7, "POST", 4};
  h[n++] = (sb_header){":path", 5, path, (size_t)path_len};
  h[n++] = (sb_header){"host", 4, AUTHORITY, sizeof AUTHORITY - 1};
  if (s->has_raw) h[n++] = (sb_header){r->header, r->header_len, s->raw, s->raw_len};
  const char *tp = NULL, *ts = NULL;
  size_t tpl = 0, tsl = 0;
  if (sb_request_header(f, "traceparent", 11, 0, &tp, &tpl) > 0 && tp != NULL) {
    h[n++] = (sb_header){"traceparent", 11, tp, tpl};
    if (sb_request_header(f, "tracestate", 10, 0, &ts, &tsl) > 0 && ts != NULL) h[n++] = (sb_header){"tracestate", 10, ts, tsl};
  }
  if (!sb_callout(f, CALLOUT_CHECK, &s->check_id, s->config, h, n, NULL, 0)) {
    fail_closed(f, "the authz cluster cannot be asked");
    return SB_HEADERS_STOP_ITERATION;
  }
  s->waiting = 1;
  // Hold the request (body included, with back-pressure) until the answer.
  return SB_HEADERS_STOP_ALL_AND_WATERMARK;
}

// An allow: apply it, and remember it when it judged a token. Returns 0 when it cannot be read.
static int on_allow(sb_envoy_filter f, stream* s, const char* body, size_t len) {
  sb_allow a;
  if (sb_read_allow(body, len, &a) != SB_OK) return 0;
  apply(f, &a);
  worker_state* w = worker();
  if (w != NULL && s->has_raw && a.has_window) {
    const sb_route_check* r = s->check;
    int64_t now = (int64_t)time(NULL);
    int64_t last = a.last < now + s->config->max_seconds ? a.last : now + s->config->max_seconds;
    // (Out of memory or too large: not remembered; this request is allowed all the same.)
    sb_cache_put(&w->cache, r->version, r->version_len, s->raw, s->raw_len, &a, a.first, last, policy_index(w, r->policy, r->policy_len));
    return 1;
  }
  sb_allow_free(&a);
  return 1;
}

static int on_deny(sb_envoy_filter f, const char* body, size_t len) {
  sb_deny d;
  if (sb_read_deny(body, len, &d) != SB_OK) return 0;
  sb_header hs[SB_MAX_DENY_HEADERS];
  for (size_t i = 0; i < d.n_headers; i++) hs[i] = (sb_header){d.headers[i].name, d.headers[i].name_len, d.headers[i].value, d.headers[i].value_len};
  sb_send(f, d.status, hs, d.n_headers, d.body, d.body == NULL ? 0 : d.body_len);
  return 1;
}

static void callout_done(sb_envoy_filter f, stream* s, uint64_t id, int result, const sb_header* headers, size_t n_headers, const sb_bytes* chunks,
                         size_t n_chunks) {
  int ok = result == SB_CALLOUT_SUCCESS;
  int status_200 = 0, status_4xx = 0;
  for (size_t i = 0; ok && i < n_headers; i++)
    if (headers[i].name_len == 7 && memcmp(headers[i].name, ":status", 7) == 0) {
      status_200 = headers[i].value_len == 3 && memcmp(headers[i].value, "200", 3) == 0;
      status_4xx = headers[i].value_len == 3 && headers[i].value[0] == '4';
    }
  if (s->report_out && id == s->report_id) {
    worker_state* w = worker();
    s->report_out = 0;
    if (w != NULL) {
      w->report_busy = 0;
      // Delivered, or refused for good (a service that will never take it): done with it. Anything
      // else (no answer, 5xx) keeps it, to go again under the same id.
      if (ok && (status_200 || status_4xx)) { free(w->inflight); w->inflight = NULL; }
    }
    return;
  }
  if (!s->waiting || id != s->check_id) return;
  s->waiting = 0;
  if (!ok || !status_200) { fail_closed(f, "no answer from the service"); return; }
  size_t len = 0;
  for (size_t i = 0; i < n_chunks; i++) {
    if (chunks[i].len > SIZE_MAX - 1 - len) { fail_closed(f, "answer too large"); return; }
    len += chunks[i].len;
  }
  char* body = malloc(len + 1);
  if (body == NULL) { fail_closed(f, "out of memory"); return; }
  size_t at = 0;
  for (size_t i = 0; i < n_chunks; i++) {
    if (chunks[i].len > 0) memcpy(body + at, chunks[i].ptr, chunks[i].len);
    at += chunks[i].len;
  }
  body[len] = 0;
  if (len >= 6 && memcmp(body, "allow\n", 6) == 0) {
    if (on_allow(f, s, body, len)) envoy_dynamic_module_callback_http_filter_continue_decoding(f);
    else fail_closed(f, "unreadable answer from the service");
  } else if (!on_deny(f, body, len)) {
    fail_closed(f, "unreadable answer from the service");
  }
  free(body);
}

#if SB_ABI_LAYOUT == SB_ABI_PTRLEN
void envoy_dynamic_module_on_http_filter_http_callout_done(sb_envoy_filter f, sb_module_ptr p, uint32_t id, int result, const sb_header* headers,
                                                           size_t n_headers, const sb_bytes* chunks, size_t n_chunks) {
  callout_done(f, (stream*)p, id, result, headers, n_headers, chunks, n_chunks);
}
#else
void envoy_dynamic_module_on_http_filter_http_callout_done(sb_envoy_filter f, sb_module_ptr p, uint64_t id, int result, const sb_header* headers,
                                                           size_t n_headers, const sb_bytes* chunks, size_t n_chunks) {
  callout_done(f, (stream*)p, id, result, headers, n_headers, chunks, n_chunks);
}
#endif

void envoy_dynamic_module_on_http_filter_destroy(sb_module_ptr p) {
  stream* s = (stream*)p;
  if (s == NULL) return;
  // A report cut off with its stream stays in flight: it goes again, under the same id.
  if (s->report_out && W != NULL) W->report_busy = 0;
  free(s->raw);
  free(s);
}

// Hooks this filter has nothing to do in.
int envoy_dynamic_module_on_http_filter_request_body(sb_envoy_filter f, sb_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return SB_CONTINUE;
}
int envoy_dynamic_module_on_http_filter_request_trailers(sb_envoy_filter f, sb_module_ptr p) {
  (void)f; (void)p;
  return SB_CONTINUE;
}
int envoy_dynamic_module_on_http_filter_response_headers(sb_envoy_filter f, sb_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return SB_HEADERS_CONTINUE;
}
int envoy_dynamic_module_on_http_filter_response_body(sb_envoy_filter f, sb_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return SB_CONTINUE;
}
int envoy_dynamic_module_on_http_filter_response_trailers(sb_envoy_filter f, sb_module_ptr p) {
  (void)f; (void)p;
  return SB_CONTINUE;
}
void envoy_dynamic_module_on_http_filter_stream_complete(sb_envoy_filter f, sb_module_ptr p) { (void)f; (void)p; }
void envoy_dynamic_module_on_http_filter_scheduled(sb_envoy_filter f, sb_module_ptr p, uint64_t event) { (void)f; (void)p; (void)event; }
#if SB_ABI_LAYOUT == SB_ABI_BUFFERS
void envoy_dynamic_module_on_http_filter_http_stream_headers(sb_envoy_filter f, sb_module_ptr p, uint64_t id, const sb_header* h, size_t n, bool end) {
  (void)f; (void)p; (void)id; (void)h; (void)n; (void)end;
}
void envoy_dynamic_module_on_http_filter_http_stream_data(sb_envoy_filter f, sb_module_ptr p, uint64_t id, const sb_bytes* d, size_t n, bool end) {
  (void)f; (void)p; (void)id; (void)d; (void)n; (void)end;
}
void envoy_dynamic_module_on_http_filter_http_stream_trailers(sb_envoy_filter f, sb_module_ptr p, uint64_t id, const sb_header* h, size_t n) {
  (void)f; (void)p; (void)id; (void)h; (void)n;
}
void envoy_dynamic_module_on_http_filter_http_stream_complete(sb_envoy_filter f, sb_module_ptr p, uint64_t id) { (void)f; (void)p; (void)id; }
void envoy_dynamic_module_on_http_filter_http_stream_reset(sb_envoy_filter f, sb_module_ptr p, uint64_t id, int reason) {
  (void)f; (void)p; (void)id; (void)reason;
}
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(sb_envoy_filter f, sb_module_ptr p) { (void)f; (void)p; }
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(sb_envoy_filter f, sb_module_ptr p) { (void)f; (void)p; }
#endif
