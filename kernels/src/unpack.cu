// tcpx unpack kernels: apply the fragment lists that a TCPX receive leaves in the
// netUnpackMeta table, copying each fragment from the bounce region to its destination.
//
// Work split: a block of UNPACK_WARPS warps takes a tile of UNPACK_WARPS consecutive entries of
// a slot; one thread per entry stages the tile in shared memory (16 B each: one PCIe read for the
// whole tile when the table is in mapped host memory), then each warp copies one fragment, 16 bytes
// per lane per step when the relative alignment allows. Blocks take tiles in a grid-stride loop and
// prefetch their next tile while copying, so any grid size is correct; it only tunes speed.
//
// The fragment count comes from the launch when the host knows it, else from cnt[slot] in the
// table. Every block must then read cnt itself, and reads of one host-memory address from many SMs
// are served one after another (on H200 a 4 MiB slot ran at 350 GB/s this way, 860 GB/s with the
// count given), so the table-read mode is slower and should use few blocks.

#include <stdint.h>

// The table's shape comes from build.rs: tcpx_core::ring::TCPX_REQUESTS slots of
// tcpx_core::unpack::ENTRIES_PER_SLOT entries, one definition for the host and the kernel.
#if !defined(UNPACK_SLOTS) || !defined(UNPACK_ENTRIES)
#error "UNPACK_SLOTS and UNPACK_ENTRIES are passed by kernels/build.rs"
#endif
#define UNPACK_WARPS 8u
#define UNPACK_THREADS (UNPACK_WARPS * 32u)
#define UNPACK_MAX_JOBS 32u
// A job count meaning "read cnt[slot] from the table".
#define UNPACK_COUNT_FROM_TABLE 0xFFFFFFFFu
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
    uint32_t count;  // fragments, or UNPACK_COUNT_FROM_TABLE
};

struct UnpackBatch {
    UnpackJob jobs[UNPACK_MAX_JOBS];
};

// Fragment lists the host has already read (and checked) travel in the launch parameters, so the
// kernel starts copying without a dependent read of a host-memory table (one PCIe round trip per
// launch, measured as 1.3 us of a 512 KiB chunk's 11.6 us on H200), and copies exactly the
// entries the host checked. Jobs own consecutive runs of `entries`.
#define UNPACK_LIST_JOBS 16u
#define UNPACK_LIST_ENTRIES 1024u
// A short list travels in a smaller parameter block (4.4 KB instead of 16.8 KB): the driver
// copies and the GPU fetches every launch's whole block, whatever the count.
#define UNPACK_SHORT_LIST_ENTRIES 256u

struct UnpackListJob {
    const uint8_t* bounce;
    uint8_t* dst;
    uint32_t first;  // index of the job's first entry
    uint32_t count;
};

template <uint32_t N>
struct UnpackListOf {
    UnpackListJob jobs[UNPACK_LIST_JOBS];
    uint32_t njobs;
    uint32_t count;  // entries in all
    uint32_t reserved[2];
    LoadMeta entries[N];
};

typedef UnpackListOf<UNPACK_LIST_ENTRIES> UnpackList;
typedef UnpackListOf<UNPACK_SHORT_LIST_ENTRIES> UnpackShortList;

static_assert(sizeof(LoadMeta) == 16, "LoadMeta is 16 bytes");
static_assert(__builtin_offsetof(NetUnpackMeta, cnt) == 524288, "cnt follows the entries");
static_assert(sizeof(NetUnpackMeta) == 524416, "netUnpackMeta size");
static_assert(sizeof(UnpackJob) == 32, "UnpackJob size");
static_assert(sizeof(UnpackBatch) == 1024, "UnpackBatch size");
static_assert(sizeof(UnpackListJob) == 24, "UnpackListJob size");
static_assert(sizeof(UnpackList) == 16784, "UnpackList size");
static_assert(__builtin_offsetof(UnpackList, entries) == 400, "entries follow the header");
static_assert(sizeof(UnpackShortList) == 4496, "UnpackShortList size");

// The table is written by the host (or the NIC plugin) between launches; a launch boundary makes
// those writes visible. Entries go through the read-only path; the count is read like NCCL does.
__device__ __forceinline__ uint4 load_entry(const LoadMeta* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
}

__device__ __forceinline__ uint64_t load_count(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p));
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
__device__ __forceinline__ void unpack_slot(const NetUnpackMeta* meta, const uint8_t* bounce,
                                            uint32_t slot, uint8_t* dst, uint32_t count) {
    __shared__ uint4 stage[UNPACK_WARPS];
    __shared__ uint32_t table_count;
    slot %= UNPACK_SLOTS;
    const LoadMeta* list = meta->mem[slot];
    const uint32_t warp = threadIdx.x / 32u;
    const uint32_t lane = threadIdx.x % 32u;
    const bool known = count != UNPACK_COUNT_FROM_TABLE;
    // With an unknown count, the table's capacity bounds the tiles until cnt arrives. A count
    // beyond the capacity is clamped: never read outside the table.
    uint32_t cnt = known && count < UNPACK_ENTRIES ? count : UNPACK_ENTRIES;
    uint32_t first = blockIdx.x * UNPACK_WARPS;
    if (first >= cnt) return;  // uniform; a block with nothing to do reads nothing

    // The first tile's entries and the count are independent reads: issue them together.
    uint4 pending = make_uint4(0u, 0u, 0u, 0u);
    if (threadIdx.x < UNPACK_WARPS) pending = load_entry(&list[first + threadIdx.x]);
    if (!known && threadIdx.x == UNPACK_WARPS) {
        const uint64_t c = load_count(&meta->cnt[slot]);
        table_count = c > UNPACK_ENTRIES ? UNPACK_ENTRIES : (uint32_t)c;
    }
    for (;;) {
        if (threadIdx.x < UNPACK_WARPS) stage[threadIdx.x] = pending;
        __syncthreads();
        if (!known) cnt = table_count;
        if (first >= cnt) break;  // uniform
        const uint32_t next = first + gridDim.x * UNPACK_WARPS;
        // Prefetch the next tile so its table read overlaps this tile's copy. next is a multiple
        // of UNPACK_WARPS below cnt <= UNPACK_ENTRIES, so the whole tile lies inside the table.
        if (threadIdx.x < UNPACK_WARPS && next < cnt) pending = load_entry(&list[next + threadIdx.x]);
        if (first + warp < cnt) {
            const uint4 e = stage[warp];
            const uint64_t dst_off = ((uint64_t)e.w << 32) | e.z;
            copy_fragment(bounce + e.x, dst + dst_off, e.y, lane);
        }
        first = next;
        if (first >= cnt) break;  // uniform
        __syncthreads();  // stage is overwritten next
    }
}

extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)
tcpx_unpack_slot(const NetUnpackMeta* meta, const uint8_t* bounce, uint32_t slot, uint32_t count,
                 uint8_t* dst) {
    unpack_slot(meta, bounce, slot, dst, count);
}

// gridDim.y jobs, gridDim.x blocks each; the descriptors travel in the launch parameters, so the
// host can reuse its copy as soon as the launch call returns.
extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)
tcpx_unpack_batch(const __grid_constant__ UnpackBatch batch) {
    const UnpackJob& job = batch.jobs[blockIdx.y];
    unpack_slot(job.meta, job.bounce, job.slot, job.dst, job.count);
}

// Every entry of the list; warp w of block b takes entries b * UNPACK_WARPS + w, then every
// gridDim.x * UNPACK_WARPS further. The entry and its job are uniform across the warp.
template <uint32_t N>
__device__ __forceinline__ void unpack_list(const UnpackListOf<N>& list) {
    const uint32_t warp = threadIdx.x / 32u;
    const uint32_t lane = threadIdx.x % 32u;
    const uint32_t count = list.count < N ? list.count : N;
    const uint32_t njobs = list.njobs < UNPACK_LIST_JOBS ? list.njobs : UNPACK_LIST_JOBS;
    uint32_t job = 0;
    for (uint32_t i = blockIdx.x * UNPACK_WARPS + warp; i < count; i += gridDim.x * UNPACK_WARPS) {
        // Entries only grow, so the job index only moves forward.
        while (job + 1u < njobs && i >= list.jobs[job + 1u].first) ++job;
        const LoadMeta e = list.entries[i];
        copy_fragment(list.jobs[job].bounce + e.src_off, list.jobs[job].dst + e.dst_off, e.len,
                      lane);
    }
}

extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)
tcpx_unpack_list(const __grid_constant__ UnpackList list) {
    unpack_list(list);
}

extern "C" __global__ void __launch_bounds__(UNPACK_THREADS)
tcpx_unpack_short_list(const __grid_constant__ UnpackShortList list) {
    unpack_list(list);
}
