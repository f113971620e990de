// A time-bounded fuzz run of jwt_core.c under AddressSanitizer and UndefinedBehaviorSanitizer
// (built and run by check.sh; no libFuzzer needed). Inputs are random mutations of well-formed
// answers and route checks (byte flips, inserted newlines, spaces, NULs and digits, cuts, splices),
// fed to every reader; readable allows go into a small cache whose count and byte bounds are
// checked after every step. Any memory error, undefined behaviour or broken bound aborts.
// Usage: fuzz_core SECONDS [SEED]
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jwt_core.h"

static const char* SEEDS[] = {
    "allow\ncache - 1700000000\nset x-user-id alice\nremove x-email\n",
    "allow\ncache 1699999990 1700000000\nset x-scope read write\nset x-a b\n",
    "allow\n",
    "allow\ncache -9223372036854775808 9223372036854775807\n",
    "deny 401\nheader www-authenticate Bearer error=\"invalid_token\"\nbody\n{\"error\":\"expired\"}",
    "deny 503\nheader retry-after 5\nbody\n",
    "deny 403",
    "users%2Fv1 authorization 0123abcdef012345",
    "skip",
    "signalbox-authz 2000 300",
};
#define N_SEEDS (sizeof SEEDS / sizeof *SEEDS)

static uint64_t rng_state;
static uint64_t rnd(void) {
  // xorshift64*
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

static size_t mutate(char* buf, size_t len, size_t cap) {
  int steps = 1 + (int)(rnd() % 6);
  for (int s = 0; s < steps; s++) {
    size_t at = len ? rnd() % (len + 1) : 0;
    switch (rnd() % 8) {
      case 0: if (len) buf[rnd() % len] ^= (char)(1u << (rnd() % 8)); break;
      case 1: case 2: { // insert a byte that matters to the readers
        static const char interesting[] = "\n \0-0123456789\t\r:set remove cache header body deny allow";
        if (len < cap) { memmove(buf + at + 1, buf + at, len - at); buf[at] = interesting[rnd() % (sizeof interesting - 1)]; len++; }
        break;
      }
      case 3: if (len) { size_t n = rnd() % (len - (at < len ? at : len - 1) + 1); if (at < len) { memmove(buf + at, buf + at + n, len - at - n); len -= n; } } break;
      case 4: len = at; break; // cut
      case 5: { // splice another seed in
        const char* o = SEEDS[rnd() % N_SEEDS];
        size_t ol = strlen(o), from = rnd() % (ol + 1), n = rnd() % (ol - from + 1);
        if (len + n <= cap) { memmove(buf + at + n, buf + at, len - at); memcpy(buf + at, o + from, n); len += n; }
        break;
      }
      case 6: if (len) buf[rnd() % len] = (char)(rnd() & 0xff); break;
      case 7: { // repeat a run (long lines, many lines)
        size_t n = rnd() % 64;
        if (at + n <= len && len + n * 4 <= cap) for (int k = 0; k < 4; k++) { memmove(buf + at + n, buf + at, len - at); len += n; }
        break;
      }
    }
  }
  return len;
}

int main(int argc, char** argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 3;
  rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL) * 2654435761u + 1;
  if (rng_state == 0) rng_state = 1;
  uint64_t seed = rng_state;
  uint8_t key[16];
  for (int i = 0; i < 16; i++) key[i] = (uint8_t)rnd();
  sb_cache cache;
  if (sb_cache_init(&cache, 64, key) != SB_OK) return 2;
  enum { CAP = 1 << 14 };
  char* buf = malloc(CAP);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  unsigned long long runs = 0, readable = 0;
  for (;;) {
    if ((runs & 1023) == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) break;
    }
    runs++;
    const char* s = SEEDS[rnd() % N_SEEDS];
    size_t len = strlen(s);
    memcpy(buf, s, len);
    len = mutate(buf, len, CAP);
    // Exactly len bytes, in their own allocation: ASan sees any read past the end.
    char* in = malloc(len ? len : 1);
    memcpy(in, buf, len);

    sb_allow a;
    if (sb_read_allow(in, len, &a) == SB_OK) {
      readable++;
      for (size_t i = 0; i < a.n_changes; i++) {
        if (a.changes[i].name_len == 0 || a.changes[i].name < a.blob || a.changes[i].name + a.changes[i].name_len > a.blob + a.blob_len) abort();
        if (a.changes[i].value && a.changes[i].value + a.changes[i].value_len > a.blob + a.blob_len) abort();
      }
      char tok[16];
      int n = snprintf(tok, sizeof tok, "t%u", (unsigned)(rnd() % 300));
      int r = sb_cache_put(&cache, "v", 1, tok, (size_t)n, &a, a.first, a.last, 0);
      if (r == SB_OK && sb_cache_get(&cache, "v", 1, tok, (size_t)n) == NULL) abort();
      if (cache.n > SB_CACHE_MAX_N || cache.bytes > SB_CACHE_MAX_BYTES) abort();
    }
    sb_deny d;
    if (sb_read_deny(in, len, &d) == SB_OK) {
      readable++;
      if (d.status < 200 || d.status > 599 || d.n_headers > SB_MAX_DENY_HEADERS) abort();
      if (d.body && d.body + d.body_len != in + len) abort();
    }
    sb_route_check rc;
    if (sb_read_route_check(in, len, &rc) == SB_OK) {
      readable++;
      if (!rc.skip && (rc.policy_len == 0 || rc.header_len == 0 || rc.version_len == 0)) abort();
      sb_route_check_free(&rc);
    }
    char* cluster;
    size_t cl;
    uint64_t to;
    int64_t ms;
    if (sb_read_filter_config(in, len, &cluster, &cl, &to, &ms) == SB_OK) {
      readable++;
      if (to == 0 || ms <= 0) abort();
      free(cluster);
    }
    (void)sb_siphash(key, in, len, in, len / 2);
    free(in);
  }
  sb_cache_destroy(&cache);
  free(buf);
  printf("jwt_core fuzz: %llu inputs in %.0f s (%llu readable), seed %llu, no sanitizer report\n", runs, seconds, readable, (unsigned long long)seed);
  return 0;
}
