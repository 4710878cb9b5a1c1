// tcpx staging kernel: what tcpxsock runs on a CUDA machine to move a CUDA send's bytes into
// pinned host memory the way a NIC's DMA engine reads them — piece by piece while the socket is
// already sending — instead of one copy that the whole request waits for.
//
// One kernel (one block) serves one lane (one data socket and its helper thread) of one send
// comm. The host queues each request's share of that lane — chunks first, first + lanes, ... of
// the request, chunk_bytes each, the last one cut at the request's size — in a ring in pinned,
// device-mapped memory (`StageLane`) and launches the kernel only when none is running. The
// kernel takes the shares in order, copies each share's bytes from the CUDA buffer to the same
// request offsets of the comm's staging range, and after each piece publishes how many bytes of
// the share are in; the helper sends them as they come.
//
// A kernel with nothing queued for idle_ns exits, so an application's cudaDeviceSynchronize waits
// at most that long after the last send. It never waits for anything else: streams share a few
// hardware queues (CUDA_DEVICE_MAX_CONNECTIONS), and a kernel that waited for other work (bytes
// from a peer in the same process, say) could hold up that very work.
//
// Exit protocol (no atomics on host memory): an idle kernel stores state = 0, fences at system
// scope, then reads tail again and goes on if a share came in; the host stores tail, fences
// (mfence), then reads state and launches a kernel when it reads 0. One of the two sees the
// other's store, so a queued share is not left without a kernel (and the host relaunches a
// stopped lane with shares queued whenever it tests a request waiting on it).
//
// Ordering: the host writes a share before its tail (release); the kernel reads words with
// ld.relaxed.sys and fences before reading what they announce. Its copies are fenced at system
// scope before the progress word the helper polls.

#include <stdint.h>

#define STAGE_THREADS 1024u
#define STAGE_RING 16u
// First pause between polls of the tail; it doubles up to poll_ns while nothing comes (each poll
// is a PCIe read, which at a fast pace slows the transfers' own PCIe traffic).
#define POLL_MIN_NS 256u

// One lane's share of a request; mirrors tcpx_kernels::stage::Share.
struct StageShare {
    uint64_t src;       // the request's CUDA buffer
    uint64_t dst;       // the request's staging range (device alias)
    uint64_t size;      // request bytes
    uint64_t chunk_bytes;
    uint64_t first;     // the share's first chunk
    uint64_t lanes;
    uint64_t progress;  // staged bytes of the share (device alias of the word the helper polls)
    uint64_t pad[9];
};

// One lane's queue; mirrors tcpx_kernels::stage::Lane.
struct StageLane {
    uint64_t tail;   // shares queued (host)
    uint64_t state;  // host sets 1 before a launch; a kernel that exits sets 0
    uint64_t head;   // shares finished (kernel; the next kernel starts there)
    uint64_t pad[13];
    StageShare ring[STAGE_RING];
};

#define SHARE_WORDS 7u

__device__ __forceinline__ uint64_t load_sys(const volatile uint64_t* p) {
    uint64_t v;
    asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void store_sys(volatile uint64_t* p, uint64_t v) {
    asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t now_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

// Bytes of a share: its chunks, every lanes-th of the request's from `first`.
__device__ __forceinline__ uint64_t share_len(const StageShare& s) {
    const uint64_t nchunks = (s.size + s.chunk_bytes - 1u) / s.chunk_bytes;
    uint64_t n = 0;
    for (uint64_t c = s.first; c < nchunks; c += s.lanes)
        n += min64(s.size - c * s.chunk_bytes, s.chunk_bytes);
    return n;
}

// The request offset of share byte b.
__device__ __forceinline__ uint64_t req_off(const StageShare& s, uint64_t b) {
    const uint64_t k = b / s.chunk_bytes;
    return (s.first + k * s.lanes) * s.chunk_bytes + b % s.chunk_bytes;
}

// The block copies n bytes; 16-byte vectors, four in flight per thread, when both ends are 16-byte
// aligned (the host queues only such shares), bytes otherwise.
__device__ __forceinline__ void block_copy(const uint8_t* src, uint8_t* dst, uint64_t n) {
    if ((((uintptr_t)src | (uintptr_t)dst) & 15u) == 0) {
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        const uint64_t nv = n / 16u;
        uint64_t i = threadIdx.x;
        for (; i + 3u * STAGE_THREADS < nv; i += 4u * STAGE_THREADS) {
            const uint4 a = s[i];
            const uint4 b = s[i + STAGE_THREADS];
            const uint4 c = s[i + 2u * STAGE_THREADS];
            const uint4 e = s[i + 3u * STAGE_THREADS];
            d[i] = a;
            d[i + STAGE_THREADS] = b;
            d[i + 2u * STAGE_THREADS] = c;
            d[i + 3u * STAGE_THREADS] = e;
        }
        for (; i < nv; i += STAGE_THREADS) d[i] = s[i];
        for (uint64_t j = nv * 16u + threadIdx.x; j < n; j += STAGE_THREADS) dst[j] = src[j];
    } else {
        for (uint64_t j = threadIdx.x; j < n; j += STAGE_THREADS) dst[j] = src[j];
    }
}

__device__ void stage_share(const StageShare& s, uint64_t piece) {
    const uint64_t len = share_len(s);
    const uint8_t* src = reinterpret_cast<const uint8_t*>(s.src);
    uint8_t* dst = reinterpret_cast<uint8_t*>(s.dst);
    for (uint64_t lo = 0; lo < len;) {
        // A piece never crosses a chunk, so it is contiguous in the request.
        const uint64_t in_chunk = s.chunk_bytes - lo % s.chunk_bytes;
        const uint64_t n = min64(min64(piece, in_chunk), len - lo);
        const uint64_t off = req_off(s, lo);
        block_copy(src + off, dst + off, n);
        lo += n;
        __threadfence_system();
        __syncthreads();
        if (threadIdx.x == 0) store_sys(reinterpret_cast<volatile uint64_t*>(s.progress), lo);
    }
}

// Serves lane `ctl` until nothing was queued for idle_ns or the abort word is set.
extern "C" __global__ void __launch_bounds__(STAGE_THREADS)
tcpx_stage_lane(StageLane* ctl, const uint64_t* abort, uint64_t piece, uint64_t idle_ns,
                uint32_t poll_ns) {
    __shared__ StageShare share;
    __shared__ uint32_t cmd;  // 0 = aborted, 1 = the share at `head` is queued, 2 = stopped idle
    volatile uint64_t* tail = &ctl->tail;
    volatile uint64_t* state = &ctl->state;
    volatile uint64_t* headp = &ctl->head;
    const volatile uint64_t* ab = abort;
    uint64_t head = load_sys(headp);
    for (;;) {
        if (threadIdx.x == 0) {
            const uint64_t idle_since = now_ns();
            uint32_t nap = POLL_MIN_NS;
            cmd = 0u;
            for (uint32_t polls = 0;; ++polls) {
                if (polls % 16u == 0u && load_sys(ab) != 0u) break;
                if (load_sys(tail) > head) {
                    __threadfence_system();  // the share's fields after the tail that announced it
                    cmd = 1u;
                    break;
                }
                if (now_ns() - idle_since > idle_ns) {
                    store_sys(state, 0u);
                    __threadfence_system();
                    if (load_sys(tail) == head) {  // stopped; the host launches again
                        cmd = 2u;
                        break;
                    }
                    store_sys(state, 1u);  // a share came in meanwhile: go on
                    continue;
                }
                __nanosleep(nap);
                nap = nap * 2u < poll_ns ? nap * 2u : poll_ns;
            }
        }
        __syncthreads();
        if (cmd == 2u) return;  // state is 0 already (and may be 1 again: a new launch's)
        if (cmd == 0u) break;
        // The share's fields, read from host memory in parallel (one round trip).
        if (threadIdx.x < SHARE_WORDS) {
            const volatile uint64_t* f =
                reinterpret_cast<const volatile uint64_t*>(&ctl->ring[head % STAGE_RING]);
            reinterpret_cast<uint64_t*>(&share)[threadIdx.x] = load_sys(f + threadIdx.x);
        }
        __syncthreads();
        stage_share(share, piece);
        ++head;
        if (threadIdx.x == 0) {
            store_sys(headp, head);
            __threadfence_system();  // head before any later state = 0 (the host reads both)
        }
        __syncthreads();  // `share` and `cmd` are rewritten next
    }
    if (threadIdx.x == 0) {
        __threadfence_system();  // head before the state that lets a new kernel in
        store_sys(state, 0u);
    }
}
