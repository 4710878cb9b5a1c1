// The TCPX backend as libnixl sees it: a NIXL engine subclass whose every virtual forwards to
// the Rust backend through the C interface in tcpx_nixl.h, plus the plugin table.
//
// The shim holds no state beyond the Rust backend pointer. It translates C++ objects to plain
// C views (descriptor lists flattened, strings as pointer + length) and back (output strings
// and lists filled through callbacks). No exception leaves a function libnixl can call: each
// entry point is noexcept and catches everything, reporting NIXL_ERR_BACKEND.

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "nixl_abi.h"
#include "tcpx_nixl.h"

#ifndef TCPX_NIXL_VERSION
#define TCPX_NIXL_VERSION "0.0.0"
#endif

// The Rust side (src/ffi/mod.rs) asserts the same sizes and offsets.
static_assert(sizeof(TcpxDesc) == 32 && offsetof(TcpxDesc, md) == 24);
static_assert(sizeof(TcpxStr) == 16);
static_assert(sizeof(TcpxParam) == 32 && offsetof(TcpxParam, value) == 16);
static_assert(sizeof(TcpxXferOpts) == 24 && offsetof(TcpxXferOpts, notif) == 8);

namespace tcpx::nixl {
namespace {

constexpr const char* kPluginName = "TCPX";

TcpxStr view(const std::string& s) noexcept {
    return TcpxStr{reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string owned(TcpxStr s) {
    return std::string(reinterpret_cast<const char*>(s.ptr), s.len);
}

// Reports an exception caught at the boundary; the caller turns it into a status.
void report(const char* where) noexcept {
    try {
        throw;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tcpx-nixl: %s: C++ exception: %s\n", where, e.what());
    } catch (...) {
        std::fprintf(stderr, "tcpx-nixl: %s: unknown C++ exception\n", where);
    }
}

// Runs `f` (returning a status) with every exception turned into NIXL_ERR_BACKEND.
template <class F>
Status guarded(const char* where, F&& f) noexcept {
    try {
        return static_cast<Status>(f());
    } catch (...) {
        report(where);
        return kErrBackend;
    }
}

bool sink_bytes(void* ctx, const uint8_t* ptr, size_t len) noexcept {
    try {
        static_cast<std::string*>(ctx)->assign(reinterpret_cast<const char*>(ptr), len);
        return true;
    } catch (...) {
        report("output string");
        return false;
    }
}

bool sink_notif(void* ctx, TcpxStr agent, TcpxStr msg) noexcept {
    try {
        static_cast<NotifList*>(ctx)->emplace_back(owned(agent), owned(msg));
        return true;
    } catch (...) {
        report("notification list");
        return false;
    }
}

bool sink_param(void* ctx, TcpxStr key, TcpxStr value) noexcept {
    try {
        static_cast<Params*>(ctx)->insert_or_assign(owned(key), owned(value));
        return true;
    } catch (...) {
        report("backend options");
        return false;
    }
}

std::vector<TcpxDesc> flatten(const MetaDescList& list) {
    std::vector<TcpxDesc> out;
    out.reserve(list.descs.size());
    for (const MetaDesc& d : list.descs) {
        out.push_back(TcpxDesc{d.addr, d.len, d.dev_id, reinterpret_cast<uintptr_t>(d.md)});
    }
    return out;
}

TcpxDesc flatten(const BasicDesc& d) noexcept {
    return TcpxDesc{d.addr, d.len, d.dev_id, 0};
}

MemList backend_mems() {
    MemList mems{kDram};
    if (tcpx_nixl_vram_supported()) {
        mems.push_back(kVram);
    }
    return mems;
}

class TcpxEngine final : public EngineBase {
  public:
    explicit TcpxEngine(const InitParams* p) : EngineBase(p) {
        std::vector<TcpxParam> params;
        if (p->custom_params != nullptr) {
            params.reserve(p->custom_params->size());
            for (const auto& [key, value] : *p->custom_params) {
                params.push_back(TcpxParam{view(key), view(value)});
            }
        }
        backend_ = tcpx_nixl_backend_create(view(p->local_agent), params.data(), params.size());
        // libnixl checks this flag right after construction and destroys the engine.
        init_err_ = backend_ == nullptr;
        if (backend_ != nullptr) {
            // Users see the effective settings (defaults included) via getBackendParams.
            tcpx_nixl_backend_params(backend_, add_param, this);
        }
    }

    ~TcpxEngine() override {
        if (backend_ != nullptr) {
            tcpx_nixl_backend_destroy(backend_);
        }
    }

    bool supportsRemote() const override { return tcpx_nixl_supports_remote(backend_); }
    bool supportsLocal() const override { return tcpx_nixl_supports_local(backend_); }
    bool supportsNotif() const override { return tcpx_nixl_supports_notif(backend_); }

    MemList getSupportedMems() const override {
        try {
            return backend_mems();
        } catch (...) {
            report("getSupportedMems");
            return {};
        }
    }

    Status registerMem(const BlobDesc& mem, const MemType& kind, BackendMD*& out) override {
        return guarded("registerMem", [&] {
            TcpxDesc d = flatten(mem);
            uintptr_t md = 0;
            int32_t s = tcpx_nixl_register_mem(backend_, &d, view(mem.meta_info), kind, &md);
            out = reinterpret_cast<BackendMD*>(md);
            return s;
        });
    }

    Status deregisterMem(BackendMD* md) override {
        return guarded("deregisterMem", [&] {
            return tcpx_nixl_deregister_mem(backend_, reinterpret_cast<uintptr_t>(md));
        });
    }

    Status connect(const std::string& agent) override {
        return guarded("connect", [&] { return tcpx_nixl_connect(backend_, view(agent)); });
    }

    Status disconnect(const std::string& agent) override {
        return guarded("disconnect", [&] { return tcpx_nixl_disconnect(backend_, view(agent)); });
    }

    Status unloadMD(BackendMD* md) override {
        return guarded("unloadMD", [&] {
            return tcpx_nixl_unload_md(backend_, reinterpret_cast<uintptr_t>(md));
        });
    }

    Status prepXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                    const std::string& agent, BackendReqH*& handle,
                    const OptArgs* opt) const override {
        return guarded("prepXfer", [&] {
            return xfer(tcpx_nixl_prep_xfer, op, local, remote, agent, handle, opt);
        });
    }

    Status postXfer(const XferOp& op, const MetaDescList& local, const MetaDescList& remote,
                    const std::string& agent, BackendReqH*& handle,
                    const OptArgs* opt) const override {
        return guarded("postXfer", [&] {
            return xfer(tcpx_nixl_post_xfer, op, local, remote, agent, handle, opt);
        });
    }

    Status checkXfer(BackendReqH* handle) const override {
        return guarded("checkXfer", [&] {
            return tcpx_nixl_check_xfer(backend_, reinterpret_cast<uintptr_t>(handle));
        });
    }

    Status releaseReqH(BackendReqH* handle) const override {
        return guarded("releaseReqH", [&] {
            return tcpx_nixl_release_req(backend_, reinterpret_cast<uintptr_t>(handle));
        });
    }

    Status getPublicData(const BackendMD* md, std::string& out) const override {
        return guarded("getPublicData", [&] {
            return tcpx_nixl_get_public_data(backend_, reinterpret_cast<uintptr_t>(md),
                                             sink_bytes, &out);
        });
    }

    Status getConnInfo(std::string& out) const override {
        return guarded("getConnInfo",
                       [&] { return tcpx_nixl_get_conn_info(backend_, sink_bytes, &out); });
    }

    Status loadRemoteConnInfo(const std::string& agent, const std::string& info) override {
        return guarded("loadRemoteConnInfo", [&] {
            return tcpx_nixl_load_remote_conn_info(backend_, view(agent), view(info));
        });
    }

    Status loadRemoteMD(const BlobDesc& blob, const MemType& kind, const std::string& agent,
                        BackendMD*& out) override {
        return guarded("loadRemoteMD", [&] {
            TcpxDesc d = flatten(blob);
            uintptr_t md = 0;
            int32_t s = tcpx_nixl_load_remote_md(backend_, &d, view(blob.meta_info), kind,
                                                 view(agent), &md);
            out = reinterpret_cast<BackendMD*>(md);
            return s;
        });
    }

    Status loadLocalMD(BackendMD* in, BackendMD*& out) override {
        return guarded("loadLocalMD", [&] {
            uintptr_t md = 0;
            int32_t s = tcpx_nixl_load_local_md(backend_, reinterpret_cast<uintptr_t>(in), &md);
            out = reinterpret_cast<BackendMD*>(md);
            return s;
        });
    }

    Status getNotifs(NotifList& out) override {
        return guarded("getNotifs",
                       [&] { return tcpx_nixl_get_notifs(backend_, sink_notif, &out); });
    }

    Status genNotif(const std::string& agent, const std::string& msg) const override {
        return guarded("genNotif",
                       [&] { return tcpx_nixl_gen_notif(backend_, view(agent), view(msg)); });
    }

    Status estimateXferCost(const XferOp&, const MetaDescList& local, const MetaDescList&,
                            const std::string& agent, BackendReqH* const& handle,
                            std::chrono::microseconds& duration,
                            std::chrono::microseconds& err_margin, CostMethod& method,
                            const OptArgsAgent*) const override {
        return guarded("estimateXferCost", [&] {
            uint64_t bytes = 0;
            for (const MetaDesc& d : local.descs) {
                bytes += d.len;
            }
            int64_t us = 0;
            int64_t margin_us = 0;
            int32_t s = tcpx_nixl_estimate_xfer_cost(backend_, view(agent), bytes,
                                                     reinterpret_cast<uintptr_t>(handle), &us,
                                                     &margin_us);
            if (s == kSuccess) {
                duration = std::chrono::microseconds(us);
                err_margin = std::chrono::microseconds(margin_us);
                method = kCostAnalyticalBackend;
            }
            return s;
        });
    }

  private:
    static bool add_param(void* ctx, TcpxStr key, TcpxStr value) noexcept {
        try {
            static_cast<TcpxEngine*>(ctx)->set_init_param(owned(key), owned(value));
            return true;
        } catch (...) {
            report("backend params");
            return false;
        }
    }

    using XferFn = int32_t (*)(const TcpxBackend*, int32_t, const TcpxDesc*, size_t, int32_t,
                               const TcpxDesc*, size_t, int32_t, TcpxStr, const TcpxXferOpts*,
                               uintptr_t*);

    int32_t xfer(XferFn fn, XferOp op, const MetaDescList& local, const MetaDescList& remote,
                 const std::string& agent, BackendReqH*& handle, const OptArgs* opt) const {
        std::vector<TcpxDesc> l = flatten(local);
        std::vector<TcpxDesc> r = flatten(remote);
        TcpxXferOpts opts{};
        if (opt != nullptr) {
            opts.has_notif = opt->has_notif;
            opts.notif = view(opt->notif_msg);
        }
        uintptr_t h = reinterpret_cast<uintptr_t>(handle);
        int32_t s = fn(backend_, op, l.data(), l.size(), local.type, r.data(), r.size(),
                       remote.type, view(agent), opt != nullptr ? &opts : nullptr, &h);
        handle = reinterpret_cast<BackendReqH*>(h);
        return s;
    }

    TcpxBackend* backend_ = nullptr;
};

EngineBase* create_engine(const InitParams* p) noexcept {
    if (p == nullptr) {
        return nullptr;
    }
    try {
        return new TcpxEngine(p);
    } catch (...) {
        report("create_engine");
        return nullptr;
    }
}

void destroy_engine(EngineBase* engine) noexcept {
    try {
        delete engine;
    } catch (...) {
        report("destroy_engine");
    }
}

const char* plugin_name() noexcept { return kPluginName; }

const char* plugin_version() noexcept { return TCPX_NIXL_VERSION; }

Params backend_options() noexcept {
    try {
        Params out;
        tcpx_nixl_backend_options(sink_param, &out);
        return out;
    } catch (...) {
        report("get_backend_options");
        return {};
    }
}

MemList plugin_mems() noexcept {
    try {
        return backend_mems();
    } catch (...) {
        report("get_backend_mems");
        return {};
    }
}

// Constant-initialised: nixl_plugin_init may run several times and from any thread.
constinit Plugin g_plugin = {
    kPluginApiVersion, create_engine,   destroy_engine, plugin_name,
    plugin_version,    backend_options, plugin_mems,
};

// Itanium C++ ABI: a pointer to a virtual member function stores 1 + the slot's byte offset
// from the vtable's address point. Comparing those with the expected slot numbers catches a
// misordered or missing virtual, which static_assert cannot see.
struct MemberFnRepr {
    uintptr_t ptr;
    ptrdiff_t adj;
};

template <class M>
size_t slot_of(M m) noexcept {
    static_assert(sizeof(M) == sizeof(MemberFnRepr));
    MemberFnRepr r;
    std::memcpy(&r, &m, sizeof r);
    return (r.ptr & 1) != 0 ? (r.ptr - 1) / sizeof(void*) : SIZE_MAX;
}

}  // namespace

size_t vtable_mismatches() noexcept {
    using E = EngineBase;
    const size_t got[] = {
        slot_of(&E::supportsRemote),
        slot_of(&E::supportsLocal),
        slot_of(&E::supportsNotif),
        slot_of(&E::getSupportedMems),
        slot_of(&E::registerMem),
        slot_of(&E::deregisterMem),
        slot_of(&E::connect),
        slot_of(&E::disconnect),
        slot_of(&E::unloadMD),
        slot_of(&E::prepXfer),
        slot_of(&E::postXfer),
        slot_of(&E::checkXfer),
        slot_of(&E::releaseReqH),
        slot_of(static_cast<Status (E::*)(const RemoteMetaDescList&, void*&, const OptArgs*)
                                const>(&E::prepMemView)),
        slot_of(static_cast<Status (E::*)(const MetaDescList&, void*&, const OptArgs*) const>(
            &E::prepMemView)),
        slot_of(&E::releaseMemView),
        slot_of(&E::getPublicData),
        slot_of(&E::getConnInfo),
        slot_of(&E::loadRemoteConnInfo),
        slot_of(&E::loadRemoteMD),
        slot_of(&E::loadLocalMD),
        slot_of(&E::getNotifs),
        slot_of(&E::genNotif),
        slot_of(&E::queryMem),
        slot_of(&E::estimateXferCost),
    };
    static_assert(sizeof(got) / sizeof(got[0]) == kEngineSlots - 2);
    size_t bad = 0;
    for (size_t i = 0; i < sizeof(got) / sizeof(got[0]); ++i) {
        // Slots 0 and 1 are the complete and deleting destructors.
        bad += got[i] != i + 2 ? 1 : 0;
    }
    return bad;
}

}  // namespace tcpx::nixl

extern "C" void* tcpx_shim_plugin_init(void) {
    return &tcpx::nixl::g_plugin;
}

extern "C" void tcpx_shim_plugin_fini(void) {}

extern "C" size_t tcpx_shim_vtable_mismatches(void) {
    return tcpx::nixl::vtable_mismatches();
}
