// Layout-compatible declarations of the NIXL 1.5.x backend-plugin ABI, written for tcpx.
//
// libnixl (the PyPI wheel nixl-cu12==1.5.1) dlopens libplugin_TCPX.so and talks to it only
// through the objects declared here: it reads the plugin table, constructs the engine through
// create_engine, calls the engine's virtuals by slot number, and reads two base-class members
// (backend type, init error) at fixed offsets. Nothing here is linked against NIXL: every
// function is inline or ours, so the plugin has no undefined NIXL symbol. Every size, offset
// and slot order below comes from docs/NIXL.md ("The backend ABI") and is pinned
// by static_asserts here and by the vtable self-check in shim.cc.
//
// Names are ours and live in tcpx::nixl so none of our inline code or typeinfo can collide
// with (or be interposed by) libnixl's own classes in the process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tcpx::nixl {

// nixl_status_t: negative values are errors, IN_PROG is the only positive value.
enum Status : int {
    kInProgress = 1,
    kSuccess = 0,
    kErrNotPosted = -1,
    kErrInvalidParam = -2,
    kErrBackend = -3,
    kErrNotFound = -4,
    kErrMismatch = -5,
    kErrNotAllowed = -6,
    kErrRepostActive = -7,
    kErrUnknown = -8,
    kErrNotSupported = -9,
    kErrRemoteDisconnect = -10,
    kErrCanceled = -11,
    kErrNoTelemetry = -12,
};

// nixl_mem_t: where a region lives.
enum MemType : int { kDram = 0, kVram = 1, kBlk = 2, kObj = 3, kFile = 4 };

// nixl_xfer_op_t: READ pulls remote -> local, WRITE pushes local -> remote.
enum XferOp : int { kRead = 0, kWrite = 1 };

// nixl_thread_sync_t as carried in the init params.
enum SyncMode : int { kSyncNone = 0, kSyncStrict = 1, kSyncRw = 2 };

// nixl_b_params_t / nixl_mem_list_t / notif_list_t.
using Params = std::unordered_map<std::string, std::string>;
using MemList = std::vector<MemType>;
using NotifList = std::vector<std::pair<std::string, std::string>>;

// nixlBackendMD and nixlBackendReqH are polymorphic upstream, but libnixl never dereferences
// or deletes them: to us they are opaque tokens whose values the Rust backend chooses.
struct BackendMD;
struct BackendReqH;

// nixlBasicDesc: one contiguous range.
struct BasicDesc {
    uintptr_t addr;
    size_t len;
    uint64_t dev_id;
};

// nixlMetaDesc: a range plus the backend metadata token it was registered or loaded under.
struct MetaDesc : BasicDesc {
    BackendMD* md;
};

// nixlBlobDesc: a range plus opaque bytes (user meta on register, our public data on load).
struct BlobDesc : BasicDesc {
    std::string meta_info;
};

// nixlRemoteMetaDesc: only named by the (unused) memory-view slot; declared for its size.
struct RemoteMetaDesc : MetaDesc {
    std::string remote_agent;
};

// nixlDescList<T>: polymorphic upstream. We only ever read lists libnixl built, never create,
// copy or destroy one, so the vtable pointer is declared as plain data we never touch.
template <class T>
struct DescList {
    const void* vptr_;
    MemType type;
    std::vector<T> descs;
};

using MetaDescList = DescList<MetaDesc>;
using RemoteMetaDescList = DescList<RemoteMetaDesc>;
using BlobDescList = DescList<BlobDesc>;

// nixl_opt_b_args_t: per-transfer extras; a notification rides along when has_notif is set.
struct OptArgs {
    std::string notif_msg;
    bool has_notif;
    std::string custom_param;
};

// nixlBackendInitParams: what create_engine receives. custom_params is valid only during it.
struct InitParams {
    std::string local_agent;
    std::string type;
    Params* custom_params;
    bool enable_prog_thread;
    uint64_t prog_thread_delay_us;
    SyncMode sync_mode;
    bool enable_telemetry;
};

// Element of the base class's telemetry queue. We never add events, so libnixl only ever
// sees (and moves out) an empty vector; only the vector's own size matters.
struct TelemetryEventSlot {
    uint32_t category;
    uint64_t value;
};

// Types named only by queryMem (left at its default) and estimateXferCost. They are passed by
// reference, so declarations are enough.
using QueryResponse = std::optional<Params>;
struct OptArgsAgent;  // nixl_opt_args_t, never dereferenced here
// nixl_cost_t (an enum class of int): how an estimate was made.
enum CostMethod : int { kCostAnalyticalBackend = 0 };

// nixlBackendEngine: the base class whose data members and virtual slots libnixl relies on.
// Slot numbers (after the two destructor slots 0-1) are given on each virtual.
class EngineBase {
  public:
    explicit EngineBase(const InitParams* p)
        : backend_type_(p->type),
          custom_params_(p->custom_params != nullptr ? *p->custom_params : Params{}),
          local_agent_(p->local_agent),
          enable_telemetry_(p->enable_telemetry) {}

    EngineBase(const EngineBase&) = delete;
    EngineBase& operator=(const EngineBase&) = delete;

    virtual ~EngineBase() = default;  // slots 0-1

    bool init_err() const noexcept { return init_err_; }
    const std::string& backend_type() const noexcept { return backend_type_; }

    virtual bool supportsRemote() const = 0;                 // 2
    virtual bool supportsLocal() const = 0;                  // 3
    virtual bool supportsNotif() const = 0;                  // 4
    virtual MemList getSupportedMems() const = 0;            // 5
    virtual Status registerMem(const BlobDesc& mem, const MemType& kind,
                               BackendMD*& out) = 0;         // 6
    virtual Status deregisterMem(BackendMD* md) = 0;         // 7
    virtual Status connect(const std::string& agent) = 0;    // 8
    virtual Status disconnect(const std::string& agent) = 0; // 9
    virtual Status unloadMD(BackendMD* md) = 0;              // 10
    virtual Status prepXfer(const XferOp& op, const MetaDescList& local,
                            const MetaDescList& remote, const std::string& agent,
                            BackendReqH*& handle,
                            const OptArgs* opt = nullptr) const = 0;  // 11
    virtual Status postXfer(const XferOp& op, const MetaDescList& local,
                            const MetaDescList& remote, const std::string& agent,
                            BackendReqH*& handle,
                            const OptArgs* opt = nullptr) const = 0;  // 12
    virtual Status checkXfer(BackendReqH* handle) const = 0;         // 13
    virtual Status releaseReqH(BackendReqH* handle) const = 0;       // 14

    // 15-16: memory views over remote / local lists (overload order is slot order).
    virtual Status prepMemView(const RemoteMetaDescList&, void*&,
                               const OptArgs* = nullptr) const {
        return kErrNotSupported;
    }
    virtual Status prepMemView(const MetaDescList&, void*&, const OptArgs* = nullptr) const {
        return kErrNotSupported;
    }
    virtual void releaseMemView(void*) const {}  // 17

    virtual Status getPublicData(const BackendMD*, std::string&) const {  // 18
        return kErrBackend;
    }
    virtual Status getConnInfo(std::string&) const { return kErrBackend; }  // 19
    virtual Status loadRemoteConnInfo(const std::string&, const std::string&) {  // 20
        return kErrBackend;
    }
    virtual Status loadRemoteMD(const BlobDesc&, const MemType&, const std::string&,
                                BackendMD*&) {  // 21
        return kErrBackend;
    }
    virtual Status loadLocalMD(BackendMD*, BackendMD*&) { return kErrBackend; }  // 22
    virtual Status getNotifs(NotifList&) { return kErrBackend; }                 // 23
    virtual Status genNotif(const std::string&, const std::string&) const {     // 24
        return kErrBackend;
    }
    virtual Status queryMem(const BlobDescList&, std::vector<QueryResponse>&) const {  // 25
        return kErrNotSupported;
    }
    virtual Status estimateXferCost(const XferOp&, const MetaDescList&, const MetaDescList&,
                                    const std::string&, BackendReqH* const&,
                                    std::chrono::microseconds&, std::chrono::microseconds&,
                                    CostMethod&, const OptArgsAgent* = nullptr) const {  // 26
        return kErrNotSupported;
    }

  private:
    // Read by libnixl through its own inline accessors: offsets are pinned below.
    std::string backend_type_;
    Params custom_params_;
    std::vector<TelemetryEventSlot> telemetry_events_;
    std::mutex telemetry_mutex_;

  protected:
    // Adds a parameter to what libnixl reports for this engine; an existing key is kept.
    bool set_init_param(const std::string& key, const std::string& value) {
        return custom_params_.emplace(key, value).second;
    }

    bool init_err_ = false;
    const std::string local_agent_;
    const bool enable_telemetry_;

    friend struct LayoutCheck;
};

// nixlBackendPlugin: the table nixl_plugin_init returns.
struct Plugin {
    int api_version;
    EngineBase* (*create_engine)(const InitParams*);
    void (*destroy_engine)(EngineBase*);
    const char* (*get_plugin_name)();
    const char* (*get_plugin_version)();
    Params (*get_backend_options)();
    MemList (*get_backend_mems)();
};

// The plugin API version libnixl 1.5.x accepts.
inline constexpr int kPluginApiVersion = 1;

// Number of virtual slots in the engine's vtable, destructors included.
inline constexpr size_t kEngineSlots = 27;

// offsetof on these non-standard-layout classes is exactly what we mean to pin (the Itanium
// layout libnixl was built with); silence the portability warning for the checks only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"

// Offsets of private/protected members, checked from a friend so the asserts can name them.
struct LayoutCheck {
    static_assert(sizeof(EngineBase) == 208);
    static_assert(offsetof(EngineBase, backend_type_) == 8);
    static_assert(offsetof(EngineBase, custom_params_) == 40);
    static_assert(offsetof(EngineBase, telemetry_events_) == 96);
    static_assert(offsetof(EngineBase, telemetry_mutex_) == 120);
    static_assert(offsetof(EngineBase, init_err_) == 160);
    static_assert(offsetof(EngineBase, local_agent_) == 168);
    static_assert(offsetof(EngineBase, enable_telemetry_) == 200);
};

static_assert(sizeof(Status) == 4 && sizeof(MemType) == 4 && sizeof(XferOp) == 4);
static_assert(sizeof(std::string) == 32, "cxx11 string ABI required");

static_assert(sizeof(Plugin) == 56);
static_assert(offsetof(Plugin, api_version) == 0);
static_assert(offsetof(Plugin, create_engine) == 8);
static_assert(offsetof(Plugin, destroy_engine) == 16);
static_assert(offsetof(Plugin, get_plugin_name) == 24);
static_assert(offsetof(Plugin, get_plugin_version) == 32);
static_assert(offsetof(Plugin, get_backend_options) == 40);
static_assert(offsetof(Plugin, get_backend_mems) == 48);

static_assert(sizeof(InitParams) == 96);
static_assert(offsetof(InitParams, local_agent) == 0);
static_assert(offsetof(InitParams, type) == 32);
static_assert(offsetof(InitParams, custom_params) == 64);
static_assert(offsetof(InitParams, enable_prog_thread) == 72);
static_assert(offsetof(InitParams, prog_thread_delay_us) == 80);
static_assert(offsetof(InitParams, sync_mode) == 88);
static_assert(offsetof(InitParams, enable_telemetry) == 92);

static_assert(sizeof(BasicDesc) == 24);
static_assert(offsetof(BasicDesc, addr) == 0);
static_assert(offsetof(BasicDesc, len) == 8);
static_assert(offsetof(BasicDesc, dev_id) == 16);
static_assert(sizeof(MetaDesc) == 32);
static_assert(offsetof(MetaDesc, md) == 24);
static_assert(sizeof(BlobDesc) == 56);
static_assert(offsetof(BlobDesc, meta_info) == 24);

static_assert(sizeof(MetaDescList) == 40);
static_assert(offsetof(MetaDescList, type) == 8);
static_assert(offsetof(MetaDescList, descs) == 16);
static_assert(sizeof(BlobDescList) == 40);
static_assert(offsetof(BlobDescList, descs) == 16);

static_assert(sizeof(OptArgs) == 72);
static_assert(offsetof(OptArgs, notif_msg) == 0);
static_assert(offsetof(OptArgs, has_notif) == 32);
static_assert(offsetof(OptArgs, custom_param) == 40);

#pragma GCC diagnostic pop

}  // namespace tcpx::nixl
