/*
 * The C API end to end: two sessions in one process over the embedded tcpxsock plugin
 * (run with TCPX_SOCK_IFNAME=lo), each side on its own pthread. Exits 0 only if every
 * check passed; each failed check prints its line and the library's last error.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tcpx.h"

/* The header promises these layouts; the Rust side asserts the same numbers. */
_Static_assert(sizeof(tcpx_config_t) == 48, "tcpx_config_t size");
_Static_assert(offsetof(tcpx_config_t, gpu) == 40, "tcpx_config_t gpu");
_Static_assert(offsetof(tcpx_config_t, timeout_ms) == 24, "timeout_ms offset");
_Static_assert(offsetof(tcpx_config_t, plugin) == 32, "plugin offset");
_Static_assert(sizeof(tcpx_segment_t) == 32, "tcpx_segment_t size");

#define REGION (8u << 20)
#define NSEG 8
#define ROUNDS 2

static int failures;
static pthread_mutex_t failures_lock = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,     \
                    __LINE__, #cond, tcpx_last_error());                                \
            pthread_mutex_lock(&failures_lock);                                         \
            failures++;                                                                 \
            pthread_mutex_unlock(&failures_lock);                                       \
        }                                                                               \
    } while (0)

/* Odd sizes that cross 256 KiB chunk boundaries; they sum to ~4.9 MiB. */
static const uint64_t lens[NSEG] = {1, 4095, 4097, 65537, 262143, 262145, 1048577, 3300001};

static uint8_t pattern_at(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Sender and receiver lay segments out with different gaps, so local and remote offsets
 * differ: segment i sits at offset_of(i, gap) on each side. */
static uint64_t offset_of(int i, uint64_t gap) {
    uint64_t off = 0;
    for (int k = 0; k < i; k++) off += lens[k] + gap;
    return off;
}
#define SEND_GAP 3
#define RECV_GAP 13

struct side {
    tcpx_listener_t *listener;
    const uint8_t *peer_info;
    size_t peer_len;
    int dir;
};

/* Posts, polls until done (bounded), checks progress numbers. */
static void transfer(tcpx_session_t *s, int dir, uint64_t mem, int round) {
    tcpx_segment_t segs[NSEG];
    uint64_t total = 0;
    for (int i = 0; i < NSEG; i++) {
        uint64_t mine = offset_of(i, dir == TCPX_SEND ? SEND_GAP : RECV_GAP);
        uint64_t theirs = offset_of(i, dir == TCPX_SEND ? RECV_GAP : SEND_GAP);
        segs[i] = (tcpx_segment_t){mem, mine, theirs, lens[i]};
        total += lens[i];
    }
    uint64_t x = 0;
    CHECK(tcpx_transfer_post(s, dir, segs, NSEG, &x) == TCPX_OK);
    if (round == 0) {
        double deadline = now_s() + 60.0;
        uint64_t done = 0, tot = 0, last = 0;
        int r;
        while ((r = tcpx_transfer_poll(s, x, &done, &tot)) == 0 && now_s() < deadline) {
            CHECK(tot == total && done <= tot && done >= last);
            last = done;
        }
        CHECK(r == 1);
        CHECK(done == total && tot == total);
    } else {
        uint64_t bytes = 0;
        CHECK(tcpx_transfer_wait(s, x, 60000, &bytes) == TCPX_OK);
        CHECK(bytes == total);
    }
    CHECK(tcpx_transfer_release(s, x) == TCPX_OK);
    uint64_t d, t;
    CHECK(tcpx_transfer_poll(s, x, &d, &t) == TCPX_ERR_INVALID); /* released id is stale */
}

/* Argument errors are reported, described, and leave the session usable. */
static void bad_arguments(tcpx_session_t *s, uint64_t mem) {
    uint64_t x = 0;
    tcpx_segment_t out = {mem, REGION - 10, 0, 11};
    CHECK(tcpx_transfer_post(s, TCPX_SEND, &out, 1, &x) == TCPX_ERR_INVALID);
    CHECK(strlen(tcpx_last_error()) > 0);
    CHECK(strstr(tcpx_last_error(), "outside") != NULL);
    tcpx_segment_t stale = {mem + 12345, 0, 0, 1};
    CHECK(tcpx_transfer_post(s, TCPX_SEND, &stale, 1, &x) == TCPX_ERR_INVALID);
    tcpx_segment_t ok = {mem, 0, 0, 1};
    CHECK(tcpx_transfer_post(s, 7, &ok, 1, &x) == TCPX_ERR_INVALID);
    CHECK(tcpx_transfer_post(s, TCPX_SEND, NULL, 1, &x) == TCPX_ERR_INVALID);
    CHECK(tcpx_transfer_post(s, TCPX_SEND, &ok, 1, NULL) == TCPX_ERR_INVALID);
    uint64_t m = 0;
    CHECK(tcpx_register(s, NULL, 16, TCPX_MEM_HOST, 0, &m) == TCPX_ERR_INVALID);
    CHECK(tcpx_register(s, &m, sizeof m, 5, 0, &m) == TCPX_ERR_INVALID);
    CHECK(tcpx_deregister(s, mem + 12345) == TCPX_ERR_INVALID);
    CHECK(tcpx_progress(s) >= 0);
}

static void *run_side(void *arg) {
    struct side *me = arg;
    tcpx_session_t *s = NULL;
    int rc = tcpx_listener_connect(me->listener, me->peer_info, me->peer_len, &s);
    CHECK(rc == TCPX_OK && s != NULL);
    if (s == NULL) return NULL;

    uint8_t *buf = malloc(REGION);
    CHECK(buf != NULL);
    if (buf == NULL) {
        tcpx_session_destroy(s);
        return NULL;
    }
    uint64_t mem = 0;
    CHECK(tcpx_register(s, buf, REGION, TCPX_MEM_HOST, 0, &mem) == TCPX_OK);
    bad_arguments(s, mem);

    for (int round = 0; round < ROUNDS; round++) {
        if (me->dir == TCPX_SEND) {
            for (uint64_t i = 0; i < REGION; i++) buf[i] = pattern_at(i + (uint64_t)round);
        } else {
            memset(buf, 0xEE, REGION);
        }
        transfer(s, me->dir, mem, round);
        if (me->dir == TCPX_RECV) {
            int bad = 0;
            for (int i = 0; i < NSEG; i++) {
                uint64_t src = offset_of(i, SEND_GAP), dst = offset_of(i, RECV_GAP);
                for (uint64_t k = 0; k < lens[i]; k++)
                    bad += buf[dst + k] != pattern_at(src + k + (uint64_t)round);
                /* The gap after each segment was never written. */
                for (uint64_t k = 0; k < RECV_GAP; k++) bad += buf[dst + lens[i] + k] != 0xEE;
            }
            CHECK(bad == 0);
        }
    }
    CHECK(tcpx_deregister(s, mem) == TCPX_OK);
    CHECK(tcpx_deregister(s, mem) == TCPX_ERR_INVALID); /* already gone */
    tcpx_session_destroy(s);
    free(buf);
    return NULL;
}

static uint8_t *copy_info(tcpx_listener_t *l, size_t *len) {
    const uint8_t *data = NULL;
    CHECK(tcpx_listener_conn_info(l, &data, len) == TCPX_OK && data != NULL && *len > 0);
    uint8_t *copy = malloc(*len ? *len : 1);
    if (copy && data) memcpy(copy, data, *len);
    return copy;
}

int main(void) {
    /* A last-resort bound: every wait below is bounded already. */
    alarm(240);

    CHECK(strlen(tcpx_strerror(TCPX_ERR_INVALID)) > 0);
    CHECK(strcmp(tcpx_strerror(TCPX_ERR_INVALID), tcpx_strerror(TCPX_ERR_TIMEOUT)) != 0);
    CHECK(strlen(tcpx_strerror(-12345)) > 0);
    CHECK(tcpx_config_default(NULL) == TCPX_ERR_INVALID);
    CHECK(strlen(tcpx_last_error()) > 0);

    /* The runner sets TCPX_CHANNELS=5 and leaves TCPX_PLUGIN unset. */
    tcpx_config_t env;
    CHECK(tcpx_config_from_env(&env) == TCPX_OK);
    CHECK(env.channels == 5 && env.plugin == NULL);

    tcpx_config_t cfg;
    CHECK(tcpx_config_default(&cfg) == TCPX_OK);
    CHECK(cfg.plugin == NULL && cfg.channels >= 1);
    cfg.channels = 3;
    cfg.chunk_bytes = 256 * 1024;
    cfg.timeout_ms = 30000;

    tcpx_config_t bad = cfg;
    bad.window = 0;
    tcpx_listener_t *l = (tcpx_listener_t *)1;
    CHECK(tcpx_listen(&bad, &l) == TCPX_ERR_CONFIG && l == NULL);

    /* Garbage connection info is a protocol error; the listener is consumed anyway. */
    CHECK(tcpx_listen(&cfg, &l) == TCPX_OK);
    tcpx_session_t *none = (tcpx_session_t *)1;
    CHECK(tcpx_listener_connect(l, (const uint8_t *)"xyz", 3, &none) == TCPX_ERR_PROTOCOL);
    CHECK(none == NULL);

    tcpx_listener_t *la = NULL, *lb = NULL;
    CHECK(tcpx_listen(&cfg, &la) == TCPX_OK);
    CHECK(tcpx_listen(&cfg, &lb) == TCPX_OK);
    if (la == NULL || lb == NULL) return 1;
    size_t alen = 0, blen = 0;
    uint8_t *ainfo = copy_info(la, &alen), *binfo = copy_info(lb, &blen);

    struct side a = {la, binfo, blen, TCPX_SEND};
    struct side b = {lb, ainfo, alen, TCPX_RECV};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, run_side, &a) == 0);
    CHECK(pthread_create(&tb, NULL, run_side, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    free(ainfo);
    free(binfo);

    tcpx_listener_destroy(NULL);
    tcpx_session_destroy(NULL);

    if (failures) {
        fprintf(stderr, "loopback: %d check(s) failed\n", failures);
        return 1;
    }
    printf("loopback: ok\n");
    return 0;
}
