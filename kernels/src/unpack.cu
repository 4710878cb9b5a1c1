// tcpx unpack kernels: apply the fragment lists that a TCPX receive leaves in the
// netUnpackMeta table, copying each fragment from the bounce region to its destination.
//
// Work split: a block of UNPACK_WARPS warps takes a tile of UNPACK_WARPS consecutive entries of
// a slot; one thread per entry stages the tile (16 B each, one PCIe read for the whole tile when
// the table is in mapped host memory) and the slot's count in shared memory, then each warp copies
// one fragment, 16 bytes per lane per step when the relative alignment allows. Tiles beyond the
// grid are taken in a grid-stride loop, so any grid size is correct; the grid size only tunes speed.
// The count is read on the device, so the host never needs to know it.

#include <stdint.h>

#define UNPACK_SLOTS 16u
#define UNPACK_ENTRIES 2048u
#define UNPACK_WARPS 8u
#define UNPACK_THREADS (UNPACK_WARPS * 32u)
#define UNPACK_MAX_JOBS 32u
// Loads each lane keeps in flight per step; 8 x 16 B x 32 lanes = one 4 KiB page per warp step.
#define UNPACK_UNROLL 8u

struct __align__(16) LoadMeta {
    uint32_t src_off;
    uint32_t len;
    uint64_t dst_off;
};

struct NetUnpackMeta {
    LoadMeta mem[UNPACK_SLOTS][UNPACK_ENTRIES];
    uint64_t cnt[UNPACK_SLOTS];
};

// One (slot, destination) job of a batched launch; mirrors tcpx_kernels::UnpackJob.
struct UnpackJob {
    const NetUnpackMeta* meta;
    const uint8_t* bounce;
    uint8_t* dst;
    uint32_t slot;
    uint32_t reserved;
};

struct UnpackBatch {
    UnpackJob jobs[UNPACK_MAX_JOBS];
};

static_assert(sizeof(LoadMeta) == 16, "LoadMeta is 16 bytes");
static_assert(__builtin_offsetof(NetUnpackMeta, cnt) == 524288, "cnt follows the entries");
static_assert(sizeof(NetUnpackMeta) == 524416, "netUnpackMeta size");
static_assert(sizeof(UnpackJob) == 32, "UnpackJob size");
static_assert(sizeof(UnpackBatch) == 1024, "UnpackBatch size");

// How the table is read. The table is written by the host (or the NIC plugin) between launches;
// a launch boundary makes those writes visible, so no read needs to bypass caches.
#define META_RELAXED 0  // ld.relaxed.gpu
#define META_NC 1       // ld.global.nc (read-only path)
#define META_VOLATILE 2 // ld.volatile
#define META_HINT 3     // count from the launch, entries via ld.global.nc

template <int MODE>
__device__ __forceinline__ uint4 load_entry(const void* p) {
    uint4 v;
    if (MODE == META_RELAXED) {
        asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p));
    } else if (MODE == META_VOLATILE) {
        asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p));
    } else {
        v = __ldg(reinterpret_cast<const uint4*>(p));
    }
    return v;
}

template <int MODE>
__device__ __forceinline__ uint64_t load_count(const uint64_t* p) {
    uint64_t v;
    if (MODE == META_RELAXED) {
        asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p));
    } else if (MODE == META_VOLATILE) {
        asm volatile("ld.volatile.global.u64 %0, [%1];" : "=l"(v) : "l"(p));
    } else {
        v = __ldg(reinterpret_cast<const unsigned long long*>(p));
    }
    return v;
}

// Bytes [from, to) of a fragment, one byte per lane per step; used for heads and tails (< 16 B
// each, so a single step in practice).
__device__ __forceinline__ void copy_bytes(const uint8_t* s, uint8_t* d, uint32_t from, uint32_t to,
                                           uint32_t lane) {
    for (uint32_t i = from + lane; i < to; i += 32u) d[i] = s[i];
}

// n elements of T, both pointers T-aligned. Each lane issues UNPACK_UNROLL loads before storing
// so a whole page is in flight per warp.
template <typename T>
__device__ __forceinline__ void copy_elems(const T* __restrict__ s, T* __restrict__ d, uint32_t n,
                                           uint32_t lane) {
    for (uint32_t base = 0; base < n; base += 32u * UNPACK_UNROLL) {
        T v[UNPACK_UNROLL];
#pragma unroll
        for (uint32_t u = 0; u < UNPACK_UNROLL; ++u) {
            const uint32_t i = base + u * 32u + lane;
            if (i < n) v[u] = s[i];
        }
#pragma unroll
        for (uint32_t u = 0; u < UNPACK_UNROLL; ++u) {
            const uint32_t i = base + u * 32u + lane;
            if (i < n) d[i] = v[u];
        }
    }
}

// Source and destination disagree modulo 4: 4-byte aligned stores, each word assembled from the
// two aligned source words that hold its bytes. Those reads stay inside aligned words that hold at
// least one fragment byte, so they never touch a page (or 4-aligned allocation) the fragment does
// not. `s` is misaligned by r = s % 4 (1..3), `d` is 4-aligned.
__device__ __forceinline__ void copy_shifted(const uint8_t* s, uint8_t* d, uint32_t n,
                                             uint32_t lane) {
    const uint32_t r = (uint32_t)((uintptr_t)s & 3u);
    const uint32_t* sw = reinterpret_cast<const uint32_t*>(s - r);
    uint32_t* dw = reinterpret_cast<uint32_t*>(d);
    const uint32_t words = n / 4u;
    const uint32_t shift = 8u * r;
    for (uint32_t base = 0; base < words; base += 32u * UNPACK_UNROLL) {
        uint32_t lo[UNPACK_UNROLL], hi[UNPACK_UNROLL];
#pragma unroll
        for (uint32_t u = 0; u < UNPACK_UNROLL; ++u) {
            const uint32_t k = base + u * 32u + lane;
            if (k < words) {
                lo[u] = sw[k];
                hi[u] = sw[k + 1u];
            }
        }
#pragma unroll
        for (uint32_t u = 0; u < UNPACK_UNROLL; ++u) {
            const uint32_t k = base + u * 32u + lane;
            if (k < words) dw[k] = __funnelshift_r(lo[u], hi[u], shift);
        }
    }
    copy_bytes(s, d, words * 4u, n, lane);
}

// Copies one fragment with the whole warp. The widest element both pointers can share is chosen
// from their relative alignment; a byte head brings the destination to that alignment.
__device__ __forceinline__ void copy_fragment(const uint8_t* s, uint8_t* d, uint32_t len,
                                              uint32_t lane) {
    const uint32_t rel = (uint32_t)(((uintptr_t)s ^ (uintptr_t)d) & 15u);
    const uint32_t width = (rel == 0u) ? 16u : ((rel & 7u) == 0u) ? 8u : ((rel & 3u) == 0u) ? 4u : 1u;
    const uint32_t dmis = (uint32_t)((uintptr_t)d & (width == 1u ? 3u : width - 1u));
    uint32_t head = dmis == 0u ? 0u : (width == 1u ? 4u : width) - dmis;
    if (head > len) head = len;
    copy_bytes(s, d, 0u, head, lane);
    s += head;
    d += head;
    const uint32_t n = len - head;
    switch (width) {
        case 16u: {
            const uint32_t body = n / 16u;
            copy_elems(reinterpret_cast<const uint4*>(s), reinterpret_cast<uint4*>(d), body, lane);
            copy_bytes(s, d, body * 16u, n, lane);
            break;
        }
        case 8u: {
            const uint32_t body = n / 8u;
            copy_elems(reinterpret_cast<const uint2*>(s), reinterpret_cast<uint2*>(d), body, lane);
            copy_bytes(s, d, body * 8u, n, lane);
            break;
        }
        case 4u: {
            const uint32_t body = n / 4u;
            copy_elems(reinterpret_cast<const uint32_t*>(s), reinterpret_cast<uint32_t*>(d), body,
                       lane);
            copy_bytes(s, d, body * 4u, n, lane);
            break;
        }
        default:
            copy_shifted(s, d, n, lane);
            break;
    }
}

// Applies one slot; the block takes tiles blockIdx.x, blockIdx.x + gridDim.x, ... of it.
template <int MODE>
__device__ __forceinline__ void unpack_slot(const NetUnpackMeta* meta, const uint8_t* bounce,
                                            uint32_t slot, uint8_t* dst, uint64_t hint) {
    __shared__ uint4 stage[UNPACK_WARPS];
    __shared__ uint64_t count;
    slot %= UNPACK_SLOTS;
    const LoadMeta* list = meta->mem[slot];
    const uint32_t warp = threadIdx.x / 32u;
    const uint32_t lane = threadIdx.x % 32u;

    for (uint32_t tile = blockIdx.x;; tile += gridDim.x) {
        const uint32_t first = tile * UNPACK_WARPS;
        if (first >= UNPACK_ENTRIES) break;
        // The first tile's entries and the count are independent reads: issue them together so a
        // mapped-host table costs one round trip, not two.
        if (threadIdx.x < UNPACK_WARPS) stage[threadIdx.x] = load_entry<MODE>(&list[first + threadIdx.x]);
        if (tile == blockIdx.x && threadIdx.x == UNPACK_WARPS) {
            const uint64_t c = MODE == META_HINT ? hint : load_count<MODE>(&meta->cnt[slot]);
            // A count beyond the table's capacity is clamped: never read outside the table.
            count = c > UNPACK_ENTRIES ? UNPACK_ENTRIES : c;
        }
        __syncthreads();
        const uint32_t cnt = (uint32_t)count;
        if (first >= cnt) break;  // uniform across the block
        if (first + warp < cnt) {
            const uint4 e = stage[warp];
            const uint64_t dst_off = ((uint64_t)e.w << 32) | e.z;
            copy_fragment(bounce + e.x, dst + dst_off, e.y, lane);
        }
        __syncthreads();  // the next tile overwrites stage
    }
}

#define UNPACK_ENTRY_POINTS(SUFFIX, MODE)                                                     \
    extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)                               \
        tcpx_unpack_slot##SUFFIX(const NetUnpackMeta* meta, const uint8_t* bounce, uint32_t slot, \
                                 uint8_t* dst, uint64_t hint) {                                \
        unpack_slot<MODE>(meta, bounce, slot, dst, hint);                                      \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)                               \
        tcpx_unpack_batch##SUFFIX(const __grid_constant__ UnpackBatch batch) {                 \
        const UnpackJob& job = batch.jobs[blockIdx.y];                                         \
        unpack_slot<MODE>(job.meta, job.bounce, job.slot, job.dst, job.reserved);              \
    }

UNPACK_ENTRY_POINTS(, META_RELAXED)
UNPACK_ENTRY_POINTS(_nc, META_NC)
UNPACK_ENTRY_POINTS(_volatile, META_VOLATILE)
UNPACK_ENTRY_POINTS(_hint, META_HINT)
