// The part of Envoy's dynamic-module ABI that Signalbox's JWT filter uses, declared by Signalbox.
//
// Envoy loads a dynamic module with dlopen, calls the module's event hooks (envoy_dynamic_module_on_*)
// and lets it call back into Envoy (envoy_dynamic_module_callback_*). Only the symbol names, the
// argument layouts and the numeric values of the few enumerations below matter to the loader, so
// this file states exactly those, for the two generations of the interface Signalbox builds for:
//
//   SB_ABI_PTRLEN   (Envoy 1.36): strings cross as (pointer, length) argument pairs; request
//                   headers are read and written with the *_request_header callbacks; Envoy
//                   accepts a module only when on_program_init returns Envoy's own ABI digest.
//   SB_ABI_BUFFERS  (Envoy 1.38 and later, ABI versions "v0.x"): strings cross as
//                   {pointer, length} structs passed by value; headers are read and written with
//                   one callback taking a header-map kind; callouts get their id from Envoy.
//
// Which generation, and which ABI version string, each Envoy release takes is written in
// envoy-versions.json (the project's one list of Envoy versions); scripts/provision-jwt-module.sh
// passes them in as SB_ABI_LAYOUT and SB_ABI_VERSION. Nothing here is taken from Envoy's sources:
// these are the published signatures, restated for the handful of functions the filter needs,
// and every Envoy version in envoy-versions.json is proven by the test suite to load this build
// and pass the JWT table (test/integration/jwt-module.test.ts).
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SB_ABI_PTRLEN 1
#define SB_ABI_BUFFERS 2

#ifndef SB_ABI_LAYOUT
#error "SB_ABI_LAYOUT must be SB_ABI_PTRLEN or SB_ABI_BUFFERS (see scripts/provision-jwt-module.sh)"
#endif
#ifndef SB_ABI_VERSION
#error "SB_ABI_VERSION must be the ABI version string of the Envoy the module is built for"
#endif

// ------------------------------------------------------------------------------ shared shapes

// Opaque handles. Envoy's objects are only ever passed back to Envoy; the module's are Signalbox's.
typedef void* sb_envoy_filter;         // one HTTP stream's filter, on Envoy's side
typedef void* sb_envoy_filter_config;  // one filter configuration, on Envoy's side
typedef const void* sb_module_ptr;     // anything the module hands Envoy to hand back later

// A byte range: who owns it depends on the call (see each use below).
typedef struct {
  const char* ptr;
  size_t len;
} sb_bytes;

// A header as a (name, value) pair of byte ranges.
typedef struct {
  const char* name;
  size_t name_len;
  const char* value;
  size_t value_len;
} sb_header;

// Return values of the request-headers hook (Envoy's FilterHeadersStatus order).
enum {
  SB_HEADERS_CONTINUE = 0,
  SB_HEADERS_STOP_ITERATION = 1,
  SB_HEADERS_STOP_ALL_AND_WATERMARK = 4,
};
// Return value "continue" of the body and trailer hooks.
enum { SB_CONTINUE = 0 };
// Log levels (Envoy's spdlog order).
enum { SB_LOG_WARN = 3 };
// Results of starting a callout, and of a finished one.
enum { SB_CALLOUT_INIT_SUCCESS = 0 };
enum { SB_CALLOUT_SUCCESS = 0 };
// The attribute "xds.route_name" (the same index in both generations).
enum { SB_ATTRIBUTE_XDS_ROUTE_NAME = 61 };

// ------------------------------------------------------------------------------ hooks (module)

const char* envoy_dynamic_module_on_program_init(void);

void envoy_dynamic_module_on_http_filter_config_destroy(sb_module_ptr config);
void envoy_dynamic_module_on_http_filter_per_route_config_destroy(sb_module_ptr config);
sb_module_ptr envoy_dynamic_module_on_http_filter_new(sb_module_ptr config, sb_envoy_filter filter);
void envoy_dynamic_module_on_http_filter_destroy(sb_module_ptr stream);
int envoy_dynamic_module_on_http_filter_request_headers(sb_envoy_filter f, sb_module_ptr stream, bool end_of_stream);
int envoy_dynamic_module_on_http_filter_request_body(sb_envoy_filter f, sb_module_ptr stream, bool end_of_stream);
int envoy_dynamic_module_on_http_filter_request_trailers(sb_envoy_filter f, sb_module_ptr stream);
int envoy_dynamic_module_on_http_filter_response_headers(sb_envoy_filter f, sb_module_ptr stream, bool end_of_stream);
int envoy_dynamic_module_on_http_filter_response_body(sb_envoy_filter f, sb_module_ptr stream, bool end_of_stream);
int envoy_dynamic_module_on_http_filter_response_trailers(sb_envoy_filter f, sb_module_ptr stream);
void envoy_dynamic_module_on_http_filter_stream_complete(sb_envoy_filter f, sb_module_ptr stream);
void envoy_dynamic_module_on_http_filter_scheduled(sb_envoy_filter f, sb_module_ptr stream, uint64_t event);

// ------------------------------------------------------------------------------ callbacks (Envoy)

sb_module_ptr envoy_dynamic_module_callback_get_most_specific_route_config(sb_envoy_filter f);
void envoy_dynamic_module_callback_http_filter_continue_decoding(sb_envoy_filter f);

#if SB_ABI_LAYOUT == SB_ABI_PTRLEN

// Hooks whose arguments differ between the generations.
sb_module_ptr envoy_dynamic_module_on_http_filter_config_new(sb_envoy_filter_config envoy_config, const char* name, size_t name_len,
                                                             const char* config, size_t config_len);
sb_module_ptr envoy_dynamic_module_on_http_filter_per_route_config_new(const char* name, size_t name_len, const char* config,
                                                                       size_t config_len);
// headers and body_chunks are Envoy's, valid during the call.
void envoy_dynamic_module_on_http_filter_http_callout_done(sb_envoy_filter f, sb_module_ptr stream, uint32_t callout_id, int result,
                                                           const sb_header* headers, size_t n_headers, const sb_bytes* body_chunks,
                                                           size_t n_chunks);

void envoy_dynamic_module_callback_log(int level, const char* message, size_t message_len);
// The index-th value of a request header (Envoy's bytes, valid until the headers change) and how
// many values it has (0: absent).
size_t envoy_dynamic_module_callback_http_get_request_header(sb_envoy_filter f, const char* name, size_t name_len, const char** value,
                                                             size_t* value_len, size_t index);
// value NULL: remove the header.
bool envoy_dynamic_module_callback_http_set_request_header(sb_envoy_filter f, const char* name, size_t name_len, const char* value,
                                                           size_t value_len);
void envoy_dynamic_module_callback_http_send_response(sb_envoy_filter f, uint32_t status, const sb_header* headers, size_t n_headers,
                                                      const char* body, size_t body_len);
// The module picks the callout's id.
int envoy_dynamic_module_callback_http_filter_http_callout(sb_envoy_filter f, uint32_t callout_id, const char* cluster, size_t cluster_len,
                                                           const sb_header* headers, size_t n_headers, const char* body, size_t body_len,
                                                           uint64_t timeout_ms);
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(sb_envoy_filter f, int attribute, const char** value, size_t* value_len);

#elif SB_ABI_LAYOUT == SB_ABI_BUFFERS

// Kinds of header map for the header callbacks.
enum { SB_REQUEST_HEADERS = 0 };

sb_module_ptr envoy_dynamic_module_on_http_filter_config_new(sb_envoy_filter_config envoy_config, sb_bytes name, sb_bytes config);
sb_module_ptr envoy_dynamic_module_on_http_filter_per_route_config_new(sb_bytes name, sb_bytes config);
void envoy_dynamic_module_on_http_filter_http_callout_done(sb_envoy_filter f, sb_module_ptr stream, uint64_t callout_id, int result,
                                                           const sb_header* headers, size_t n_headers, const sb_bytes* body_chunks,
                                                           size_t n_chunks);

void envoy_dynamic_module_callback_log(int level, sb_bytes message);
// The index-th value of a header (Envoy's bytes) into *value; *count (if not NULL) gets how many
// values the header has. False when there is no such value.
bool envoy_dynamic_module_callback_http_get_header(sb_envoy_filter f, int kind, sb_bytes name, sb_bytes* value, size_t index,
                                                   size_t* count);
// An empty value removes the header.
bool envoy_dynamic_module_callback_http_set_header(sb_envoy_filter f, int kind, sb_bytes name, sb_bytes value);
void envoy_dynamic_module_callback_http_send_response(sb_envoy_filter f, uint32_t status, const sb_header* headers, size_t n_headers,
                                                      sb_bytes body, sb_bytes details);
// Envoy picks the callout's id and writes it to *callout_id.
int envoy_dynamic_module_callback_http_filter_http_callout(sb_envoy_filter f, uint64_t* callout_id, sb_bytes cluster,
                                                           const sb_header* headers, size_t n_headers, sb_bytes body, uint64_t timeout_ms);
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(sb_envoy_filter f, int attribute, sb_bytes* value);

// Hooks this generation requires of every HTTP filter module, which the JWT filter has no use for
// (streamed callouts; it never starts one).
void envoy_dynamic_module_on_http_filter_http_stream_headers(sb_envoy_filter f, sb_module_ptr stream, uint64_t id, const sb_header* headers,
                                                             size_t n_headers, bool end_of_stream);
void envoy_dynamic_module_on_http_filter_http_stream_data(sb_envoy_filter f, sb_module_ptr stream, uint64_t id, const sb_bytes* data,
                                                          size_t n_data, bool end_of_stream);
void envoy_dynamic_module_on_http_filter_http_stream_trailers(sb_envoy_filter f, sb_module_ptr stream, uint64_t id, const sb_header* trailers,
                                                              size_t n_trailers);
void envoy_dynamic_module_on_http_filter_http_stream_complete(sb_envoy_filter f, sb_module_ptr stream, uint64_t id);
void envoy_dynamic_module_on_http_filter_http_stream_reset(sb_envoy_filter f, sb_module_ptr stream, uint64_t id, int reason);
// (and downstream flow control, for filters that answer themselves)
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(sb_envoy_filter f, sb_module_ptr stream);
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(sb_envoy_filter f, sb_module_ptr stream);

#else
#error "unknown SB_ABI_LAYOUT"
#endif
