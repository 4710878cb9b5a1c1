/*
 * tcpx.h — C API of the tcpx engine (libtcpx_p2p.so / libtcpx_p2p.a).
 *
 * A session is C channels to one peer over an ncclNet plugin (the embedded TCP transport
 * `tcpxsock` by default, or GPUDirect-TCPX). Setup is symmetric: both sides tcpx_listen(),
 * swap the bytes of tcpx_listener_conn_info() out of band, then both call
 * tcpx_listener_connect() concurrently. Transfers are batches of segments that both peers
 * post as mirror images (TCPX_SEND here, TCPX_RECV there, same lengths in the same order),
 * then drive with tcpx_transfer_poll() until done.
 *
 * Status codes: every int-returning function returns TCPX_OK (0) or a negative TCPX_ERR_*
 * code; tcpx_transfer_poll() and tcpx_progress() also return 1. On failure the calling
 * thread's tcpx_last_error() describes it. No function unwinds or aborts on bad input: NULL
 * handles and NULL out-pointers are rejected with TCPX_ERR_INVALID (the destroy functions
 * accept NULL and do nothing, like free()).
 *
 * Threads: a handle (listener or session) is used by one thread at a time; it may move
 * between threads. Different sessions may be used concurrently from different threads.
 * post, poll, wait, release and progress allocate no memory on success.
 *
 * Environment: the embedded plugin reads TCPX_SOCK_* at init, e.g. TCPX_SOCK_IFNAME=lo keeps
 * it on loopback. tcpx_config_from_env() reads TCPX_PLUGIN, TCPX_DEVICE, TCPX_CHANNELS,
 * TCPX_CHUNK_BYTES, TCPX_WINDOW, TCPX_TIMEOUT_MS, TCPX_GPU.
 */
#ifndef TCPX_H
#define TCPX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define TCPX_OK 0
/** Bad argument: NULL pointer, unknown or stale id, segment outside its region, bad enum. */
#define TCPX_ERR_INVALID (-1)
/** The handshake or tcpx_transfer_wait() did not finish within its bound. */
#define TCPX_ERR_TIMEOUT (-2)
/** The ncclNet plugin is missing, not loadable, or one of its calls failed. */
#define TCPX_ERR_PLUGIN (-3)
/** The session stopped working after an earlier failure; destroy it. */
#define TCPX_ERR_BROKEN (-4)
/** Not offered by this build or plugin (e.g. CUDA memory on a plugin without CUDA support). */
#define TCPX_ERR_UNSUPPORTED (-5)
/** A configuration value (struct field or environment variable) is out of range. */
#define TCPX_ERR_CONFIG (-6)
/** The peer's data breaks the protocol (bad connection info, channel count mismatch). */
#define TCPX_ERR_PROTOCOL (-7)
/** An operating-system I/O error. */
#define TCPX_ERR_IO (-8)
/** A bug inside the library was caught; the call was abandoned. */
#define TCPX_ERR_PANIC (-9)
/** A CUDA failure: no driver, context, unpack kernel load or launch, event. */
#define TCPX_ERR_GPU (-10)

/* Memory kinds for tcpx_register(). */
#define TCPX_MEM_HOST 0
#define TCPX_MEM_CUDA 1

/* Directions for tcpx_transfer_post(). */
#define TCPX_SEND 0
#define TCPX_RECV 1

/** Opaque: the first half of the handshake. */
typedef struct tcpx_listener_t tcpx_listener_t;
/** Opaque: a connected session to one peer. */
typedef struct tcpx_session_t tcpx_session_t;

/** Engine configuration. Fill it with tcpx_config_default() or tcpx_config_from_env(),
 *  then change fields; both peers must use the same channels. 48 bytes. */
typedef struct tcpx_config_t {
    uint32_t channels;      /**< send+recv comm pairs per session, 1..16 (default 2) */
    uint32_t chunk_bytes;   /**< bytes per network request, 1..4 MiB (default 512 KiB) */
    uint32_t window;        /**< in-flight chunks per channel and direction, 1..16 */
    uint32_t max_transfers; /**< transfers live at once per session, 1..4096 (default 64) */
    uint32_t max_segments;  /**< segments per transfer, 1..1024 (default 1024) */
    int32_t device;         /**< plugin device (NIC) of every channel: an index, -1 = auto
                                 (default: the NIC(s) nearest the session's GPU, or the
                                 NUMA-local ones for host memory), -2 = all (every usable NIC,
                                 nearest first); env TCPX_DEVICE / TCPX_DEVICES */
    uint64_t timeout_ms;    /**< bound on the handshake and on a silent peer (default 10000) */
    const char *plugin;     /**< ncclNet plugin path; NULL or "" = embedded tcpxsock. Read
                                 during tcpx_listen() only; the caller keeps ownership. */
    int32_t gpu;            /**< the session's CUDA device, made current around the handshake
                                 and CUDA registrations (TCPX binds comms and registrations to
                                 the calling thread's current GPU); -1 = the device current on
                                 the thread calling tcpx_listen() (default; env TCPX_GPU) */
    uint32_t split_chunks;  /**< a transfer shorter than this many chunks is cut into about
                                 this many smaller ones (at least 128 KiB), 1..64, 1 = never;
                                 a session uses the smaller of its two ends' values; 0 = the
                                 default (8 on a host with >= 8 CPUs, else 1); env
                                 TCPX_SPLIT_CHUNKS. Was `reserved` (zero) before wire v5. */
} tcpx_config_t;

/** One contiguous piece of a transfer. 32 bytes. */
typedef struct tcpx_segment_t {
    uint64_t mem;           /**< local region id from tcpx_register() */
    uint64_t offset;        /**< offset inside that region */
    uint64_t remote_offset; /**< offset at the peer (bookkeeping; peers match by order) */
    uint64_t len;           /**< bytes; 0 moves nothing */
} tcpx_segment_t;

/** Fills *cfg with the defaults (plugin = NULL). Any thread. */
int tcpx_config_default(tcpx_config_t *cfg);

/** Fills *cfg with the defaults overridden by the TCPX_* environment variables;
 *  TCPX_ERR_CONFIG names a bad one. cfg->plugin, if set, points to a string owned by the
 *  library that lives until the process exits. Any thread. */
int tcpx_config_from_env(tcpx_config_t *cfg);

/** Opens the configured plugin and one listen comm per channel; *listener receives a new
 *  handle (NULL on failure) that the caller owns: pass it to tcpx_listener_connect() or
 *  tcpx_listener_destroy(). *cfg is only read during the call. */
int tcpx_listen(const tcpx_config_t *cfg, tcpx_listener_t **listener);

/** Points *data and *len at the bytes the peer needs. They belong to the listener and stay
 *  valid until it is connected or destroyed: copy them before handing them over. */
int tcpx_listener_conn_info(const tcpx_listener_t *l, const uint8_t **data, size_t *len);

/** Frees a listener that will not be connected. NULL does nothing. */
void tcpx_listener_destroy(tcpx_listener_t *l);

/** Completes the handshake: connects to the peer's conn info while accepting the peer's
 *  connects, blocking until both directions exist or cfg.timeout_ms passes (TCPX_ERR_TIMEOUT).
 *  The peer must call this concurrently (another process, or another thread). CONSUMES l on
 *  every path, errors included: never use or destroy it afterwards. *session receives a new
 *  handle (NULL on failure) that the caller owns and frees with tcpx_session_destroy(). */
int tcpx_listener_connect(tcpx_listener_t *l, const uint8_t *peer, size_t len,
                          tcpx_session_t **session);

/** Closes every comm and frees the session; pending transfers are dropped and registered
 *  memory is released. NULL does nothing. */
void tcpx_session_destroy(tcpx_session_t *s);

/** Registers [ptr, ptr+len) of the given kind: TCPX_MEM_HOST (`device` ignored) or
 *  TCPX_MEM_CUDA on CUDA device `device` (TCPX_ERR_UNSUPPORTED if the plugin takes no CUDA
 *  pointers, TCPX_ERR_GPU if CUDA fails; a session drives one GPU). With a CUDA driver the
 *  range is checked against what it knows: CUDA memory must be device memory of `device`
 *  mapped for the whole length, host memory must not be device memory; a contradiction is
 *  TCPX_ERR_INVALID (the reason in tcpx_last_error()) and registers nothing. The memory stays owned
 *  by the caller and must stay valid until tcpx_deregister() returns or the session is
 *  destroyed. *mem_id receives the region id for tcpx_segment_t.mem. */
int tcpx_register(tcpx_session_t *s, void *ptr, size_t len, int kind, int device,
                  uint64_t *mem_id);

/** Releases a registration. TCPX_ERR_INVALID while a live transfer (posted and not finished,
 *  released-in-flight ones included) names it or chunks on it are in flight (poll or
 *  progress, then retry). */
int tcpx_deregister(tcpx_session_t *s, uint64_t mem_id);

/** Validates and queues a transfer of n segments (n <= cfg.max_segments; segs may be NULL
 *  when n is 0); *xfer receives its id. Every segment must lie inside its region, or the
 *  call fails with TCPX_ERR_INVALID and nothing is queued. segs is only read during the
 *  call. At most cfg.max_transfers transfers may be live (posted, not released). */
int tcpx_transfer_post(tcpx_session_t *s, int dir, const tcpx_segment_t *segs, size_t n,
                       uint64_t *xfer);

/** Drives every channel once, then reports on xfer: returns 1 when done (received bytes are
 *  in place), 0 while pending, < 0 on error (TCPX_ERR_BROKEN if the session broke).
 *  *bytes_done and *bytes_total receive the progress. Never blocks. */
int tcpx_transfer_poll(tcpx_session_t *s, uint64_t xfer, uint64_t *bytes_done,
                       uint64_t *bytes_total);

/** Polls xfer until it is done or timeout_ms passes (TCPX_ERR_TIMEOUT); *bytes receives
 *  its size. A convenience for simple programs; the peer must be progressing too. */
int tcpx_transfer_wait(tcpx_session_t *s, uint64_t xfer, uint64_t timeout_ms,
                       uint64_t *bytes);

/** Forgets xfer; its id becomes stale. One still in flight keeps moving into memory (it
 *  cannot be recalled) and its slot is reused once its last chunk completes. */
int tcpx_transfer_release(tcpx_session_t *s, uint64_t xfer);

/** Drives every channel once without looking at a particular transfer: returns 1 if
 *  anything moved, 0 if not, < 0 on error. */
int tcpx_progress(tcpx_session_t *s);

/** A static, never-NULL description of a status code. Any thread. */
const char *tcpx_strerror(int code);

/** The message of the last failed call on the calling thread, or "" if none failed. Never
 *  NULL; valid until the next failing call on this thread. Successful calls leave it. */
const char *tcpx_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* TCPX_H */
