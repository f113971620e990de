// See jwt_core.h. Plain C11, no Envoy, no global state.
#include "jwt_core.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static char* dup_n(const char* p, size_t n) {
  char* s = malloc(n + 1);
  if (s == NULL) return NULL;
  if (n > 0) memcpy(s, p, n);
  s[n] = 0;
  return s;
}

// A header name Envoy takes: RFC 7230 token characters (lower case is the caller's business).
static int is_name(const char* s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c) != NULL) return 0;
  }
  return 1;
}

// A header value Envoy takes: no control characters but tab.
static int is_value(const char* s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < ' ' && c != '\t') || c == 127) return 0;
  }
  return 1;
}

// Printable without spaces, non-empty.
static int is_word(const char* s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 127) return 0;
  return 1;
}

// A decimal integer filling s[0..n), optionally negative, within int64.
static int read_int(const char* s, size_t n, int64_t* out) {
  size_t i = 0;
  int neg = 0;
  if (n > 0 && s[0] == '-') { neg = 1; i = 1; }
  if (i == n || n - i > 19) return 0;
  uint64_t v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX + (uint64_t)neg) return 0;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 1;
}

static int starts(const char* line, size_t n, const char* word) {
  size_t w = strlen(word);
  return n >= w && memcmp(line, word, w) == 0;
}

// ------------------------------------------------------------------------------ answers

void sb_allow_free(sb_allow* a) {
  free(a->changes);
  free(a->blob);
  memset(a, 0, sizeof *a);
}

int sb_read_allow(const char* body, size_t len, sb_allow* out) {
  memset(out, 0, sizeof *out);
  if (len < 6 || memcmp(body, "allow\n", 6) != 0) return SB_UNREADABLE;
  size_t lines = 0;
  for (size_t i = 0; i < len; i++)
    if (body[i] == '\n') lines++;
  sb_change* changes = calloc(lines + 1, sizeof *changes);
  char* blob = dup_n(body, len);
  if (changes == NULL || blob == NULL) {
    free(changes);
    free(blob);
    return SB_NO_MEMORY;
  }
  size_t k = 0;
  int has_window = 0;
  int64_t first = INT64_MIN, last = 0;
  const char* end = blob + len;
  for (const char* line = blob; line < end;) {
    const char* nl = memchr(line, '\n', (size_t)(end - line));
    if (nl == NULL) nl = end;
    size_t n = (size_t)(nl - line);
    if (starts(line, n, "set ")) {
      const char* name = line + 4;
      const char* sp = memchr(name, ' ', (size_t)(nl - name));
      if (sp == NULL || !is_name(name, (size_t)(sp - name)) || !is_value(sp + 1, (size_t)(nl - sp - 1))) goto bad;
      changes[k++] = (sb_change){name, (size_t)(sp - name), sp + 1, (size_t)(nl - sp - 1)};
    } else if (starts(line, n, "remove ")) {
      if (!is_name(line + 7, n - 7)) goto bad;
      changes[k++] = (sb_change){line + 7, n - 7, NULL, 0};
    } else if (starts(line, n, "cache ")) {
      const char* a = line + 6;
      const char* sp = memchr(a, ' ', (size_t)(nl - a));
      if (sp == NULL) goto bad;
      size_t al = (size_t)(sp - a);
      int64_t f = INT64_MIN, l;
      if (!(al == 1 && a[0] == '-') && !read_int(a, al, &f)) goto bad;
      if (!read_int(sp + 1, (size_t)(nl - sp - 1), &l)) goto bad;
      has_window = 1;
      first = f;
      last = l;
    }
    line = nl + 1;
  }
  out->changes = changes;
  out->n_changes = k;
  out->blob = blob;
  out->blob_len = len;
  out->has_window = has_window;
  out->first = first;
  out->last = last;
  return SB_OK;
bad:
  free(changes);
  free(blob);
  return SB_UNREADABLE;
}

int sb_read_deny(const char* body, size_t len, sb_deny* out) {
  memset(out, 0, sizeof *out);
  // "deny " and exactly three digits, then the end of the line.
  if (len < 8 || memcmp(body, "deny ", 5) != 0) return SB_UNREADABLE;
  unsigned status = 0;
  for (int i = 5; i < 8; i++) {
    if (body[i] < '0' || body[i] > '9') return SB_UNREADABLE;
    status = status * 10 + (unsigned)(body[i] - '0');
  }
  if (status < 200 || status > 599) return SB_UNREADABLE;
  if (len > 8 && body[8] != '\n') return SB_UNREADABLE;
  out->status = status;
  const char* end = body + len;
  const char* line = body + 8 < end ? body + 9 : end;
  while (line < end) {
    const char* nl = memchr(line, '\n', (size_t)(end - line));
    if (nl == NULL) break; // no body line: no body
    size_t n = (size_t)(nl - line);
    if (n == 4 && memcmp(line, "body", 4) == 0) {
      out->body = nl + 1;
      out->body_len = (size_t)(end - nl - 1);
      break;
    }
    if (starts(line, n, "header ")) {
      const char* name = line + 7;
      const char* sp = memchr(name, ' ', (size_t)(nl - name));
      if (sp == NULL || !is_name(name, (size_t)(sp - name)) || !is_value(sp + 1, (size_t)(nl - sp - 1))) return SB_UNREADABLE;
      if (out->n_headers < SB_MAX_DENY_HEADERS) {
        out->headers[out->n_headers].name = name;
        out->headers[out->n_headers].name_len = (size_t)(sp - name);
        out->headers[out->n_headers].value = sp + 1;
        out->headers[out->n_headers].value_len = (size_t)(nl - sp - 1);
        out->n_headers++;
      }
    }
    line = nl + 1;
  }
  return SB_OK;
}

// ------------------------------------------------------------------------------ configuration

void sb_route_check_free(sb_route_check* r) {
  free(r->policy);
  free(r->header);
  free(r->version);
  memset(r, 0, sizeof *r);
}

int sb_read_route_check(const char* config, size_t len, sb_route_check* out) {
  memset(out, 0, sizeof *out);
  if (len == 4 && memcmp(config, "skip", 4) == 0) {
    out->skip = 1;
    return SB_OK;
  }
  const char* a = len > 0 ? memchr(config, ' ', len) : NULL;
  const char* b = a ? memchr(a + 1, ' ', len - (size_t)(a + 1 - config)) : NULL;
  if (a == NULL || b == NULL) return SB_UNREADABLE;
  size_t pl = (size_t)(a - config), hl = (size_t)(b - a - 1), vl = len - (size_t)(b + 1 - config);
  if (!is_word(config, pl) || !is_name(a + 1, hl) || !is_word(b + 1, vl)) return SB_UNREADABLE;
  out->policy = dup_n(config, pl);
  out->policy_len = pl;
  out->header = dup_n(a + 1, hl);
  out->header_len = hl;
  out->version = dup_n(b + 1, vl);
  out->version_len = vl;
  if (out->policy == NULL || out->header == NULL || out->version == NULL) {
    sb_route_check_free(out);
    return SB_NO_MEMORY;
  }
  return SB_OK;
}

int sb_read_filter_config(const char* config, size_t len, char** cluster, size_t* cluster_len, uint64_t* timeout_ms,
                          int64_t* max_seconds) {
  const char* a = len > 0 ? memchr(config, ' ', len) : NULL;
  const char* b = a ? memchr(a + 1, ' ', len - (size_t)(a + 1 - config)) : NULL;
  if (a == NULL || b == NULL) return SB_UNREADABLE;
  size_t cl = (size_t)(a - config);
  int64_t t, m;
  if (!is_word(config, cl) || cl > 255 || !read_int(a + 1, (size_t)(b - a - 1), &t) || !read_int(b + 1, len - (size_t)(b + 1 - config), &m) ||
      t <= 0 || m <= 0)
    return SB_UNREADABLE;
  char* c = dup_n(config, cl);
  if (c == NULL) return SB_NO_MEMORY;
  *cluster = c;
  *cluster_len = cl;
  *timeout_ms = (uint64_t)t;
  *max_seconds = m;
  return SB_OK;
}

// ------------------------------------------------------------------------------ SipHash-2-4

// Written for the cache's hot path: the state stays in registers (everything inlined) and whole
// words are read with one load.
#define SB_INLINE static inline __attribute__((always_inline))

SB_INLINE uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

typedef struct {
  uint64_t v0, v1, v2, v3;
  uint64_t tail; // bytes not yet in a full word, little-endian
  size_t total;
} sip_state;

SB_INLINE void sip_round(sip_state* s) {
  s->v0 += s->v1; s->v1 = rotl(s->v1, 13); s->v1 ^= s->v0; s->v0 = rotl(s->v0, 32);
  s->v2 += s->v3; s->v3 = rotl(s->v3, 16); s->v3 ^= s->v2;
  s->v0 += s->v3; s->v3 = rotl(s->v3, 21); s->v3 ^= s->v0;
  s->v2 += s->v1; s->v1 = rotl(s->v1, 17); s->v1 ^= s->v2; s->v2 = rotl(s->v2, 32);
}

SB_INLINE void sip_word(sip_state* s, uint64_t m) {
  s->v3 ^= m;
  sip_round(s);
  sip_round(s);
  s->v0 ^= m;
}

SB_INLINE uint64_t le64(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

SB_INLINE void sip_bytes(sip_state* s, const unsigned char* p, size_t n) {
  size_t i = 0;
  // Top up a partial word first, then whole words straight from the input, then the rest.
  while (i < n && s->total % 8 != 0) {
    s->tail |= (uint64_t)p[i++] << (8 * (s->total % 8));
    if (++s->total % 8 == 0) {
      sip_word(s, s->tail);
      s->tail = 0;
    }
  }
  size_t words = (n - i) & ~(size_t)7;
  for (size_t end = i + words; i < end; i += 8) sip_word(s, le64(p + i));
  s->total += words;
  for (; i < n; i++) {
    s->tail |= (uint64_t)p[i] << (8 * (s->total % 8));
    s->total++;
  }
}

uint64_t sb_siphash(const uint8_t key[16], const char* a, size_t an, const char* b, size_t bn) {
  uint64_t k0 = le64(key), k1 = le64(key + 8);
  sip_state s = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull, k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull, 0, 0};
  const unsigned char sep = '\n';
  sip_bytes(&s, (const unsigned char*)a, an);
  sip_bytes(&s, &sep, 1);
  sip_bytes(&s, (const unsigned char*)b, bn);
  sip_word(&s, s.tail | ((uint64_t)(s.total & 0xff) << 56));
  s.v2 ^= 0xff;
  for (int i = 0; i < 4; i++) sip_round(&s);
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

// ------------------------------------------------------------------------------ memory of allows

int sb_cache_init(sb_cache* c, size_t n_buckets, const uint8_t key[16]) {
  memset(c, 0, sizeof *c);
  if (n_buckets == 0 || (n_buckets & (n_buckets - 1)) != 0) return SB_UNREADABLE;
  c->buckets = calloc(n_buckets, sizeof *c->buckets);
  if (c->buckets == NULL) return SB_NO_MEMORY;
  c->n_buckets = n_buckets;
  memcpy(c->key, key, 16);
  return SB_OK;
}

static void free_entry(sb_entry* e) {
  free(e->key);
  sb_allow_free(&e->answer);
  free(e);
}

void sb_cache_clear(sb_cache* c) {
  for (size_t i = 0; i < c->n_buckets; i++) {
    for (sb_entry* e = c->buckets[i]; e != NULL;) {
      sb_entry* next = e->next;
      free_entry(e);
      e = next;
    }
    c->buckets[i] = NULL;
  }
  c->n = 0;
  c->bytes = 0;
}

void sb_cache_destroy(sb_cache* c) {
  if (c->buckets != NULL) sb_cache_clear(c);
  free(c->buckets);
  memset(c, 0, sizeof *c);
}

static sb_entry* find(sb_cache* c, uint64_t h, const char* version, size_t vl, const char* raw, size_t rl) {
  for (sb_entry* e = c->buckets[h & (c->n_buckets - 1)]; e != NULL; e = e->next)
    if (e->hash == h && e->key_len == vl + 1 + rl && memcmp(e->key, version, vl) == 0 && (rl == 0 || memcmp(e->key + vl + 1, raw, rl) == 0))
      return e;
  return NULL;
}

sb_entry* sb_cache_get(sb_cache* c, const char* version, size_t vl, const char* raw, size_t rl) {
  return find(c, sb_siphash(c->key, version, vl, raw, rl), version, vl, raw, rl);
}

static size_t answer_cost(const sb_allow* a) { return a->blob_len + 1 + (a->n_changes + 1) * sizeof(sb_change); }

int sb_cache_put(sb_cache* c, const char* version, size_t vl, const char* raw, size_t rl, sb_allow* answer, int64_t from, int64_t last,
                 int policy) {
  uint64_t h = sb_siphash(c->key, version, vl, raw, rl);
  sb_entry* e = find(c, h, version, vl, raw, rl);
  size_t key_len = vl + 1 + rl;
  size_t cost = sizeof(sb_entry) + key_len + answer_cost(answer);
  if (cost > SB_CACHE_MAX_BYTES) {
    sb_allow_free(answer);
    return SB_UNREADABLE;
  }
  if (e != NULL) {
    // The same token again (a new window): the old answer goes, the new one is counted instead.
    c->bytes -= e->cost;
    if (c->bytes + cost > SB_CACHE_MAX_BYTES) {
      c->bytes += e->cost;
      sb_cache_clear(c);
      e = NULL;
    } else {
      sb_allow_free(&e->answer);
    }
  }
  if (e == NULL) {
    if (c->n >= SB_CACHE_MAX_N || c->bytes + cost > SB_CACHE_MAX_BYTES) sb_cache_clear(c);
    e = calloc(1, sizeof *e);
    char* key = malloc(key_len);
    if (e == NULL || key == NULL) {
      free(e);
      free(key);
      sb_allow_free(answer);
      return SB_NO_MEMORY;
    }
    memcpy(key, version, vl);
    key[vl] = '\n';
    if (rl > 0) memcpy(key + vl + 1, raw, rl);
    e->key = key;
    e->key_len = key_len;
    e->hash = h;
    e->next = c->buckets[h & (c->n_buckets - 1)];
    c->buckets[h & (c->n_buckets - 1)] = e;
    c->n++;
  }
  e->cost = cost;
  c->bytes += cost;
  e->from = from;
  e->last = last;
  e->policy = policy;
  e->answer = *answer;
  memset(answer, 0, sizeof *answer);
  return SB_OK;
}
