/* A fake ncclNet plugin for tcpx's loader tests, compiled by the tests themselves.
 *
 * Build flags pick what it exports and what goes wrong:
 *   -DEXPORT_V7 / -DEXPORT_V10   export ncclNetPlugin_v7 / _v10 (both, one, or none)
 *   -DFAIL_INIT                  init logs a warning and returns ncclSystemError
 *   -DNDEVS=n                    number of devices (default 2)
 *   -DOFFLOAD_TYPE=t -DOFFLOAD_VERSION=v   netDeviceType / netDeviceVersion of every device
 *   -DFILL_DEV_HANDLE            accept fills the caller's device handle in place, as
 *                                GPUDirect-TCPX does (else it points the caller at its own);
 *                                a NULL one is refused with ncclInternalError, where TCPX
 *                                would crash
 *   -DNO_TEST_SIZES              test never writes the sizes (GPUDirect-TCPX)
 *   -DEXIT_IN_INIT               init calls exit(1) (GPUDirect-TCPX does when cuInit fails)
 *   -DUSE_DEP                    links against fake_dep.c: fake_counter("dep") is its answer
 * Data path: one process-wide in-memory wire; isend copies the payload into a queue, a recv
 * request completes when the queue has a message. The first isend returns a NULL request
 * ("busy") and connect/accept need two calls, so tests see tcpx's retry conventions. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NDEVS
#define NDEVS 2
#endif
#ifndef OFFLOAD_TYPE
#define OFFLOAD_TYPE 0
#endif
#ifndef OFFLOAD_VERSION
#define OFFLOAD_VERSION 0
#endif

typedef void (*logger_t)(int level, unsigned long flags, const char *file, int line,
                         const char *fmt, ...);
typedef struct {
    int type, version;
    void *handle;
    size_t size;
    int needs_proxy_progress;
} dev_handle_t;

typedef struct {
    char *name, *pci_path;
    uint64_t guid;
    int ptr_support, speed, port;
    float latency;
    int max_comms, max_recvs, dev_type, dev_version;
} props_v7_t;

typedef struct {
    char *name, *pci_path;
    uint64_t guid;
    int ptr_support, reg_is_global, force_flush, speed, port;
    float latency;
    int max_comms, max_recvs, dev_type, dev_version;
    struct { int ndevs; int devs[4]; } vprops;
    size_t max_p2p_bytes, max_coll_bytes;
} props_v10_t;

/* Counters the tests read through fake_counter(). */
static int n_close_send, n_close_recv, n_close_listen, n_dereg, n_consumed, n_isend_calls, n_iflush;
static int n_connect_calls, n_accept_calls;

#ifdef USE_DEP
int fake_dep_answer(void);
#endif

int fake_counter(const char *what) {
#ifdef USE_DEP
    if (!strcmp(what, "dep")) return fake_dep_answer();
#endif
    if (!strcmp(what, "closeSend")) return n_close_send;
    if (!strcmp(what, "closeRecv")) return n_close_recv;
    if (!strcmp(what, "closeListen")) return n_close_listen;
    if (!strcmp(what, "deregMr")) return n_dereg;
    if (!strcmp(what, "irecvConsumed")) return n_consumed;
    if (!strcmp(what, "iflush")) return n_iflush;
    return -1;
}

static int do_init(logger_t log) {
#ifdef EXIT_IN_INIT
    exit(1);
#endif
    if (log) log(3, 16, __FILE__, __LINE__, "fake init: %d devices, tag=%s, ratio=%.2f", NDEVS, "hello", 0.5);
#ifdef FAIL_INIT
    if (log) log(2, 16 | 1, __FILE__, __LINE__, "fake init refuses (errno %d)", 19);
    return 2;
#else
    return 0;
#endif
}
static int init_v7(logger_t log) { return do_init(log); }
static int init_v10(logger_t log, void *prof) { (void)prof; return do_init(log); }

static int devices(int *n) { *n = NDEVS; return 0; }

static char names[4][16] = {"fake0", "fake1", "fake2", "fake3"};
static char pci[4][48] = {"/sys/devices/pci0000:00/0000:00:04.0", "/sys/devices/pci0000:00/0000:00:05.0",
                          "/sys/devices/pci0000:00/0000:00:06.0", "/sys/devices/pci0000:00/0000:00:07.0"};

static int props_v7(int dev, props_v7_t *p) {
    if (dev < 0 || dev >= NDEVS) return 4;
    p->name = names[dev];
    p->pci_path = dev == 1 ? NULL : pci[dev];
    p->guid = 0xfa4e0000u + dev;
    p->ptr_support = 0x1 | 0x2;
    p->speed = 100000;
    p->port = dev + 1;
    p->latency = 0.5f;
    p->max_comms = 1024;
    p->max_recvs = 1;
    p->dev_type = OFFLOAD_TYPE;
    p->dev_version = OFFLOAD_VERSION;
    return 0;
}

static int props_v10(int dev, props_v10_t *p) {
    if (dev < 0 || dev >= NDEVS) return 4;
    p->name = names[dev];
    p->pci_path = pci[dev];
    p->guid = 0x10a0000u + dev;
    p->ptr_support = 0x1 | 0x2 | 0x4;
    p->reg_is_global = 1;
    p->force_flush = 0;
    p->speed = 400000;
    p->port = 1;
    p->latency = 2.0f;
    p->max_comms = 65536;
    p->max_recvs = 8;
    p->dev_type = OFFLOAD_TYPE;
    p->dev_version = OFFLOAD_VERSION;
    p->vprops.ndevs = 1;
    p->vprops.devs[0] = dev;
    p->max_p2p_bytes = (size_t)1 << 31;
    p->max_coll_bytes = (size_t)1 << 30;
    return 0;
}

/* ---- comms and the in-memory wire ---- */
typedef struct { int dev; int accepts; } listen_t;
typedef struct { int kind; int dev; } comm_t; /* 1 send, 2 recv; the device it was made on */
typedef struct { int send; void *data; size_t cap; int done; } req_t;

#define QUEUE 16
static struct { char *bytes; size_t len; } queue[QUEUE];
static int q_head, q_tail;
/* What an UNPACK device handle's `handle` points to (never dereferenced by tcpx's loader). */
static char unpack_stub[24];
static dev_handle_t recv_dev_handle = {OFFLOAD_TYPE, OFFLOAD_VERSION, unpack_stub, sizeof unpack_stub, 1};

static int do_listen(int dev, void *handle, void **comm) {
    listen_t *l = calloc(1, sizeof *l);
    l->dev = dev;
    snprintf(handle, 128, "fake-handle dev=%d", dev);
    *comm = l;
    return 0;
}

static int connect_common(int dev, void *handle, void **comm, dev_handle_t **dh) {
    (void)dh;
    if (strncmp(handle, "fake-handle", 11) != 0) return 4;
    /* First attempt "in progress": remember it in the handle, as real plugins do. */
    char *stage = (char *)handle + 127;
    n_connect_calls++;
    if (*stage == 0) { *stage = 1; *comm = NULL; return 0; }
    comm_t *c = calloc(1, sizeof *c);
    c->kind = 1;
    c->dev = dev;
    *comm = c;
    return 0;
}
static int connect_v7(int dev, void *handle, void **comm, dev_handle_t **dh) {
    return connect_common(dev, handle, comm, dh);
}
static int connect_v10(int dev, void *config, void *handle, void **comm, dev_handle_t **dh) {
    if (config == NULL || *(int *)config != -1) return 4; /* expects TRAFFIC_CLASS_UNDEF */
    return connect_common(dev, handle, comm, dh);
}

static int do_accept(void *listen, void **comm, dev_handle_t **dh) {
    listen_t *l = listen;
    n_accept_calls++;
    if (l->accepts++ == 0) { *comm = NULL; return 0; }
#ifdef FILL_DEV_HANDLE
    /* As NCCL's receive side: a handle of ours to fill, type and version preset. */
    if (dh == NULL || *dh == NULL) return 3;
    if ((*dh)->type != OFFLOAD_TYPE || (*dh)->version != OFFLOAD_VERSION) return 4;
#endif
    comm_t *c = calloc(1, sizeof *c);
    c->kind = 2;
    *comm = c;
#ifdef FILL_DEV_HANDLE
    (*dh)->handle = unpack_stub;
    (*dh)->size = sizeof unpack_stub;
    (*dh)->needs_proxy_progress = 1;
#else
    if (OFFLOAD_TYPE != 0 && dh) *dh = &recv_dev_handle;
#endif
    return 0;
}

static int reg_common(void *comm, void **mh) { *mh = comm; return 0; }
static int reg_v7(void *comm, void *data, int size, int type, void **mh) {
    (void)data; (void)size; (void)type; return reg_common(comm, mh);
}
static int reg_v10(void *comm, void *data, size_t size, int type, void **mh) {
    (void)data; (void)size; (void)type; return reg_common(comm, mh);
}
static int dereg(void *comm, void *mh) { n_dereg++; return comm == mh ? 0 : 3; }

static int send_common(void *comm, void *data, size_t size, void *mh, void **req) {
    if (mh != comm) return 4;
#ifdef FAIL_DEV
    /* A NIC that died: every send on it fails as a dead peer does. */
    if (((comm_t *)comm)->dev == FAIL_DEV) return 6;
#endif
    if (n_isend_calls++ == 0) { *req = NULL; return 0; } /* busy once */
    if ((q_tail + 1) % QUEUE == q_head) { *req = NULL; return 0; }
    queue[q_tail].bytes = malloc(size ? size : 1);
    memcpy(queue[q_tail].bytes, data, size);
    queue[q_tail].len = size;
    q_tail = (q_tail + 1) % QUEUE;
    req_t *r = calloc(1, sizeof *r);
    r->send = 1;
    r->cap = size;
    *req = r;
    return 0;
}
static int isend_v7(void *comm, void *data, int size, int tag, void *mh, void **req) {
    (void)tag; return send_common(comm, data, (size_t)size, mh, req);
}
static int isend_v10(void *comm, void *data, size_t size, int tag, void *mh, void *ph, void **req) {
    (void)tag; (void)ph; return send_common(comm, data, size, mh, req);
}

static int recv_common(void *comm, int n, void **data, size_t size, void **mh, void **req) {
    if (n != 1 || mh[0] != comm) return 4;
    req_t *r = calloc(1, sizeof *r);
    r->data = data[0];
    r->cap = size;
    *req = r;
    return 0;
}
static int irecv_v7(void *comm, int n, void **data, int *sizes, int *tags, void **mh, void **req) {
    (void)tags; return recv_common(comm, n, data, (size_t)sizes[0], mh, req);
}
static int irecv_v10(void *comm, int n, void **data, size_t *sizes, int *tags, void **mh, void **ph, void **req) {
    (void)tags;
    if (ph == NULL) return 4;
    return recv_common(comm, n, data, sizes[0], mh, req);
}

#ifdef NO_TEST_SIZES
#define REPORT_SIZE(s, v) (void)(s)
#else
#define REPORT_SIZE(s, v) do { if (s) (s)[0] = (int)(v); } while (0)
#endif

static int test(void *request, int *done, int *sizes) {
    req_t *r = request;
    if (r->send) {
        *done = 1;
        REPORT_SIZE(sizes, r->cap);
        free(r);
        return 0;
    }
    if (q_head == q_tail) { *done = 0; return 0; }
    size_t len = queue[q_head].len;
    if (len > r->cap) return 3;
    memcpy(r->data, queue[q_head].bytes, len);
    free(queue[q_head].bytes);
    q_head = (q_head + 1) % QUEUE;
    *done = 1;
    REPORT_SIZE(sizes, len);
    /* Offloaded receives stay alive until irecvConsumed, as with TCPX. */
    if (OFFLOAD_TYPE == 0) free(r);
    return 0;
}

static int consumed(void *comm, int n, void *request) {
    (void)comm; (void)n;
    n_consumed++;
    if (OFFLOAD_TYPE != 0) free(request);
    return 0;
}

/* Counts and flushes nothing: a HOST plugin's "no flush needed" answer (NULL request). */
static int iflush(void *comm, int n, void **data, int *sizes, void **mh, void **req) {
    (void)comm; (void)n; (void)data; (void)sizes; (void)mh;
    n_iflush++;
    *req = NULL;
    return 0;
}

static int close_send(void *c) { n_close_send++; free(c); return 0; }
static int close_recv(void *c) { n_close_recv++; free(c); return 0; }
static int close_listen(void *c) { n_close_listen++; free(c); return 0; }

#ifdef EXPORT_V7
typedef struct {
    const char *name;
    void *fns[18];
} table7_t;
table7_t ncclNetPlugin_v7 = {
    "FakeV7",
    {(void *)init_v7, (void *)devices, (void *)props_v7, (void *)do_listen, (void *)connect_v7,
     (void *)do_accept, (void *)reg_v7, NULL, (void *)dereg, (void *)isend_v7, (void *)irecv_v7,
     (void *)iflush, (void *)test, (void *)close_send, (void *)close_recv, (void *)close_listen, NULL,
     (void *)consumed}};
#endif

#ifdef EXPORT_V10
typedef struct {
    const char *name;
    void *fns[19];
} table10_t;
table10_t ncclNetPlugin_v10 = {
    "FakeV10",
    {(void *)init_v10, (void *)devices, (void *)props_v10, (void *)do_listen, (void *)connect_v10,
     (void *)do_accept, (void *)reg_v10, NULL, (void *)dereg, (void *)isend_v10, (void *)irecv_v10,
     (void *)iflush, (void *)test, (void *)close_send, (void *)close_recv, (void *)close_listen, NULL,
     (void *)consumed, NULL}};
#endif

/* Keeps the "none" build from being an empty translation unit. */
int fake_net_marker = 1;
