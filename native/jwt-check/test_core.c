// Unit tests of jwt_core.c: the answer readers, the route and filter config readers, SipHash, and
// the memory of allows with its bounds. Built and run (under ASan/UBSan) by check.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt_core.h"

static int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                    \
    }                                                                \
  } while (0)

static int eq(const char* p, size_t n, const char* want) { return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0; }

static int allow(const char* text, sb_allow* a) { return sb_read_allow(text, strlen(text), a); }
static int deny(const char* text, sb_deny* d) { return sb_read_deny(text, strlen(text), d); }

static void test_allow(void) {
  sb_allow a;
  CHECK(allow("allow\ncache - 200\nset x-user-id alice\nremove x-email\n", &a) == SB_OK);
  CHECK(a.has_window && a.first == INT64_MIN && a.last == 200);
  CHECK(a.n_changes == 2);
  CHECK(eq(a.changes[0].name, a.changes[0].name_len, "x-user-id") && eq(a.changes[0].value, a.changes[0].value_len, "alice"));
  CHECK(eq(a.changes[1].name, a.changes[1].name_len, "x-email") && a.changes[1].value == NULL);
  sb_allow_free(&a);

  CHECK(allow("allow\ncache 100 200\nset x-scope read write\n", &a) == SB_OK);
  CHECK(a.first == 100 && a.last == 200);
  CHECK(eq(a.changes[0].value, a.changes[0].value_len, "read write")); // a value may hold spaces
  sb_allow_free(&a);

  CHECK(allow("allow\n", &a) == SB_OK && !a.has_window && a.n_changes == 0);
  sb_allow_free(&a);
  CHECK(allow("allow\nset x-empty \n", &a) == SB_OK && a.changes[0].value_len == 0);
  sb_allow_free(&a);
  CHECK(allow("allow\nsomething new\ncache -5 -1", &a) == SB_OK && a.first == -5 && a.last == -1); // unknown lines ignored; no final newline
  sb_allow_free(&a);

  // Unreadable: the whole answer is refused (the request fails closed).
  const char* bad[] = {
      "allo",                                  // not an allow
      "allow",                                 // no newline after allow
      "deny 401\n",                            // a deny
      "allow\nset x-user-id\n",                // no value
      "allow\nset  alice\n",                   // empty name
      "allow\nset x:y alice\n",                // not a token
      "allow\nset x-user-id al\rice\n",        // control character in the value
      "allow\nremove \n",                      // empty name
      "allow\nremove x y\n",                   // space in the name
      "allow\ncache 1\n",                      // one number
      "allow\ncache x 2\n",                    // not a number
      "allow\ncache 1 99999999999999999999\n", // past int64
      "allow\ncache 1 2x\n",                   //
      "allow\ncache - -\n",                    // the last second must be a number
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int r = allow(bad[i], &a);
    if (r != SB_UNREADABLE) fprintf(stderr, "expected unreadable: %s\n", bad[i]);
    CHECK(r == SB_UNREADABLE);
  }
  // A NUL inside a value is a control character too.
  static const char nul[] = "allow\nset x-a b\0c\n";
  CHECK(sb_read_allow(nul, sizeof nul - 1, &a) == SB_UNREADABLE);
  // The extremes of int64.
  CHECK(allow("allow\ncache -9223372036854775808 9223372036854775807\n", &a) == SB_OK && a.first == INT64_MIN && a.last == INT64_MAX);
  sb_allow_free(&a);
  CHECK(allow("allow\ncache -9223372036854775809 1\n", &a) == SB_UNREADABLE);
}

static void test_deny(void) {
  sb_deny d;
  CHECK(deny("deny 401\nheader www-authenticate Bearer error=\"invalid_token\"\nbody\n{\"error\":\"expired\"}", &d) == SB_OK);
  CHECK(d.status == 401 && d.n_headers == 1);
  CHECK(eq(d.headers[0].name, d.headers[0].name_len, "www-authenticate"));
  CHECK(eq(d.headers[0].value, d.headers[0].value_len, "Bearer error=\"invalid_token\""));
  CHECK(eq(d.body, d.body_len, "{\"error\":\"expired\"}"));
  CHECK(deny("deny 403\nbody\n", &d) == SB_OK && d.status == 403 && d.body != NULL && d.body_len == 0);
  CHECK(deny("deny 503", &d) == SB_OK && d.status == 503 && d.body == NULL);
  CHECK(deny("deny 401\nbody\nline one\nline two\n", &d) == SB_OK && eq(d.body, d.body_len, "line one\nline two\n"));
  // More headers than kept: the first 16.
  char many[4096] = "deny 429\n";
  for (int i = 0; i < 20; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "header x-h%d v\n", i);
  strcat(many, "body\n");
  CHECK(deny(many, &d) == SB_OK && d.n_headers == SB_MAX_DENY_HEADERS);
  const char* bad[] = {"deny 42\nbody\n", "deny 4011\n", "deny 199\n", "deny 600\n", "deny abc\n", "deny\n", "", "allow\n",
                       "deny 401\nheader www-authenticate\nbody\n", "deny 401\nheader bad:name v\n", "deny 401x\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int r = deny(bad[i], &d);
    if (r != SB_UNREADABLE) fprintf(stderr, "expected unreadable: %s\n", bad[i]);
    CHECK(r == SB_UNREADABLE);
  }
}

static void test_config(void) {
  sb_route_check r;
  CHECK(sb_read_route_check("skip", 4, &r) == SB_OK && r.skip);
  sb_route_check_free(&r);
  const char* ok = "users%2Fv1 authorization 0123abcd";
  CHECK(sb_read_route_check(ok, strlen(ok), &r) == SB_OK && !r.skip);
  CHECK(eq(r.policy, r.policy_len, "users%2Fv1") && eq(r.header, r.header_len, "authorization") && eq(r.version, r.version_len, "0123abcd"));
  sb_route_check_free(&r);
  const char* bad[] = {"", "skip ", "a b", "a b c d", "a  c", " a b c", "a b c ", "a b:x c", "a\tb c"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECK(sb_read_route_check(bad[i], strlen(bad[i]), &r) == SB_UNREADABLE);

  char* cluster = NULL;
  size_t cl = 0;
  uint64_t t = 0;
  int64_t m = 0;
  CHECK(sb_read_filter_config("authz 700 300", 13, &cluster, &cl, &t, &m) == SB_OK && eq(cluster, cl, "authz") && t == 700 && m == 300);
  free(cluster);
  const char* badc[] = {"authz 700", "authz 0 300", "authz 700 -1", "authz x 300", "", "authz 700 300 1"};
  for (size_t i = 0; i < sizeof badc / sizeof *badc; i++) CHECK(sb_read_filter_config(badc[i], strlen(badc[i]), &cluster, &cl, &t, &m) == SB_UNREADABLE);
}

// SipHash-2-4 over one buffer, written straight from the paper, as the reference.
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); } while (0)
static uint64_t ref_siphash(const uint8_t k[16], const uint8_t* in, size_t len) {
  uint64_t k0 = 0, k1 = 0;
  for (int i = 7; i >= 0; i--) { k0 = (k0 << 8) | k[i]; k1 = (k1 << 8) | k[8 + i]; }
  uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1, v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
  size_t whole = len - len % 8;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t w = 0;
    for (int j = 7; j >= 0; j--) w = (w << 8) | in[i + (size_t)j];
    v3 ^= w; SIPROUND; SIPROUND; v0 ^= w;
  }
  uint64_t b = (uint64_t)(len & 0xff) << 56;
  for (size_t j = 0; j < len % 8; j++) b |= (uint64_t)in[whole + j] << (8 * j);
  v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
  v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND; SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static void test_siphash(void) {
  // SipHash-2-4 reference vector: key 00..0f, message 00..0e (15 bytes) -> 0xa129ca6149be45e5.
  uint8_t key[16];
  for (int i = 0; i < 16; i++) key[i] = (uint8_t)i;
  char msg[15];
  for (int i = 0; i < 15; i++) msg[i] = (char)i;
  // The hash covers a '\n' b: split the message around its byte 0x0a.
  CHECK(sb_siphash(key, msg, 10, msg + 11, 4) == 0xa129ca6149be45e5ull);
  // Against a plain one-buffer SipHash-2-4 (below), for every length and split up to 200 bytes:
  // the streaming word-at-a-time code agrees with it.
  char m[256];
  for (int i = 0; i < 256; i++) m[i] = (char)(i * 7 + 3);
  for (int n = 0; n <= 200; n++) {
    for (int k = 0; k <= n; k += (n < 20 ? 1 : 13)) {
      char whole[256];
      memcpy(whole, m, (size_t)k);
      whole[k] = '\n';
      memcpy(whole + k + 1, m + k, (size_t)(n - k));
      CHECK(sb_siphash(key, m, (size_t)k, m + k, (size_t)(n - k)) == ref_siphash(key, (const uint8_t*)whole, (size_t)n + 1));
    }
  }
  // The key matters.
  uint8_t other[16] = {1};
  CHECK(sb_siphash(key, "v", 1, "token", 5) != sb_siphash(other, "v", 1, "token", 5));
  CHECK(sb_siphash(key, "v", 1, "token", 5) == sb_siphash(key, "v", 1, "token", 5));
}

static sb_allow an_allow(const char* text) {
  sb_allow a;
  if (sb_read_allow(text, strlen(text), &a) != SB_OK) abort();
  return a;
}

static void test_cache(void) {
  uint8_t key[16] = {7};
  sb_cache c;
  CHECK(sb_cache_init(&c, 4, key) == SB_OK);
  sb_allow a = an_allow("allow\ncache - 100\nset x-user-id alice\n");
  CHECK(sb_cache_put(&c, "v1", 2, "Bearer a", 8, &a, INT64_MIN, 100, 0) == SB_OK);
  CHECK(a.blob == NULL); // taken over
  sb_entry* e = sb_cache_get(&c, "v1", 2, "Bearer a", 8);
  CHECK(e != NULL && e->last == 100 && e->answer.n_changes == 1);
  CHECK(sb_cache_get(&c, "v2", 2, "Bearer a", 8) == NULL);
  CHECK(sb_cache_get(&c, "v1", 2, "Bearer b", 8) == NULL);
  CHECK(sb_cache_get(&c, "v1\nBearer", 9, "a", 1) == NULL); // the key is version and value, not their concatenation
  // Every byte of the entry is counted: the entry, the key and the answer.
  size_t one = c.bytes;
  CHECK(one >= sizeof(sb_entry) + 2 + 1 + 8 + strlen("allow\ncache - 100\nset x-user-id alice\n"));
  // The same token again: replaced, counted once.
  a = an_allow("allow\ncache - 200\nset x-user-id alice\nremove x-email\n");
  CHECK(sb_cache_put(&c, "v1", 2, "Bearer a", 8, &a, INT64_MIN, 200, 0) == SB_OK);
  CHECK(c.n == 1 && c.bytes > one && sb_cache_get(&c, "v1", 2, "Bearer a", 8)->last == 200);
  // Past SB_CACHE_MAX_N entries: forgotten, then the new one kept.
  for (int i = 0; i < SB_CACHE_MAX_N + 5; i++) {
    char tok[32];
    int n = snprintf(tok, sizeof tok, "Bearer %d", i);
    a = an_allow("allow\ncache - 1\n");
    CHECK(sb_cache_put(&c, "v1", 2, tok, (size_t)n, &a, INT64_MIN, 1, 0) == SB_OK);
    CHECK(c.n <= SB_CACHE_MAX_N && c.bytes <= SB_CACHE_MAX_BYTES);
  }
  CHECK(c.n == 6); // (1 before) + 9,999 fill it; the next starts afresh, then 5 more
  // Past SB_CACHE_MAX_BYTES: a few large answers (the token is small, the answer is not).
  sb_cache_clear(&c);
  size_t big = 3u << 20;
  char* text = malloc(big + 64);
  strcpy(text, "allow\ncache - 1\nset x-big ");
  size_t at = strlen(text);
  memset(text + at, 'a', big);
  text[at + big] = '\n';
  text[at + big + 1] = 0;
  for (int i = 0; i < 4; i++) {
    char tok[8];
    int n = snprintf(tok, sizeof tok, "t%d", i);
    a = an_allow(text);
    CHECK(sb_cache_put(&c, "v", 1, tok, (size_t)n, &a, INT64_MIN, 1, 0) == SB_OK);
    CHECK(c.bytes <= SB_CACHE_MAX_BYTES);
  }
  CHECK(c.n == 2); // two 3 MiB answers fit in 8 MiB, a third starts afresh
  // An answer larger than the whole bound is not remembered at all.
  free(text);
  size_t huge = SB_CACHE_MAX_BYTES + 16;
  text = malloc(huge + 64);
  strcpy(text, "allow\nset x-big ");
  at = strlen(text);
  memset(text + at, 'a', huge);
  text[at + huge] = 0;
  a = an_allow(text);
  CHECK(sb_cache_put(&c, "v", 1, "huge", 4, &a, INT64_MIN, 1, 0) == SB_UNREADABLE);
  CHECK(c.bytes <= SB_CACHE_MAX_BYTES && sb_cache_get(&c, "v", 1, "huge", 4) == NULL);
  free(text);
  // An empty token value is a key like any other.
  a = an_allow("allow\ncache - 1\n");
  CHECK(sb_cache_put(&c, "v", 1, "", 0, &a, INT64_MIN, 1, 0) == SB_OK && sb_cache_get(&c, "v", 1, "", 0) != NULL);
  sb_cache_destroy(&c);
}

int main(void) {
  test_allow();
  test_deny();
  test_config();
  test_siphash();
  test_cache();
  if (failures) {
    fprintf(stderr, "jwt_core: %d check(s) FAILED\n", failures);
    return 1;
  }
  printf("jwt_core: all unit checks passed\n");
  return 0;
}
