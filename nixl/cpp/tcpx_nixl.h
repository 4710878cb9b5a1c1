// The C interface between the C++ shim (shim.cc) and the Rust backend (src/ffi/).
//
// Only plain C types cross it: descriptor lists are flattened into TcpxDesc arrays, strings
// are pointer + length (not NUL-terminated, may hold any bytes), metadata and request handles
// are integers the Rust side chooses (never 0), and output strings are handed back through
// callbacks that copy into C++ objects. Every Rust function catches panics and every callback
// catches C++ exceptions, so neither unwinds across this boundary. Return values of type
// int32_t are nixl_status_t values.
#pragma once

#include <stddef.h>
#include <stdint.h>
#ifndef __cplusplus
#include <stdbool.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Opaque Rust `Backend`.
typedef struct TcpxBackend TcpxBackend;

// One descriptor of a flattened list; `md` is 0 for descriptors that carry no metadata.
typedef struct TcpxDesc {
    uint64_t addr;
    uint64_t len;
    uint64_t dev_id;
    uintptr_t md;
} TcpxDesc;

// Byte string borrowed for the duration of one call.
typedef struct TcpxStr {
    const uint8_t* ptr;
    size_t len;
} TcpxStr;

// One custom backend parameter.
typedef struct TcpxParam {
    TcpxStr key;
    TcpxStr value;
} TcpxParam;

// The optional arguments of prep/post: has_notif set means `notif` is to be delivered.
typedef struct TcpxXferOpts {
    bool has_notif;
    TcpxStr notif;
} TcpxXferOpts;

// Copies bytes into a C++ string; false if C++ could not (allocation failure).
typedef bool (*TcpxBytesSink)(void* ctx, const uint8_t* ptr, size_t len);
// Appends one (key, value) or (agent, message) pair; false on failure.
typedef bool (*TcpxPairSink)(void* ctx, TcpxStr a, TcpxStr b);

// Plugin-level (no backend).
void tcpx_nixl_backend_options(TcpxPairSink sink, void* ctx);
bool tcpx_nixl_vram_supported(void);

// Lifetime. Returns NULL (after logging why) when the parameters are rejected.
TcpxBackend* tcpx_nixl_backend_create(TcpxStr agent, const TcpxParam* params, size_t n_params);
void tcpx_nixl_backend_destroy(TcpxBackend* be);
// The effective configuration as (option, value) pairs, for libnixl's getBackendParams.
int32_t tcpx_nixl_backend_params(const TcpxBackend* be, TcpxPairSink sink, void* ctx);

// Capabilities.
bool tcpx_nixl_supports_remote(const TcpxBackend* be);
bool tcpx_nixl_supports_local(const TcpxBackend* be);
bool tcpx_nixl_supports_notif(const TcpxBackend* be);

// Memory.
int32_t tcpx_nixl_register_mem(const TcpxBackend* be, const TcpxDesc* desc, TcpxStr meta,
                               int32_t mem, uintptr_t* out_md);
int32_t tcpx_nixl_deregister_mem(const TcpxBackend* be, uintptr_t md);
int32_t tcpx_nixl_get_public_data(const TcpxBackend* be, uintptr_t md, TcpxBytesSink sink,
                                  void* ctx);
int32_t tcpx_nixl_load_remote_md(const TcpxBackend* be, const TcpxDesc* desc, TcpxStr blob,
                                 int32_t mem, TcpxStr agent, uintptr_t* out_md);
int32_t tcpx_nixl_load_local_md(const TcpxBackend* be, uintptr_t md, uintptr_t* out_md);
int32_t tcpx_nixl_unload_md(const TcpxBackend* be, uintptr_t md);

// Peers.
int32_t tcpx_nixl_get_conn_info(const TcpxBackend* be, TcpxBytesSink sink, void* ctx);
int32_t tcpx_nixl_load_remote_conn_info(const TcpxBackend* be, TcpxStr agent, TcpxStr info);
int32_t tcpx_nixl_connect(const TcpxBackend* be, TcpxStr agent);
int32_t tcpx_nixl_disconnect(const TcpxBackend* be, TcpxStr agent);

// Transfers. `handle` is in/out: 0 before prep, the request id after; post may be handed the
// prepared id again (reposts).
int32_t tcpx_nixl_prep_xfer(const TcpxBackend* be, int32_t op, const TcpxDesc* local,
                            size_t n_local, int32_t local_mem, const TcpxDesc* remote,
                            size_t n_remote, int32_t remote_mem, TcpxStr agent,
                            const TcpxXferOpts* opts, uintptr_t* handle);
int32_t tcpx_nixl_post_xfer(const TcpxBackend* be, int32_t op, const TcpxDesc* local,
                            size_t n_local, int32_t local_mem, const TcpxDesc* remote,
                            size_t n_remote, int32_t remote_mem, TcpxStr agent,
                            const TcpxXferOpts* opts, uintptr_t* handle);
int32_t tcpx_nixl_check_xfer(const TcpxBackend* be, uintptr_t handle);
int32_t tcpx_nixl_release_req(const TcpxBackend* be, uintptr_t handle);

// Notifications.
int32_t tcpx_nixl_get_notifs(const TcpxBackend* be, TcpxPairSink sink, void* ctx);
int32_t tcpx_nixl_gen_notif(const TcpxBackend* be, TcpxStr agent, TcpxStr msg);

// Cost estimate of a transfer of `bytes` to `agent` (or of the prepared request `handle`, when
// not 0): expected duration and margin in microseconds.
int32_t tcpx_nixl_estimate_xfer_cost(const TcpxBackend* be, TcpxStr agent, uint64_t bytes,
                                     uintptr_t handle, int64_t* out_us, int64_t* out_margin_us);

// Implemented by the shim (C++), called from Rust: the plugin entry points and a self-check of
// the engine's vtable slot order (returns the number of mismatching slots).
void* tcpx_shim_plugin_init(void);
void tcpx_shim_plugin_fini(void);
size_t tcpx_shim_vtable_mismatches(void);

#ifdef __cplusplus
}  // extern "C"
#endif
