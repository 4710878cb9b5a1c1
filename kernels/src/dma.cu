// tcpx emulated-NIC DMA kernels: what tcpxsock runs on a CUDA machine in place of a NIC's DMA
// engine, so that a CUDA request's host<->device crossing overlaps its TCP transfer instead of
// following it (send) or preceding the unpack (receive).
//
// One kernel (one block) serves one lane (one data socket and its helper thread) of one comm. The
// host queues each request's share of that lane — chunks first, first + lanes, ... of the
// request, chunk_bytes each, the last one cut at the request's size — in a ring in pinned,
// device-mapped memory (`DmaLane`), and launches the kernel only when none is running. The kernel
// takes the shares in order:
//
// - send: copies the share's bytes from the CUDA buffer to the same request offsets of the
//   comm's pinned staging range, piece by piece, publishing after each piece how many bytes of the
//   share are staged; the helper sends them as they come.
// - receive: copies each piece of the share to the same offsets of the device bounce region as
//   the helper publishes that it has landed in the host bounce pages, then sets the share's done
//   word.
//
// No kernel ever waits for long: one with nothing queued for idle_ns exits, and so does a receive
// whose bytes stop arriving for idle_ns (it records how far it got, and the host launches the
// lane again when it next finds the lane stopped with shares queued). This matters beyond
// cudaDeviceSynchronize: streams share a few hardware queues (CUDA_DEVICE_MAX_CONNECTIONS), and a
// kernel queued behind a waiting one on another stream cannot start — if it were the kernel that
// stages the awaited bytes (a sender in the same process), the two would wait for each other.
//
// Exit protocol (no atomics on host memory): an idle kernel stores state = 0, fences at system
// scope, then reads tail again and resumes if a share came in; the host stores tail, fences
// (mfence), then reads state and launches a kernel when it reads 0. One of the two sees the
// other's store, so a queued share is not left without a kernel; the host also relaunches any
// stopped lane with shares queued whenever it tests a request waiting on that lane.
//
// Ordering: the helper's stores are made visible before its landed word (sfence + release store);
// the kernel reads words with ld.relaxed.sys and fences before using what they announce. Its own
// writes are fenced at system scope before the word the host polls.

#include <stdint.h>

#define DMA_THREADS 1024u
#define DMA_WARPS (DMA_THREADS / 32u)
#define PAGE 4096u
#define DMA_RING 16u
// First pause between polls of a host-memory word; it doubles up to poll_ns while nothing changes.
#define POLL_MIN_NS 256u

#define DMA_SEND 0u
#define DMA_RECV 1u
#define DMA_DONE 1ull

struct __align__(16) LoadMeta {
    uint32_t src_off;
    uint32_t len;
    uint64_t dst_off;
};

// One lane's share of a request; mirrors tcpx_kernels::dma::Share.
struct DmaShare {
    uint64_t src;       // send: the request's CUDA buffer; receive: host bounce (device alias)
    uint64_t dst;       // send: the request's staging range (device alias); receive: device bounce
    uint64_t entries;   // receive: the request's slot in the meta table (device alias)
    uint64_t size;      // request bytes
    uint64_t chunk_bytes;
    uint64_t first;     // the share's first chunk
    uint64_t lanes;
    uint64_t progress;  // send: staged bytes (kernel writes); receive: landed bytes (host writes)
    uint64_t done;      // receive: done word (kernel writes)
    uint64_t pad[7];
};

// One lane's queue; mirrors tcpx_kernels::dma::Lane.
struct DmaLane {
    uint64_t tail;    // shares queued (host)
    uint64_t state;   // host sets 1 before a launch; a kernel that exits sets 0
    uint64_t head;    // shares finished (kernel; the next kernel starts there)
    uint64_t resume;  // bytes of the share at `head` already copied (a receive that stalled)
    uint64_t pad[12];
    DmaShare ring[DMA_RING];
};

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

// Bytes of a share, and the request offset of share byte b (chunks are contiguous in the request,
// a share's chunks follow each other in the share).
__device__ __forceinline__ uint64_t share_len(const DmaShare& s) {
    const uint64_t nchunks = (s.size + s.chunk_bytes - 1u) / s.chunk_bytes;
    uint64_t n = 0;
    for (uint64_t c = s.first; c < nchunks; c += s.lanes) n += min64(s.size - c * s.chunk_bytes, s.chunk_bytes);
    return n;
}

__device__ __forceinline__ uint64_t req_off(const DmaShare& s, uint64_t b) {
    const uint64_t k = b / s.chunk_bytes;
    return (s.first + k * s.lanes) * s.chunk_bytes + b % s.chunk_bytes;
}

// The block copies n bytes; 16-byte vectors, four in flight per thread, when both ends are 16-byte
// aligned.
__device__ __forceinline__ void block_copy(const uint8_t* src, uint8_t* dst, uint64_t n) {
    if ((((uintptr_t)src | (uintptr_t)dst) & 15u) == 0) {
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        const uint64_t nv = n / 16u;
        uint64_t i = threadIdx.x;
        for (; i + 3u * DMA_THREADS < nv; i += 4u * DMA_THREADS) {
            const uint4 a = s[i];
            const uint4 b = s[i + DMA_THREADS];
            const uint4 c = s[i + 2u * DMA_THREADS];
            const uint4 e = s[i + 3u * DMA_THREADS];
            d[i] = a;
            d[i + DMA_THREADS] = b;
            d[i + 2u * DMA_THREADS] = c;
            d[i + 3u * DMA_THREADS] = e;
        }
        for (; i < nv; i += DMA_THREADS) d[i] = s[i];
        for (uint64_t j = nv * 16u + threadIdx.x; j < n; j += DMA_THREADS) dst[j] = src[j];
    } else {
        for (uint64_t j = threadIdx.x; j < n; j += DMA_THREADS) dst[j] = src[j];
    }
}

__device__ void send_share(const DmaShare& s, uint64_t piece) {
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

// Copies the share from byte `lo` as it lands; returns the bytes copied: the share's length, or
// less when nothing new landed for idle_ns or the abort word is set (`*aborted`).
__device__ uint64_t recv_share(const DmaShare& s, uint64_t lo, uint64_t piece,
                               const volatile uint64_t* abort, uint64_t idle_ns, uint32_t poll_ns,
                               uint32_t* go) {
    const uint64_t len = share_len(s);
    const uint8_t* host = reinterpret_cast<const uint8_t*>(s.src);
    uint8_t* dev = reinterpret_cast<uint8_t*>(s.dst);
    const LoadMeta* entries = reinterpret_cast<const LoadMeta*>(s.entries);
    const volatile uint64_t* landed = reinterpret_cast<const volatile uint64_t*>(s.progress);
    const uint32_t warp = threadIdx.x / 32u;
    const uint32_t lane = threadIdx.x % 32u;
    while (lo < len) {
        if (threadIdx.x == 0) {
            // Copy whatever has landed, at least a page (or the share's rest), at most a piece.
            const uint64_t want = min64(lo + PAGE, len);
            const uint64_t since = now_ns();
            uint32_t ok = 1u;
            uint64_t seen = load_sys(landed);
            // Each poll is a PCIe read; polling slower while nothing comes keeps them from
            // crowding out the transfers' own PCIe traffic.
            uint32_t nap = POLL_MIN_NS;
            for (uint32_t polls = 0; seen < want; ++polls) {
                if ((polls % 16u == 15u && load_sys(abort) != 0u) || now_ns() - since > idle_ns) {
                    ok = 0u;
                    break;
                }
                __nanosleep(nap);
                nap = nap * 2u < poll_ns ? nap * 2u : poll_ns;
                seen = load_sys(landed);
            }
            __threadfence_system();  // the pages' bytes after the word that announced them
            uint64_t n = ok ? min64(seen, lo + piece) - lo : 0u;
            // Whole pages only, but at the share's end (the helper publishes whole pages but
            // there, so this only guards against a word that says otherwise).
            if (lo + n < len) n &= ~(uint64_t)(PAGE - 1u);
            go[0] = (uint32_t)n;
        }
        __syncthreads();
        const uint64_t n = go[0];
        __syncthreads();  // `go` is rewritten for the next piece
        if (n == 0u) return lo;
        // Whole pages of the share in [lo, lo + n), the last one possibly cut at the share's end.
        for (uint64_t b = lo + (uint64_t)warp * PAGE; b < lo + n; b += DMA_WARPS * PAGE) {
            const LoadMeta e = entries[req_off(s, b) / PAGE];
            const uint8_t* from = host + e.src_off;
            uint8_t* to = dev + e.src_off;
            const uint32_t plen = e.len;
            if (plen == PAGE) {
                const uint4* sv = reinterpret_cast<const uint4*>(from);
                uint4* dv = reinterpret_cast<uint4*>(to);
                uint4 v[8];
#pragma unroll
                for (uint32_t r = 0; r < 8u; ++r) v[r] = sv[r * 32u + lane];
#pragma unroll
                for (uint32_t r = 0; r < 8u; ++r) dv[r * 32u + lane] = v[r];
            } else {
                for (uint32_t j = lane; j < plen; j += 32u) to[j] = from[j];
            }
        }
        lo += n;
    }
    return lo;
}

// Serves lane `ctl` until it has been idle for idle_ns (or the abort word is set).
extern "C" __global__ void __launch_bounds__(DMA_THREADS)
tcpx_dma_lane(DmaLane* ctl, uint32_t mode, const uint64_t* abort, uint64_t piece, uint64_t idle_ns,
              uint32_t poll_ns) {
    __shared__ DmaShare share;
    __shared__ uint32_t go[1];
    __shared__ uint32_t cmd;  // 0 = abort, 1 = the share at `head` is queued, 2 = stopped idle
    volatile uint64_t* tail = &ctl->tail;
    volatile uint64_t* state = &ctl->state;
    volatile uint64_t* headp = &ctl->head;
    volatile uint64_t* resumep = &ctl->resume;
    const volatile uint64_t* ab = abort;
    uint64_t head = load_sys(headp);
    uint64_t resume = load_sys(resumep);
    for (;;) {
        if (threadIdx.x == 0) {
            uint64_t idle_since = now_ns();
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
                    store_sys(state, 1u);  // a share came in meanwhile: keep going
                    continue;
                }
                __nanosleep(nap);
                nap = nap * 2u < poll_ns ? nap * 2u : poll_ns;
            }
        }
        __syncthreads();
        if (cmd == 2u) return;  // state is 0 already (and may be 1 again: a new launch's)
        if (cmd == 0u) break;
        // The share's nine fields, read from host memory in parallel (one round trip).
        if (threadIdx.x < 9u) {
            const volatile uint64_t* f =
                reinterpret_cast<const volatile uint64_t*>(&ctl->ring[head % DMA_RING]);
            reinterpret_cast<uint64_t*>(&share)[threadIdx.x] = load_sys(f + threadIdx.x);
        }
        __syncthreads();
        if (mode == DMA_SEND) {
            send_share(share, piece);
        } else {
            const uint64_t got = recv_share(share, resume, piece, ab, idle_ns, poll_ns, go);
            if (got < share_len(share)) {
                // Stalled (or aborted): stop here; the host relaunches the lane.
                if (threadIdx.x == 0) store_sys(resumep, got);
                break;
            }
            __threadfence_system();
            __syncthreads();
            if (threadIdx.x == 0) store_sys(reinterpret_cast<volatile uint64_t*>(share.done), DMA_DONE);
        }
        resume = 0u;
        ++head;
        if (threadIdx.x == 0) {
            store_sys(resumep, 0u);
            store_sys(headp, head);
        }
        __syncthreads();  // `share` and `cmd` are rewritten next
    }
    if (threadIdx.x == 0) {
        __threadfence_system();  // head and resume before the state that lets a new kernel in
        store_sys(state, 0u);
    }
}
