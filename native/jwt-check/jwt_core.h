// The parts of Signalbox's JWT filter that do not touch Envoy: reading the service's answers and
// the route checks, and the per-worker memory of allows. Kept apart from jwt_check.c so that they
// are unit-tested and fuzzed on their own (native/jwt-check/check.sh, run by `npm test`).
// The formats read here are specified in docs/jwt-fast-path-protocol.md (protocol version 1).
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SB_CACHE_MAX_N 10000
#define SB_CACHE_MAX_BYTES (8u << 20)
#define SB_MAX_DENY_HEADERS 16

// A header change an allow makes: set name to value, or remove name (value NULL).
typedef struct {
  const char* name;
  size_t name_len;
  const char* value; // NULL: remove
  size_t value_len;
} sb_change;

// An allow: its header changes, and the window (Unix seconds, both ends included) during which
// the same token gets the same answer, if the answer judged a token.
typedef struct {
  sb_change* changes;
  size_t n_changes;
  char* blob; // owns the names and values the changes point into
  size_t blob_len;
  int has_window;
  int64_t first; // INT64_MIN: no lower bound
  int64_t last;
} sb_allow;

// A refusal: the status, headers and body the client gets. Points into the answer it was read from.
typedef struct {
  unsigned status;
  struct {
    const char* name;
    size_t name_len;
    const char* value;
    size_t value_len;
  } headers[SB_MAX_DENY_HEADERS];
  size_t n_headers;
  const char* body; // NULL: no body line
  size_t body_len;
} sb_deny;

// A route's check: "skip", or "<policy> <header> <version>" (three non-empty runs of printable
// characters without spaces).
typedef struct {
  int skip;
  char* policy;
  size_t policy_len;
  char* header;
  size_t header_len;
  char* version;
  size_t version_len;
} sb_route_check;

// Results of the readers.
#define SB_OK 1
#define SB_UNREADABLE 0
#define SB_NO_MEMORY (-1)

// An answer starting "allow\n". Unknown lines are ignored; a set or remove line that is not a
// header name (and value) Envoy would take, or a cache line that is not two numbers, makes the
// whole answer unreadable. On SB_OK the caller owns out (sb_allow_free).
int sb_read_allow(const char* body, size_t len, sb_allow* out);
void sb_allow_free(sb_allow* a);

// An answer starting "deny <status>\n": status 200 to 599, "header <name> <value>" lines (the
// first SB_MAX_DENY_HEADERS are kept), then "body\n" and the body to the end.
int sb_read_deny(const char* body, size_t len, sb_deny* out);

// A route's per-route config. On SB_OK the caller owns out (sb_route_check_free).
int sb_read_route_check(const char* config, size_t len, sb_route_check* out);
void sb_route_check_free(sb_route_check* r);

// The filter's config: "<cluster> <timeout ms> <max seconds>", each positive.
int sb_read_filter_config(const char* config, size_t len, char** cluster, size_t* cluster_len, uint64_t* timeout_ms,
                          int64_t* max_seconds);

// SipHash-2-4 of a || '\n' || b under a 128-bit key.
uint64_t sb_siphash(const uint8_t key[16], const char* a, size_t an, const char* b, size_t bn);

// ------------------------------------------------------------------------------ memory of allows

typedef struct sb_entry {
  struct sb_entry* next;
  uint64_t hash;
  char* key; // version '\n' header value
  size_t key_len;
  size_t cost; // bytes counted against SB_CACHE_MAX_BYTES: the entry, its key and its answer
  int64_t from, last;
  int policy;
  sb_allow answer;
} sb_entry;

typedef struct {
  sb_entry** buckets;
  size_t n_buckets; // a power of two
  size_t n, bytes;
  uint8_t key[16]; // the hash key: random per worker, so no client can aim at one bucket
} sb_cache;

int sb_cache_init(sb_cache* c, size_t n_buckets, const uint8_t key[16]);
void sb_cache_clear(sb_cache* c);
void sb_cache_destroy(sb_cache* c);
sb_entry* sb_cache_get(sb_cache* c, const char* version, size_t version_len, const char* raw, size_t raw_len);
// Remembers answer (taken over: on any result the cache owns or frees it) for (version, raw)
// between from and last. Before an entry that would pass SB_CACHE_MAX_N entries or
// SB_CACHE_MAX_BYTES bytes, everything is forgotten. Returns SB_OK, or SB_NO_MEMORY (nothing
// remembered, the request is unaffected), or SB_UNREADABLE for an entry larger than the bound.
int sb_cache_put(sb_cache* c, const char* version, size_t version_len, const char* raw, size_t raw_len, sb_allow* answer,
                 int64_t from, int64_t last, int policy);
