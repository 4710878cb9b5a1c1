/*
 * tcpx.hpp — header-only C++17 layer over the C API (tcpx.h, libtcpx_p2p.so / .a).
 *
 * RAII types: tcpx::Listener (the first half of the handshake), tcpx::Session (a connection
 * to one peer), tcpx::Registration (a registered memory region, deregistered by its
 * destructor), tcpx::Transfer (a posted transfer, released by its destructor). All are
 * move-only. Registrations and transfers share ownership of their session's handle, so the
 * session is destroyed when the last of the Session, its Registrations and its Transfers
 * goes: none of them can outlive it by accident.
 *
 * Errors are exceptions: every failing call throws tcpx::Error, which carries the TCPX_ERR_*
 * code (code()) and the library's message for it (what(): the function, tcpx_strerror and
 * tcpx_last_error, copied at the throw). Why exceptions and not expected-style results:
 * constructors (Listener, and Session via connect) have no other way to fail without leaving
 * a half-made object; std::expected is C++23, and a C++17 stand-in would be one more type to
 * learn; the thread-local tcpx_last_error text is overwritten by the next failing call, so
 * it must be captured where the failure happens, which a throw does in one place; and the
 * hot path (post, poll, release) does not throw on success, so it costs nothing there.
 * Destructors never throw: a failed release or deregister in a destructor is dropped (the
 * session's destruction frees everything anyway).
 *
 * Threads, memory and the call order are those of tcpx.h: a session is used by one thread at
 * a time; registered memory is the caller's and must stay valid until its Registration is
 * deregistered (destroyed) or the session destroyed; post, poll, release and progress
 * allocate nothing.
 *
 *   tcpx::Config cfg = tcpx::config_from_env();
 *   tcpx::Listener l(cfg);
 *   std::vector<uint8_t> mine = l.conn_info();   // send to the peer, receive theirs
 *   tcpx::Session s = l.connect(theirs);          // both sides at the same time
 *   tcpx::Registration r = s.register_memory(buf.data(), buf.size());
 *   tcpx::Transfer t = s.post(tcpx::Direction::Send, {r.segment()});
 *   t.wait(std::chrono::seconds(10));
 */
#ifndef TCPX_HPP
#define TCPX_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tcpx.h"

namespace tcpx {

/** A failed call: code() is a TCPX_ERR_* value, what() says what failed and why. */
class Error : public std::runtime_error {
public:
    Error(int code, const std::string &what) : std::runtime_error(what), code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

namespace detail {

/** Throws tcpx::Error for a negative status, naming the call; returns rc otherwise. */
inline int check(int rc, const char *call) {
    if (rc < 0) {
        std::string msg(call);
        msg += ": ";
        msg += tcpx_strerror(rc);
        const char *last = tcpx_last_error();
        if (last[0] != '\0') {
            msg += ": ";
            msg += last;
        }
        throw Error(rc, msg);
    }
    return rc;
}

using SessionHandle = std::shared_ptr<tcpx_session_t>;

inline SessionHandle adopt(tcpx_session_t *s) {
    return SessionHandle(s, [](tcpx_session_t *p) { tcpx_session_destroy(p); });
}

} // namespace detail

/** Engine settings (tcpx.h: tcpx_config_t); both peers use the same channels. */
using Config = tcpx_config_t;

/** One contiguous piece of a transfer (tcpx.h: tcpx_segment_t). */
using Segment = tcpx_segment_t;

/** The built-in defaults. */
inline Config default_config() {
    Config c{};
    detail::check(tcpx_config_default(&c), "tcpx_config_default");
    return c;
}

/** The defaults overridden by the TCPX_* environment; throws TCPX_ERR_CONFIG naming a bad one. */
inline Config config_from_env() {
    Config c{};
    detail::check(tcpx_config_from_env(&c), "tcpx_config_from_env");
    return c;
}

/** Which way a transfer moves bytes; the peer posts the other one, same lengths, same order. */
enum class Direction : int { Send = TCPX_SEND, Recv = TCPX_RECV };

/** Where registered memory lives. */
enum class Memory : int { Host = TCPX_MEM_HOST, Cuda = TCPX_MEM_CUDA };

/** Bytes moved so far by a transfer. */
struct Progress {
    bool done;
    uint64_t bytes_done;
    uint64_t bytes_total;
};

/** A posted transfer; the destructor releases it (one still in flight keeps moving into
 *  memory and frees its slot when its last chunk completes). */
class Transfer {
public:
    Transfer() = default;
    Transfer(Transfer &&o) noexcept
        : session_(std::move(o.session_)), id_(o.id_), live_(std::exchange(o.live_, false)) {}
    Transfer &operator=(Transfer &&o) noexcept {
        if (this != &o) {
            drop();
            session_ = std::move(o.session_);
            id_ = o.id_;
            live_ = std::exchange(o.live_, false);
        }
        return *this;
    }
    Transfer(const Transfer &) = delete;
    Transfer &operator=(const Transfer &) = delete;
    ~Transfer() { drop(); }

    /** Drives every channel once; true when done (received bytes are in place). Never blocks. */
    bool poll() { return poll_progress().done; }

    /** As poll(), with the byte counts. */
    Progress poll_progress() {
        Progress p{false, 0, 0};
        int rc = detail::check(
            tcpx_transfer_poll(live_session(), id_, &p.bytes_done, &p.bytes_total),
            "tcpx_transfer_poll");
        p.done = rc == 1;
        return p;
    }

    /** Polls until done, at most `timeout` (TCPX_ERR_TIMEOUT: the transfer stays live);
     *  returns the bytes moved. */
    uint64_t wait(std::chrono::milliseconds timeout) {
        uint64_t bytes = 0;
        detail::check(tcpx_transfer_wait(live_session(), id_,
                                         static_cast<uint64_t>(timeout.count()), &bytes),
                      "tcpx_transfer_wait");
        return bytes;
    }

    /** Releases it now (the destructor would); afterwards it is empty. */
    void release() {
        if (!live_) {
            return;
        }
        live_ = false;
        detail::check(tcpx_transfer_release(session_.get(), id_), "tcpx_transfer_release");
    }

    /** The id the C API knows it by. */
    uint64_t id() const noexcept { return id_; }
    /** Whether it is posted and not released. */
    bool valid() const noexcept { return live_; }

private:
    friend class Session;
    Transfer(detail::SessionHandle s, uint64_t id) : session_(std::move(s)), id_(id), live_(true) {}

    tcpx_session_t *live_session() const {
        if (!live_) {
            throw Error(TCPX_ERR_INVALID, "tcpx::Transfer: released or moved from");
        }
        return session_.get();
    }

    void drop() noexcept {
        if (live_) {
            live_ = false;
            (void)tcpx_transfer_release(session_.get(), id_);
        }
    }

    detail::SessionHandle session_;
    uint64_t id_ = 0;
    bool live_ = false;
};

/** A registered region; the destructor deregisters it. Destroy (or release) the transfers
 *  that name it first: a region a live transfer names cannot be deregistered, and a
 *  destructor can only leave it registered until the session goes. */
class Registration {
public:
    Registration() = default;
    Registration(Registration &&o) noexcept
        : session_(std::move(o.session_)), id_(o.id_), len_(o.len_),
          live_(std::exchange(o.live_, false)) {}
    Registration &operator=(Registration &&o) noexcept {
        if (this != &o) {
            drop();
            session_ = std::move(o.session_);
            id_ = o.id_;
            len_ = o.len_;
            live_ = std::exchange(o.live_, false);
        }
        return *this;
    }
    Registration(const Registration &) = delete;
    Registration &operator=(const Registration &) = delete;
    ~Registration() { drop(); }

    /** A segment of this region: `len` bytes at `offset` (default: to the end), and the
     *  peer's offset for the caller's bookkeeping. */
    Segment segment(uint64_t offset = 0, uint64_t len = UINT64_MAX,
                    uint64_t remote_offset = 0) const noexcept {
        uint64_t n = len != UINT64_MAX ? len : (offset < len_ ? len_ - offset : 0);
        return Segment{id_, offset, remote_offset, n};
    }

    /** Deregisters now; throws TCPX_ERR_INVALID (and stays registered) while a live transfer
     *  names the region. Afterwards it is empty. */
    void deregister() {
        if (!live_) {
            return;
        }
        detail::check(tcpx_deregister(session_.get(), id_), "tcpx_deregister");
        live_ = false;
        session_.reset();
    }

    /** The region id of tcpx_segment_t.mem. */
    uint64_t id() const noexcept { return id_; }
    /** Bytes registered. */
    uint64_t size() const noexcept { return len_; }
    /** Whether it is registered. */
    bool valid() const noexcept { return live_; }

private:
    friend class Session;
    Registration(detail::SessionHandle s, uint64_t id, uint64_t len)
        : session_(std::move(s)), id_(id), len_(len), live_(true) {}

    void drop() noexcept {
        if (live_) {
            live_ = false;
            (void)tcpx_deregister(session_.get(), id_);
        }
    }

    detail::SessionHandle session_;
    uint64_t id_ = 0;
    uint64_t len_ = 0;
    bool live_ = false;
};

/** A connection to one peer, made by Listener::connect. */
class Session {
public:
    Session() = default;
    Session(Session &&) noexcept = default;
    Session &operator=(Session &&) noexcept = default;
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    /** Lets go of the handle; the session is destroyed once no Registration or Transfer
     *  of it is left either. */
    ~Session() = default;

    /** Registers [ptr, ptr+len): host memory, or CUDA memory of `device`. The memory stays
     *  the caller's and must stay valid while the Registration is. */
    Registration register_memory(void *ptr, size_t len, Memory kind = Memory::Host,
                                 int device = 0) {
        uint64_t id = 0;
        detail::check(tcpx_register(handle(), ptr, len, static_cast<int>(kind), device, &id),
                      "tcpx_register");
        return Registration(session_, id, len);
    }

    /** Validates and queues a transfer of n segments (all inside their regions, or nothing
     *  is queued and TCPX_ERR_INVALID is thrown). */
    Transfer post(Direction dir, const Segment *segs, size_t n) {
        uint64_t id = 0;
        detail::check(
            tcpx_transfer_post(handle(), static_cast<int>(dir), segs, n, &id),
            "tcpx_transfer_post");
        return Transfer(session_, id);
    }

    Transfer post(Direction dir, const std::vector<Segment> &segs) {
        return post(dir, segs.data(), segs.size());
    }

    Transfer post(Direction dir, std::initializer_list<Segment> segs) {
        return post(dir, segs.begin(), segs.size());
    }

    /** Drives every channel once; true if anything moved. */
    bool progress() { return detail::check(tcpx_progress(handle()), "tcpx_progress") == 1; }

    /** The C handle, for calls this layer does not wrap. */
    tcpx_session_t *native() const noexcept { return session_.get(); }
    /** Whether it holds a session (not default-made or moved from). */
    bool valid() const noexcept { return session_ != nullptr; }

private:
    friend class Listener;
    explicit Session(tcpx_session_t *s) : session_(detail::adopt(s)) {}

    tcpx_session_t *handle() const {
        if (!session_) {
            throw Error(TCPX_ERR_INVALID, "tcpx::Session: empty (default-made or moved from)");
        }
        return session_.get();
    }

    detail::SessionHandle session_;
};

/** The first half of the handshake: opens the plugin and a listen comm per channel. */
class Listener {
public:
    explicit Listener(const Config &cfg) {
        detail::check(tcpx_listen(&cfg, &l_), "tcpx_listen");
    }
    Listener(Listener &&o) noexcept : l_(std::exchange(o.l_, nullptr)) {}
    Listener &operator=(Listener &&o) noexcept {
        if (this != &o) {
            tcpx_listener_destroy(l_);
            l_ = std::exchange(o.l_, nullptr);
        }
        return *this;
    }
    Listener(const Listener &) = delete;
    Listener &operator=(const Listener &) = delete;
    ~Listener() { tcpx_listener_destroy(l_); }

    /** A copy of the bytes the peer needs. */
    std::vector<uint8_t> conn_info() const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        detail::check(tcpx_listener_conn_info(live(), &data, &len), "tcpx_listener_conn_info");
        return std::vector<uint8_t>(data, data + len);
    }

    /** Completes the handshake with the peer's conn_info (the peer calls it at the same
     *  time), bounded by the config's timeout_ms. Uses the listener up, also when it throws. */
    Session connect(const uint8_t *peer, size_t len) {
        tcpx_listener_t *l = live();
        l_ = nullptr;
        tcpx_session_t *s = nullptr;
        detail::check(tcpx_listener_connect(l, peer, len, &s), "tcpx_listener_connect");
        return Session(s);
    }

    Session connect(const std::vector<uint8_t> &peer) { return connect(peer.data(), peer.size()); }

    /** Whether it can still connect. */
    bool valid() const noexcept { return l_ != nullptr; }

private:
    tcpx_listener_t *live() const {
        if (l_ == nullptr) {
            throw Error(TCPX_ERR_INVALID, "tcpx::Listener: already connected or moved from");
        }
        return l_;
    }

    tcpx_listener_t *l_ = nullptr;
};

} // namespace tcpx

#endif /* TCPX_HPP */
