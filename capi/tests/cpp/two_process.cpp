/*
 * The C++ layer (tcpx.hpp) end to end: two processes (this one and a fork) over the
 * embedded tcpxsock plugin (run with TCPX_SOCK_IFNAME=lo), their connection info swapped
 * through two pipes. Exits 0 only if every check passed in both; each failed check prints
 * its line and the exception's message.
 */
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tcpx.hpp"

static_assert(!std::is_copy_constructible<tcpx::Session>::value, "Session is move-only");
static_assert(!std::is_copy_constructible<tcpx::Registration>::value, "move-only");
static_assert(!std::is_copy_constructible<tcpx::Transfer>::value, "move-only");
static_assert(std::is_nothrow_move_constructible<tcpx::Transfer>::value, "noexcept moves");
static_assert(std::is_nothrow_move_constructible<tcpx::Listener>::value, "noexcept moves");

namespace {

int failures = 0;
const char *who = "parent";

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "[%s] %s:%d: CHECK failed: %s\n", who, __FILE__, __LINE__, \
                         #cond);                                                          \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* The call must throw tcpx::Error with `want_code` and `want_text` in its message. */
#define CHECK_THROWS(expr, want_code, want_text)                                          \
    do {                                                                                  \
        bool thrown = false;                                                              \
        try {                                                                             \
            (void)(expr);                                                                 \
        } catch (const tcpx::Error &e) {                                                  \
            thrown = true;                                                                \
            if (e.code() != (want_code) || std::strstr(e.what(), (want_text)) == nullptr) { \
                std::fprintf(stderr, "[%s] %s:%d: %s threw %d \"%s\", want %d \"%s\"\n", \
                             who, __FILE__, __LINE__, #expr, e.code(), e.what(), (want_code), \
                             (want_text));                                                \
                failures++;                                                               \
            }                                                                             \
        }                                                                                 \
        if (!thrown) {                                                                    \
            std::fprintf(stderr, "[%s] %s:%d: %s did not throw\n", who, __FILE__,        \
                         __LINE__, #expr);                                                \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

const auto kWait = std::chrono::seconds(60);

uint8_t pattern_at(uint64_t i, uint64_t seed) {
    return static_cast<uint8_t>(((i + seed * 0x9E3779B9u) * 2654435761u) >> 13);
}

/* Pipes carry length-prefixed byte strings; every read is bounded by the alarm in main. */
bool write_all(int fd, const void *p, size_t n) {
    const auto *b = static_cast<const uint8_t *>(p);
    while (n > 0) {
        ssize_t w = ::write(fd, b, n);
        if (w <= 0) return false;
        b += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

bool read_all(int fd, void *p, size_t n) {
    auto *b = static_cast<uint8_t *>(p);
    while (n > 0) {
        ssize_t r = ::read(fd, b, n);
        if (r <= 0) return false;
        b += r;
        n -= static_cast<size_t>(r);
    }
    return true;
}

void send_bytes(int fd, const std::vector<uint8_t> &v) {
    uint32_t n = static_cast<uint32_t>(v.size());
    CHECK(write_all(fd, &n, sizeof n) && write_all(fd, v.data(), v.size()));
}

std::vector<uint8_t> recv_bytes(int fd) {
    uint32_t n = 0;
    CHECK(read_all(fd, &n, sizeof n) && n < (1u << 20));
    std::vector<uint8_t> v(n);
    CHECK(read_all(fd, v.data(), n));
    return v;
}

/* Errors: each throws with its code and message and leaves the session usable. */
void bad_arguments(tcpx::Session &s, bool sender) {
    std::vector<uint8_t> buf(4096, sender ? 0x77 : 0);
    tcpx::Registration r = s.register_memory(buf.data(), buf.size());
    CHECK_THROWS(s.post(tcpx::Direction::Send, {r.segment(4000, 97)}), TCPX_ERR_INVALID,
                 "outside");
    tcpx::Segment stale = r.segment();
    stale.mem += 12345;
    CHECK_THROWS(s.post(tcpx::Direction::Send, {stale}), TCPX_ERR_INVALID, "MemId");
    CHECK_THROWS(s.post(static_cast<tcpx::Direction>(7), {r.segment()}), TCPX_ERR_INVALID,
                 "TCPX_SEND");
    CHECK_THROWS(s.register_memory(nullptr, 16), TCPX_ERR_INVALID, "null");
    CHECK_THROWS(s.register_memory(buf.data(), 16, static_cast<tcpx::Memory>(5)),
                 TCPX_ERR_INVALID, "TCPX_MEM_HOST");
    {
        /* A region a live transfer names stays registered until the transfer is done. */
        tcpx::Transfer t =
            s.post(sender ? tcpx::Direction::Send : tcpx::Direction::Recv, {r.segment(0, 10)});
        CHECK_THROWS(r.deregister(), TCPX_ERR_INVALID, "live transfer");
        CHECK(r.valid());
        CHECK(t.wait(kWait) == 10);
        t.release();
        CHECK(!t.valid());
        CHECK_THROWS(t.poll(), TCPX_ERR_INVALID, "released");
    }
    CHECK(buf[9] == 0x77);
    r.deregister();
    CHECK(!r.valid());
    r.deregister(); /* empty: nothing to do */
    (void)s.progress();
}

/* Sizes 1 B … 16 MiB one way, then the other, each in its own registration. */
void sizes(tcpx::Session &s, bool first_sends) {
    const uint64_t sizes[] = {1, 4095, 4097, 65537, (1u << 20) + 3, 16u << 20};
    for (uint64_t n : sizes) {
        for (int leg = 0; leg < 2; leg++) {
            bool sending = (leg == 0) == first_sends;
            std::vector<uint8_t> buf(n, 0xEE);
            uint64_t seed = n + static_cast<uint64_t>(leg);
            if (sending) {
                for (uint64_t i = 0; i < n; i++) buf[i] = pattern_at(i, seed);
            }
            tcpx::Registration r = s.register_memory(buf.data(), buf.size());
            CHECK(r.size() == n);
            tcpx::Transfer t = s.post(sending ? tcpx::Direction::Send : tcpx::Direction::Recv,
                                      {r.segment()});
            if (n < 4096) {
                CHECK(t.wait(kWait) == n);
            } else {
                auto deadline = std::chrono::steady_clock::now() + kWait;
                tcpx::Progress p{false, 0, 0};
                uint64_t last = 0;
                while (!(p = t.poll_progress()).done &&
                       std::chrono::steady_clock::now() < deadline) {
                    CHECK(p.bytes_total == n && p.bytes_done >= last);
                    last = p.bytes_done;
                }
                CHECK(p.done && p.bytes_done == n);
            }
            if (!sending) {
                uint64_t bad = 0;
                for (uint64_t i = 0; i < n; i++) bad += buf[i] != pattern_at(i, seed);
                CHECK(bad == 0);
            }
            /* Transfer then Registration go out of scope: released, then deregistered. */
        }
    }
}

/* 500 segments with other gaps at each end; the receiver's gaps stay untouched. */
void segments(tcpx::Session &s, bool sender) {
    const int count = 500;
    const uint64_t gap = sender ? 3 : 13, other_gap = sender ? 13 : 3;
    std::vector<uint64_t> lens(count);
    uint64_t total = 0;
    for (int i = 0; i < count; i++) {
        lens[static_cast<size_t>(i)] = 1 + (static_cast<uint64_t>(i) * 7919u) % 9000u;
        total += lens[static_cast<size_t>(i)] + 13;
    }
    std::vector<uint8_t> buf(total, 0xEE);
    tcpx::Registration r = s.register_memory(buf.data(), buf.size());
    std::vector<tcpx::Segment> segs;
    uint64_t at = 0, peer_at = 0;
    for (int i = 0; i < count; i++) {
        uint64_t n = lens[static_cast<size_t>(i)];
        segs.push_back(r.segment(at, n, peer_at));
        if (sender) {
            for (uint64_t k = 0; k < n; k++) buf[at + k] = pattern_at(k, static_cast<uint64_t>(i));
        }
        at += n + gap;
        peer_at += n + other_gap;
    }
    tcpx::Transfer t = s.post(sender ? tcpx::Direction::Send : tcpx::Direction::Recv, segs);
    CHECK(t.wait(kWait) > 0);
    if (!sender) {
        uint64_t bad = 0;
        for (int i = 0; i < count; i++) {
            const tcpx::Segment &sg = segs[static_cast<size_t>(i)];
            for (uint64_t k = 0; k < sg.len; k++)
                bad += buf[sg.offset + k] != pattern_at(k, static_cast<uint64_t>(i));
            for (uint64_t k = 0; k < gap; k++) bad += buf[sg.offset + sg.len + k] != 0xEE;
        }
        CHECK(bad == 0);
    }
}

/* More transfers than max_transfers, none released by hand: destructors free the slots. */
void many_transfers(tcpx::Session &s, bool sender) {
    std::vector<uint8_t> buf(1000, sender ? 0x5A : 0);
    tcpx::Registration r = s.register_memory(buf.data(), buf.size());
    for (int i = 0; i < 3 * 64; i++) {
        tcpx::Transfer t = s.post(sender ? tcpx::Direction::Send : tcpx::Direction::Recv,
                                  {r.segment()});
        CHECK(t.wait(kWait) == 1000);
    }
    CHECK(sender || buf[999] == 0x5A);
}

int run(int out_fd, int in_fd, bool sender) {
    tcpx::Config cfg = tcpx::config_from_env();
    cfg.chunk_bytes = 256 * 1024;
    cfg.timeout_ms = 60000;
    cfg.max_transfers = 64;

    tcpx::Listener l(cfg);
    CHECK(l.valid());
    send_bytes(out_fd, l.conn_info());
    std::vector<uint8_t> peer = recv_bytes(in_fd);
    tcpx::Session s = l.connect(peer);
    CHECK(!l.valid() && s.valid());
    CHECK_THROWS(l.connect(peer), TCPX_ERR_INVALID, "already connected");

    bad_arguments(s, sender);
    sizes(s, sender);
    segments(s, sender);
    many_transfers(s, sender);

    /* A registration keeps the session alive after the Session object goes. */
    std::vector<uint8_t> tail(64, sender ? 0x11 : 0);
    tcpx::Registration r = s.register_memory(tail.data(), tail.size());
    tcpx::Session moved = std::move(s);
    CHECK(!s.valid() && moved.valid());
    CHECK_THROWS(s.progress(), TCPX_ERR_INVALID, "empty");
    tcpx::Transfer t = moved.post(sender ? tcpx::Direction::Send : tcpx::Direction::Recv,
                                  {r.segment()});
    moved = tcpx::Session();
    CHECK(t.wait(kWait) == 64);
    CHECK(tail[63] == 0x11);
    return failures;
}

} // namespace

int main() {
    alarm(240); /* a last-resort bound: every wait below is bounded already */

    /* Errors before any session: a bad config, garbage connection info. */
    tcpx::Config bad = tcpx::default_config();
    bad.window = 0;
    CHECK_THROWS(tcpx::Listener{bad}, TCPX_ERR_CONFIG, "window");
    {
        tcpx::Listener l(tcpx::default_config());
        std::vector<uint8_t> junk = {'x', 'y', 'z'};
        CHECK_THROWS(l.connect(junk), TCPX_ERR_PROTOCOL, "peer conn info");
        CHECK(!l.valid());
    }

    int to_child[2], to_parent[2];
    if (pipe(to_child) != 0 || pipe(to_parent) != 0) {
        std::perror("pipe");
        return 1;
    }
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
        std::perror("fork");
        return 1;
    }
    bool child = pid == 0;
    if (child) who = "child";
    int rc = 0;
    try {
        rc = child ? run(to_parent[1], to_child[0], false) : run(to_child[1], to_parent[0], true);
    } catch (const tcpx::Error &e) {
        std::fprintf(stderr, "[%s] uncaught tcpx::Error %d: %s\n", who, e.code(), e.what());
        rc = 1;
    }
    if (child) {
        std::fflush(nullptr);
        _exit(rc == 0 ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "[parent] child failed (status %d)\n", status);
        rc = 1;
    }
    if (rc != 0 || failures != 0) {
        std::fprintf(stderr, "two_process: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("two_process: ok\n");
    return 0;
}
