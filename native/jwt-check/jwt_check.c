// Signalbox JWT fast path as an Envoy dynamic module (the compiled form of the Lua script in
// src/xds/translator/filters/jwt-fast.ts; the behaviour is the same, see that file).
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
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "abi.h"
#include "abi_version.h"

#define CHECK_PATH "/signalbox.jwt/check/"
#define REPORT_PATH "/signalbox.jwt/report"
#define REPORT_ID_HEADER "x-signalbox-report-id"
#define AUTHORITY "signalbox-authz"
#define CACHE_MAX_N 10000
#define CACHE_MAX_BYTES (8u << 20)
#define MAX_POLICIES 1024
#define CALLOUT_CHECK 1
#define CALLOUT_REPORT 2

typedef struct {
  char* cluster;
  size_t cluster_len;
  uint64_t timeout_ms;
  int64_t max_seconds;
} filter_config;

typedef struct {
  int skip;
  char* policy; // URL-encoded, as on the wire
  size_t policy_len;
  char* header; // lower case
  size_t header_len;
  char* version;
  size_t version_len;
} route_check;

typedef struct {
  size_t name_len, value_len; // value_len == SIZE_MAX: remove
  char* name;
  char* value;
} header_change;

typedef struct entry {
  struct entry* next;
  uint64_t hash;
  char* key; // version '\n' header value
  size_t key_len;
  int64_t from, last;
  int policy;
  size_t n_changes;
  header_change* changes;
  char* blob; // owns names and values
} entry;

typedef struct {
  char* name;
  size_t len;
  uint64_t count;
} policy_count;

typedef struct {
  entry** buckets;
  size_t n_buckets, n, bytes;
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
  const route_check* check;
  char* raw; // the token header's value, kept while the service is asked (owned)
  size_t raw_len;
  int has_raw;
  int waiting;
  int report_out;
} stream;

static const char* abi = NULL;

envoy_dynamic_module_type_abi_version_envoy_ptr envoy_dynamic_module_on_program_init(void) {
  abi = kAbiVersion;
  return abi;
}

static char* dup_n(const char* p, size_t n) {
  char* s = malloc(n + 1);
  if (s == NULL) return NULL;
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

// ---------------------------------------------------------------- configuration (main thread)

// Filter config: "<cluster> <timeout ms> <max seconds>".
envoy_dynamic_module_type_http_filter_config_module_ptr envoy_dynamic_module_on_http_filter_config_new(
    envoy_dynamic_module_type_http_filter_config_envoy_ptr envoy_ptr, const char* name, size_t name_len,
    const char* config, size_t config_len) {
  (void)envoy_ptr; (void)name; (void)name_len;
  char* text = dup_n(config, config_len);
  if (text == NULL) return NULL;
  char cluster[256];
  unsigned long long timeout = 0;
  long long max_seconds = 0;
  filter_config* c = NULL;
  if (sscanf(text, "%255s %llu %lld", cluster, &timeout, &max_seconds) == 3 && timeout > 0 && max_seconds > 0) {
    c = calloc(1, sizeof *c);
    if (c != NULL) {
      c->cluster = strdup(cluster);
      c->cluster_len = strlen(cluster);
      c->timeout_ms = timeout;
      c->max_seconds = max_seconds;
    }
  }
  free(text);
  return c;
}

void envoy_dynamic_module_on_http_filter_config_destroy(envoy_dynamic_module_type_http_filter_config_module_ptr p) {
  filter_config* c = (filter_config*)p;
  free(c->cluster);
  free(c);
}

static int token_ok(const char* s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] == 127) return 0;
  return 1;
}

// Per-route config: "skip" or "<policy> <header> <version>". Anything else is refused (Envoy then
// rejects the route configuration, and the refusal is shown as that proxy's rejected config).
envoy_dynamic_module_type_http_filter_per_route_config_module_ptr envoy_dynamic_module_on_http_filter_per_route_config_new(
    const char* name, size_t name_len, const char* config, size_t config_len) {
  (void)name; (void)name_len;
  route_check* r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  if (config_len == 4 && memcmp(config, "skip", 4) == 0) {
    r->skip = 1;
    return r;
  }
  const char* a = memchr(config, ' ', config_len);
  const char* b = a ? memchr(a + 1, ' ', config_len - (size_t)(a + 1 - config)) : NULL;
  if (a == NULL || b == NULL) goto bad;
  size_t pl = (size_t)(a - config), hl = (size_t)(b - a - 1), vl = config_len - (size_t)(b + 1 - config);
  if (!token_ok(config, pl) || !token_ok(a + 1, hl) || !token_ok(b + 1, vl)) goto bad;
  r->policy = dup_n(config, pl);
  r->policy_len = pl;
  r->header = dup_n(a + 1, hl);
  r->header_len = hl;
  r->version = dup_n(b + 1, vl);
  r->version_len = vl;
  if (r->policy == NULL || r->header == NULL || r->version == NULL) goto bad;
  return r;
bad:
  free(r->policy); free(r->header); free(r->version); free(r);
  return NULL;
}

void envoy_dynamic_module_on_http_filter_per_route_config_destroy(envoy_dynamic_module_type_http_filter_per_route_config_module_ptr p) {
  route_check* r = (route_check*)p;
  free(r->policy); free(r->header); free(r->version); free(r);
}

// ---------------------------------------------------------------- worker memory

static uint64_t hash_of(const char* a, size_t an, const char* b, size_t bn) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < an; i++) h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
  h = (h ^ '\n') * 1099511628211ull;
  for (size_t i = 0; i < bn; i++) h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
  return h;
}

static worker_state* worker(void) {
  if (W != NULL) return W;
  W = calloc(1, sizeof *W);
  if (W == NULL) return NULL;
  W->n_buckets = 16384;
  W->buckets = calloc(W->n_buckets, sizeof(entry*));
  if (W->buckets == NULL) { free(W); W = NULL; return NULL; }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  W->worker_id = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)(uintptr_t)W >> 4);
  return W;
}

static void free_entry(entry* e) {
  free(e->key); free(e->changes); free(e->blob); free(e);
}

static void forget_all(worker_state* w) {
  for (size_t i = 0; i < w->n_buckets; i++) {
    entry* e = w->buckets[i];
    while (e != NULL) { entry* next = e->next; free_entry(e); e = next; }
    w->buckets[i] = NULL;
  }
  w->n = 0;
  w->bytes = 0;
}

static entry* lookup(worker_state* w, const route_check* r, const char* raw, size_t raw_len, uint64_t* hash_out) {
  uint64_t h = hash_of(r->version, r->version_len, raw, raw_len);
  *hash_out = h;
  size_t klen = r->version_len + 1 + raw_len;
  for (entry* e = w->buckets[h & (w->n_buckets - 1)]; e != NULL; e = e->next) {
    if (e->hash == h && e->key_len == klen && memcmp(e->key, r->version, r->version_len) == 0 &&
        memcmp(e->key + r->version_len + 1, raw, raw_len) == 0)
      return e;
  }
  return NULL;
}

static int policy_index(worker_state* w, const char* name, size_t len) {
  for (int i = 0; i < w->n_policies; i++)
    if (w->policies[i].len == len && memcmp(w->policies[i].name, name, len) == 0) return i;
  if (w->n_policies >= MAX_POLICIES) return -1;
  char* copy = dup_n(name, len);
  if (copy == NULL) return -1;
  w->policies[w->n_policies] = (policy_count){copy, len, 0};
  return w->n_policies++;
}

// ---------------------------------------------------------------- requests

envoy_dynamic_module_type_http_filter_module_ptr envoy_dynamic_module_on_http_filter_new(
    envoy_dynamic_module_type_http_filter_config_module_ptr config, envoy_dynamic_module_type_http_filter_envoy_ptr envoy_ptr) {
  (void)envoy_ptr;
  stream* s = calloc(1, sizeof *s);
  if (s != NULL) s->config = (const filter_config*)config;
  return s;
}

static void fail_closed(envoy_dynamic_module_type_http_filter_envoy_ptr f, const char* why) {
  char msg[160];
  int n = snprintf(msg, sizeof msg, "signalbox jwt check failed closed: %s", why);
  envoy_dynamic_module_callback_log(envoy_dynamic_module_type_log_level_Warn, msg, (size_t)n);
  envoy_dynamic_module_callback_http_send_response(f, 503, NULL, 0, NULL, 0);
}

static void apply(envoy_dynamic_module_type_http_filter_envoy_ptr f, const header_change* c, size_t n) {
  for (size_t i = 0; i < n; i++)
    envoy_dynamic_module_callback_http_set_request_header(f, c[i].name, c[i].name_len, c[i].value_len == SIZE_MAX ? NULL : c[i].value,
                                                          c[i].value_len == SIZE_MAX ? 0 : c[i].value_len);
}

static void send_report(envoy_dynamic_module_type_http_filter_envoy_ptr f, stream* s, worker_state* w) {
  if (w->inflight == NULL) {
    size_t cap = 64, len = 0;
    for (int i = 0; i < w->n_policies; i++) cap += w->policies[i].len + 24;
    char* body = malloc(cap);
    if (body == NULL) return;
    for (int i = 0; i < w->n_policies; i++) {
      if (w->policies[i].count == 0) continue;
      len += (size_t)snprintf(body + len, cap - len, "%s %llu\n", w->policies[i].name, (unsigned long long)w->policies[i].count);
      w->policies[i].count = 0;
    }
    if (len == 0) { free(body); return; }
    w->inflight = body;
    w->inflight_len = len;
    snprintf(w->inflight_id, sizeof w->inflight_id, "%016llx-%llu", (unsigned long long)w->worker_id, (unsigned long long)++w->seq);
  }
  envoy_dynamic_module_type_http_header h[4] = {
      {":method", 7, "POST", 4},
      {":path", 5, REPORT_PATH, sizeof REPORT_PATH - 1},
      {"host", 4, AUTHORITY, sizeof AUTHORITY - 1},
      {REPORT_ID_HEADER, sizeof REPORT_ID_HEADER - 1, w->inflight_id, strlen(w->inflight_id)},
  };
  if (envoy_dynamic_module_callback_http_filter_http_callout(f, CALLOUT_REPORT, s->config->cluster, s->config->cluster_len, h, 4,
                                                             w->inflight, w->inflight_len, s->config->timeout_ms) ==
      envoy_dynamic_module_type_http_callout_init_result_Success) {
    w->report_busy = 1;
    s->report_out = 1;
  }
}

// The token header's value: with one value, Envoy's own bytes (valid until a header is changed);
// with several, joined with "," (as Envoy's ext_authz filter and the Lua script see them) into a
// copy the stream owns. Returns 0 when absent, -1 when out of memory.
static int read_header(envoy_dynamic_module_type_http_filter_envoy_ptr f, stream* s, const char* name, size_t name_len, char** out, size_t* out_len) {
  char* v = NULL;
  size_t vl = 0;
  size_t count = envoy_dynamic_module_callback_http_get_request_header(f, (char*)name, name_len, &v, &vl, 0);
  if (count == 0 || v == NULL) return 0;
  if (count == 1) {
    *out = v;
    *out_len = vl;
    return 1;
  }
  size_t total = 0;
  for (size_t i = 0; i < count; i++) {
    envoy_dynamic_module_callback_http_get_request_header(f, (char*)name, name_len, &v, &vl, i);
    total += vl + 1;
  }
  char* joined = malloc(total);
  if (joined == NULL) return -1;
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    envoy_dynamic_module_callback_http_get_request_header(f, (char*)name, name_len, &v, &vl, i);
    if (i > 0) joined[at++] = ',';
    memcpy(joined + at, v, vl);
    at += vl;
  }
  joined[at] = 0;
  s->raw = joined;
  *out = joined;
  *out_len = at;
  return 1;
}

envoy_dynamic_module_type_on_http_filter_request_headers_status envoy_dynamic_module_on_http_filter_request_headers(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p, bool end_of_stream) {
  (void)end_of_stream;
  stream* s = (stream*)p;
  const route_check* r = (const route_check*)envoy_dynamic_module_callback_get_most_specific_route_config(f);
  if (r == NULL) {
    // No route at all: Envoy's router answers 404 itself. A route (Signalbox names every route)
    // without this filter's per-route config: fail closed.
    char* name = NULL;
    size_t name_len = 0;
    if (!envoy_dynamic_module_callback_http_filter_get_attribute_string(f, envoy_dynamic_module_type_attribute_id_XdsRouteName, &name, &name_len) || name_len == 0)
      return envoy_dynamic_module_type_on_http_filter_request_headers_status_Continue;
    fail_closed(f, "route has no check");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  if (r->skip) return envoy_dynamic_module_type_on_http_filter_request_headers_status_Continue;
  worker_state* w = worker();
  if (w == NULL) {
    fail_closed(f, "out of memory");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  s->check = r;
  char* raw = NULL;
  size_t raw_len = 0;
  int got = read_header(f, s, r->header, r->header_len, &raw, &raw_len);
  if (got < 0) {
    fail_closed(f, "out of memory");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  int64_t now = (int64_t)time(NULL);
  if (got) {
    uint64_t h;
    entry* e = lookup(w, r, raw, raw_len, &h);
    if (e != NULL && e->from <= now && now <= e->last) {
      apply(f, e->changes, e->n_changes);
      if (e->policy >= 0) w->policies[e->policy].count++;
      if (now != w->reported_at && !w->report_busy) {
        w->reported_at = now;
        send_report(f, s, w);
      }
      return envoy_dynamic_module_type_on_http_filter_request_headers_status_Continue;
    }
  }
  // Ask the service (keeping the value: the answer is remembered under it).
  if (got && s->raw == NULL && (s->raw = dup_n(raw, raw_len)) == NULL) {
    fail_closed(f, "out of memory");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  s->has_raw = got;
  s->raw_len = raw_len;
  envoy_dynamic_module_type_http_header h[6];
  size_t n = 0;
  char path[sizeof CHECK_PATH + 512];
  if (r->policy_len > 500) {
    fail_closed(f, "policy name too long");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  int path_len = snprintf(path, sizeof path, "%s%s", CHECK_PATH, r->policy);
  h[n++] = (envoy_dynamic_module_type_http_header){":method", 7, "POST", 4};
  h[n++] = (envoy_dynamic_module_type_http_header){":path", 5, path, (size_t)path_len};
  h[n++] = (envoy_dynamic_module_type_http_header){"host", 4, AUTHORITY, sizeof AUTHORITY - 1};
  if (s->has_raw) h[n++] = (envoy_dynamic_module_type_http_header){r->header, r->header_len, s->raw, s->raw_len};
  char *tp = NULL, *ts = NULL;
  size_t tpl = 0, tsl = 0;
  if (envoy_dynamic_module_callback_http_get_request_header(f, "traceparent", 11, &tp, &tpl, 0) > 0 && tp != NULL) {
    h[n++] = (envoy_dynamic_module_type_http_header){"traceparent", 11, tp, tpl};
    if (envoy_dynamic_module_callback_http_get_request_header(f, "tracestate", 10, &ts, &tsl, 0) > 0 && ts != NULL)
      h[n++] = (envoy_dynamic_module_type_http_header){"tracestate", 10, ts, tsl};
  }
  if (envoy_dynamic_module_callback_http_filter_http_callout(f, CALLOUT_CHECK, s->config->cluster, s->config->cluster_len, h, n, NULL, 0,
                                                             s->config->timeout_ms) != envoy_dynamic_module_type_http_callout_init_result_Success) {
    fail_closed(f, "the authz cluster cannot be asked");
    return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration;
  }
  s->waiting = 1;
  // Hold the request (body included, with back-pressure) until the answer.
  return envoy_dynamic_module_type_on_http_filter_request_headers_status_StopAllIterationAndWatermark;
}

// The answer's lines (see src/authz/fast-path.ts). Returns 0 when it cannot be read.
static int on_allow(envoy_dynamic_module_type_http_filter_envoy_ptr f, stream* s, const char* body, size_t len) {
  worker_state* w = worker();
  size_t n_changes = 0;
  for (size_t i = 0; i < len; i++)
    if (body[i] == '\n') n_changes++;
  header_change* changes = calloc(n_changes + 1, sizeof *changes);
  char* blob = dup_n(body, len);
  if (changes == NULL || blob == NULL || w == NULL) { free(changes); free(blob); return 0; }
  size_t k = 0;
  int has_cache = 0;
  long long first = INT64_MIN, last = 0;
  char* line = blob;
  char* end = blob + len;
  while (line < end) {
    char* nl = memchr(line, '\n', (size_t)(end - line));
    if (nl == NULL) nl = end;
    *nl = 0;
    if (strncmp(line, "set ", 4) == 0) {
      char* name = line + 4;
      char* sp = strchr(name, ' ');
      if (sp == NULL) { free(changes); free(blob); return 0; }
      *sp = 0;
      changes[k++] = (header_change){(size_t)(sp - name), (size_t)(nl - sp - 1), name, sp + 1};
    } else if (strncmp(line, "remove ", 7) == 0) {
      changes[k++] = (header_change){(size_t)(nl - line - 7), SIZE_MAX, line + 7, NULL};
    } else if (strncmp(line, "cache ", 6) == 0) {
      char a[32];
      if (sscanf(line + 6, "%31s %lld", a, &last) == 2) {
        has_cache = 1;
        if (strcmp(a, "-") != 0) first = strtoll(a, NULL, 10);
      }
    }
    line = nl + 1;
  }
  apply(f, changes, k);
  if (s->has_raw && has_cache) {
    const route_check* r = s->check;
    int64_t now = (int64_t)time(NULL);
    if (w->n >= CACHE_MAX_N || w->bytes + s->raw_len > CACHE_MAX_BYTES) forget_all(w);
    uint64_t h;
    entry* e = lookup(w, r, s->raw, s->raw_len, &h);
    if (e == NULL) {
      e = calloc(1, sizeof *e);
      if (e == NULL) { free(changes); free(blob); return 1; }
      e->key_len = r->version_len + 1 + s->raw_len;
      e->key = malloc(e->key_len);
      if (e->key == NULL) { free(e); free(changes); free(blob); return 1; }
      memcpy(e->key, r->version, r->version_len);
      e->key[r->version_len] = '\n';
      memcpy(e->key + r->version_len + 1, s->raw, s->raw_len);
      e->hash = h;
      e->next = w->buckets[h & (w->n_buckets - 1)];
      w->buckets[h & (w->n_buckets - 1)] = e;
      w->n++;
      w->bytes += s->raw_len;
    } else {
      free(e->changes);
      free(e->blob);
    }
    e->from = first;
    e->last = last < now + s->config->max_seconds ? last : now + s->config->max_seconds;
    e->policy = policy_index(w, r->policy, r->policy_len);
    e->changes = changes;
    e->n_changes = k;
    e->blob = blob;
    return 1;
  }
  free(changes);
  free(blob);
  return 1;
}

static int on_deny(envoy_dynamic_module_type_http_filter_envoy_ptr f, const char* body, size_t len) {
  char* text = dup_n(body, len);
  if (text == NULL) return 0;
  unsigned status = 0;
  if (sscanf(text, "deny %3u", &status) != 1 || status < 200 || status > 599) { free(text); return 0; }
  envoy_dynamic_module_type_module_http_header hs[16];
  size_t n = 0;
  char* reply = NULL;
  size_t reply_len = 0;
  char* line = strchr(text, '\n');
  while (line != NULL) {
    line++;
    if (strncmp(line, "body\n", 5) == 0) {
      reply = line + 5;
      reply_len = len - (size_t)(reply - text);
      break;
    }
    char* nl = strchr(line, '\n');
    if (nl == NULL) break;
    *nl = 0;
    if (strncmp(line, "header ", 7) == 0 && n < 16) {
      char* name = line + 7;
      char* sp = strchr(name, ' ');
      if (sp != NULL) {
        *sp = 0;
        hs[n++] = (envoy_dynamic_module_type_module_http_header){name, (size_t)(sp - name), sp + 1, (size_t)(nl - sp - 1)};
      }
    }
    line = nl;
  }
  envoy_dynamic_module_callback_http_send_response(f, status, hs, n, reply, reply_len);
  free(text);
  return 1;
}

void envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p, uint32_t id,
    envoy_dynamic_module_type_http_callout_result result, envoy_dynamic_module_type_http_header* headers, size_t n_headers,
    envoy_dynamic_module_type_envoy_buffer* chunks, size_t n_chunks) {
  stream* s = (stream*)p;
  int ok = result == envoy_dynamic_module_type_http_callout_result_Success;
  int status_200 = 0, status_4xx = 0;
  for (size_t i = 0; ok && i < n_headers; i++)
    if (headers[i].key_length == 7 && memcmp(headers[i].key_ptr, ":status", 7) == 0) {
      status_200 = headers[i].value_length == 3 && memcmp(headers[i].value_ptr, "200", 3) == 0;
      status_4xx = headers[i].value_length == 3 && headers[i].value_ptr[0] == '4';
    }
  if (id == CALLOUT_REPORT) {
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
  if (id != CALLOUT_CHECK || !s->waiting) return;
  s->waiting = 0;
  if (!ok || !status_200) { fail_closed(f, "no answer from the service"); return; }
  size_t len = 0;
  for (size_t i = 0; i < n_chunks; i++) len += chunks[i].length;
  char* body = malloc(len + 1);
  if (body == NULL) { fail_closed(f, "out of memory"); return; }
  size_t at = 0;
  for (size_t i = 0; i < n_chunks; i++) { memcpy(body + at, chunks[i].ptr, chunks[i].length); at += chunks[i].length; }
  body[len] = 0;
  if (len >= 6 && memcmp(body, "allow\n", 6) == 0) {
    if (on_allow(f, s, body, len)) envoy_dynamic_module_callback_http_filter_continue_decoding(f);
    else fail_closed(f, "unreadable answer from the service");
  } else if (!on_deny(f, body, len)) {
    fail_closed(f, "unreadable answer from the service");
  }
  free(body);
}

void envoy_dynamic_module_on_http_filter_destroy(envoy_dynamic_module_type_http_filter_module_ptr p) {
  stream* s = (stream*)p;
  // A report cut off with its stream stays in flight: it goes again, under the same id.
  if (s->report_out && W != NULL) W->report_busy = 0;
  free(s->raw);
  free(s);
}

// Hooks this filter has nothing to do in.
envoy_dynamic_module_type_on_http_filter_request_body_status envoy_dynamic_module_on_http_filter_request_body(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return envoy_dynamic_module_type_on_http_filter_request_body_status_Continue;
}
envoy_dynamic_module_type_on_http_filter_request_trailers_status envoy_dynamic_module_on_http_filter_request_trailers(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p) {
  (void)f; (void)p;
  return envoy_dynamic_module_type_on_http_filter_request_trailers_status_Continue;
}
envoy_dynamic_module_type_on_http_filter_response_headers_status envoy_dynamic_module_on_http_filter_response_headers(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return envoy_dynamic_module_type_on_http_filter_response_headers_status_Continue;
}
envoy_dynamic_module_type_on_http_filter_response_body_status envoy_dynamic_module_on_http_filter_response_body(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p, bool end) {
  (void)f; (void)p; (void)end;
  return envoy_dynamic_module_type_on_http_filter_response_body_status_Continue;
}
envoy_dynamic_module_type_on_http_filter_response_trailers_status envoy_dynamic_module_on_http_filter_response_trailers(
    envoy_dynamic_module_type_http_filter_envoy_ptr f, envoy_dynamic_module_type_http_filter_module_ptr p) {
  (void)f; (void)p;
  return envoy_dynamic_module_type_on_http_filter_response_trailers_status_Continue;
}
void envoy_dynamic_module_on_http_filter_stream_complete(envoy_dynamic_module_type_http_filter_envoy_ptr f,
                                                         envoy_dynamic_module_type_http_filter_module_ptr p) {
  (void)f; (void)p;
}
void envoy_dynamic_module_on_http_filter_scheduled(envoy_dynamic_module_type_http_filter_envoy_ptr f,
                                                   envoy_dynamic_module_type_http_filter_module_ptr p, uint64_t event) {
  (void)f; (void)p; (void)event;
}
