//! The GPU unpack kernels against the CPU oracle `tcpx_core::unpack::unpack_cpu`: random fragment
//! lists (sizes 1..=4096, every source/destination alignment, shuffled order), empty slots, full
//! 4 MiB slots of pages and full 2048-entry slots, single and batched launches, with the bounce in
//! device memory and in pinned device-mapped host memory. The table lives in mapped host memory,
//! as TCPX keeps it. Every destination sits between canaries, and the whole destination buffer is
//! compared, so a byte written outside a fragment fails the test.
//!
//! Without a CUDA driver each test prints `SKIP: <reason>` and returns; `REQUIRE_GPU=1` makes that
//! a failure.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::unpack::{unpack_cpu, LoadMeta, NetUnpackMeta, ENTRIES_PER_SLOT, PAGE_SIZE};
use tcpx_kernels::mem::{DeviceBuffer, MappedHostBuffer};
use tcpx_kernels::{
    gpu_available, Error, Kernels, UnpackJob, UnpackList, MAX_LIST_ENTRIES, MAX_LIST_JOBS,
    SHORT_LIST_ENTRIES,
};
use zerocopy::FromBytes;

const CANARY: usize = 4096 + 13;

struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
}

fn gpu(test: &str) -> Option<Gpu> {
    let require = std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1");
    let skip = |reason: String| {
        assert!(!require, "REQUIRE_GPU=1 but {test} cannot run: {reason}");
        println!("SKIP: {test}: {reason}");
    };
    if let Err(reason) = gpu_available() {
        skip(reason);
        return None;
    }
    let ctx = CudaContext::new(0).expect("CudaContext::new(0)");
    let kernels = match Kernels::load(&ctx) {
        Ok(k) => k,
        Err(e @ Error::KernelsNotBuilt) => {
            skip(e.to_string());
            return None;
        }
        Err(e) => panic!("loading kernels: {e}"),
    };
    let stream = ctx.new_stream().expect("cuStreamCreate");
    Some(Gpu {
        ctx,
        stream,
        kernels,
    })
}

/// splitmix64: deterministic, dependency-free test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.range(0, i as u64) as usize);
        }
    }
    /// A fragment length in 1..=4096, biased towards the edges of every copy path.
    fn frag_len(&mut self) -> u32 {
        match self.range(0, 5) {
            0 => self.range(1, 16) as u32,
            1 => PAGE_SIZE as u32 - self.range(0, 16) as u32,
            2 => 16 * self.range(1, 256) as u32,
            _ => self.range(1, PAGE_SIZE as u64) as u32,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum BounceKind {
    Device,
    Mapped,
}

enum Bounce {
    Device(DeviceBuffer),
    Mapped(MappedHostBuffer),
}

impl Bounce {
    fn new(ctx: &Arc<CudaContext>, kind: BounceKind, bytes: &[u8]) -> Bounce {
        match kind {
            BounceKind::Device => {
                let mut b = DeviceBuffer::new(ctx, bytes.len()).expect("device bounce");
                b.write(0, bytes).expect("fill device bounce");
                Bounce::Device(b)
            }
            BounceKind::Mapped => {
                let mut b = MappedHostBuffer::new(ctx, bytes.len()).expect("mapped bounce");
                b.as_mut_slice().copy_from_slice(bytes);
                Bounce::Mapped(b)
            }
        }
    }
    fn ptr(&self) -> u64 {
        match self {
            Bounce::Device(b) => b.ptr(),
            Bounce::Mapped(b) => b.dev_ptr(),
        }
    }
}

/// A mapped-host `netUnpackMeta` table.
struct Table(MappedHostBuffer);

impl Table {
    fn new(ctx: &Arc<CudaContext>) -> Table {
        Table(MappedHostBuffer::new(ctx, size_of::<NetUnpackMeta>()).expect("meta table"))
    }
    fn meta(&mut self) -> &mut NetUnpackMeta {
        NetUnpackMeta::mut_from_bytes(self.0.as_mut_slice()).expect("table layout")
    }
    fn publish(&mut self, slot: usize, entries: &[LoadMeta]) {
        let m = self.meta();
        m.mem[slot][..entries.len()].copy_from_slice(entries);
        // Stale entries past the count must be ignored by the kernel: poison them.
        for e in &mut m.mem[slot][entries.len()..] {
            *e = LoadMeta {
                src_off: u32::MAX - 7,
                len: 4096,
                dst_off: u64::MAX / 2,
            };
        }
        m.cnt[slot] = entries.len() as u64;
    }
}

/// One slot to apply: which table and slot, its fragments, its destination size, and the
/// destination's offset from a 256-byte boundary.
struct Job {
    table: usize,
    slot: usize,
    entries: Vec<LoadMeta>,
    dst_len: usize,
    dst_align: usize,
}

#[derive(Clone, Copy, Debug)]
enum Launch {
    /// One `launch_unpack` per job (count read on the device).
    Single,
    /// One `launch_unpack_counted` per job (count given by the host).
    SingleCounted,
    /// `launch_unpack_batch` for all jobs, counts read on the device.
    Batch,
    /// `launch_unpack_batch`, every other job with its count given by the host.
    BatchMixed,
    /// `launch_unpack_list`: the entries copied from the table into the launch parameters.
    List,
}

const SINGLE: [Launch; 2] = [Launch::Single, Launch::SingleCounted];

/// Runs `jobs` on the GPU and checks the destination buffer, canaries included, byte for byte
/// against the CPU oracle applied to the same initial contents.
fn check(g: &Gpu, kind: BounceKind, bounce: &[u8], jobs: &[Job], launch: Launch, seed: u64) {
    let mut rng = Rng(seed ^ 0xD1B5_4A32_D192_ED03);
    let tables_needed = jobs.iter().map(|j| j.table + 1).max().unwrap_or(1);
    let mut tables: Vec<Table> = (0..tables_needed).map(|_| Table::new(&g.ctx)).collect();
    for j in jobs {
        tables[j.table].publish(j.slot, &j.entries);
    }
    let dev_bounce = Bounce::new(&g.ctx, kind, bounce);

    // Destination regions laid out between canaries of at least CANARY bytes.
    let mut offsets = Vec::with_capacity(jobs.len());
    let mut total = CANARY;
    for j in jobs {
        let off = total.div_ceil(256) * 256 + j.dst_align;
        offsets.push(off);
        total = off + j.dst_len + CANARY;
    }
    let initial = rng.bytes(total);
    let mut dst = DeviceBuffer::new(&g.ctx, total).expect("dst");
    dst.write(0, &initial).expect("fill dst");

    let descs: Vec<UnpackJob> = jobs
        .iter()
        .zip(&offsets)
        .map(|(j, &off)| {
            UnpackJob::new(
                tables[j.table].0.dev_ptr(),
                dev_bounce.ptr(),
                j.slot as u32,
                dst.ptr() + off as u64,
            )
        })
        .collect();
    // For every launch below: the tables, `dev_bounce` and `dst` are live allocations of this
    // context until after `synchronize`; each test builds its fragments inside the bounce
    // region and inside its job's `dst_len` bytes (`unpack_cpu` below fails the test if one is
    // not), and the jobs' destination regions are disjoint, laid out between canaries.
    match launch {
        Launch::Single => {
            for d in &descs {
                // SAFETY: see above; `d` is one job's table slot, bounce and destination.
                unsafe {
                    g.kernels
                        .launch_unpack(&g.stream, d.meta, d.bounce, d.slot, d.dst)
                }
                .expect("launch_unpack");
            }
        }
        Launch::SingleCounted => {
            for (d, j) in descs.iter().zip(jobs) {
                let n = j.entries.len() as u32;
                // SAFETY: see above; `n` is the number of entries published in the slot.
                unsafe {
                    g.kernels
                        .launch_unpack_counted(&g.stream, d.meta, d.bounce, d.slot, n, d.dst)
                }
                .expect("launch_unpack_counted");
            }
        }
        Launch::Batch => {
            // SAFETY: see above; the jobs' destinations are disjoint.
            unsafe { g.kernels.launch_unpack_batch(&g.stream, &descs) }.expect("launch batch");
        }
        Launch::BatchMixed => {
            let mixed: Vec<UnpackJob> = descs
                .iter()
                .zip(jobs)
                .enumerate()
                .map(|(i, (d, j))| {
                    if i % 2 == 0 {
                        d.with_count(j.entries.len() as u32)
                    } else {
                        *d
                    }
                })
                .collect();
            // SAFETY: see above; a given count is the slot's published entry count.
            unsafe { g.kernels.launch_unpack_batch(&g.stream, &mixed) }.expect("launch batch");
        }
        Launch::List => {
            let mut list = UnpackList::new_boxed();
            for (d, j) in descs.iter().zip(jobs) {
                list.push(d.bounce, d.dst, &j.entries)
                    .expect("the test's jobs fit one list");
            }
            // SAFETY: see above; the list holds copies of the same entries.
            unsafe { g.kernels.launch_unpack_list(&g.stream, &list) }.expect("launch list");
        }
    }
    g.stream.synchronize().expect("kernel run");

    let mut expected = initial;
    for (j, &off) in jobs.iter().zip(&offsets) {
        let n = unpack_cpu(&j.entries, bounce, &mut expected[off..off + j.dst_len])
            .expect("test fragments are valid");
        assert_eq!(n, j.entries.iter().map(|e| e.len as u64).sum::<u64>());
    }
    let mut got = vec![0u8; total];
    dst.read(0, &mut got).expect("read dst");
    if let Some(i) = (0..total).find(|&i| got[i] != expected[i]) {
        let job = offsets.iter().rposition(|&o| o <= i);
        panic!(
            "{kind:?} {launch:?} seed {seed:#x}: byte {i} is {:#04x}, expected {:#04x} (job {job:?}, {} of its \
             region; canary bytes lie before each region and after its {} bytes)",
            got[i],
            expected[i],
            job.map_or(i, |k| i - offsets[k]),
            job.map_or(0, |k| jobs[k].dst_len),
        );
    }
}

/// `n` fragments of random size at random source offsets (any alignment), packed into a
/// destination with random gaps (any alignment), in shuffled order.
fn random_fragments(rng: &mut Rng, bounce_len: usize, n: usize) -> (Vec<LoadMeta>, usize) {
    let mut entries = Vec::with_capacity(n);
    let mut pos = rng.range(0, 31);
    for _ in 0..n {
        let len = rng.frag_len();
        let src_off = rng.range(0, (bounce_len - len as usize) as u64) as u32;
        entries.push(LoadMeta {
            src_off,
            len,
            dst_off: pos,
        });
        pos += len as u64 + rng.range(0, 17);
    }
    rng.shuffle(&mut entries);
    (entries, pos as usize + rng.range(0, 9) as usize)
}

/// `pages` whole pages from shuffled bounce pages starting at `first_page`, listed in shuffled
/// order, filling a contiguous destination.
fn page_fragments(rng: &mut Rng, first_page: usize, pages: usize) -> Vec<LoadMeta> {
    let mut src: Vec<usize> = (first_page..first_page + pages).collect();
    rng.shuffle(&mut src);
    let mut entries: Vec<LoadMeta> = src
        .iter()
        .enumerate()
        .map(|(i, &p)| LoadMeta {
            src_off: (p * PAGE_SIZE) as u32,
            len: PAGE_SIZE as u32,
            dst_off: (i * PAGE_SIZE) as u64,
        })
        .collect();
    rng.shuffle(&mut entries);
    entries
}

const KINDS: [BounceKind; 2] = [BounceKind::Device, BounceKind::Mapped];

#[test]
fn random_fragments_match_cpu() {
    let Some(mut g) = gpu("random_fragments_match_cpu") else {
        return;
    };
    let bounce_len = (1 << 20) + 12;
    for kind in KINDS {
        for seed in 0..24u64 {
            let mut rng = Rng(seed);
            let bounce = rng.bytes(bounce_len);
            let n = rng.range(1, 300) as usize;
            let (entries, dst_len) = random_fragments(&mut rng, bounce_len, n);
            // Small grids force the block loop over tiles; the default covers the slot at once.
            g.kernels
                .set_blocks_per_slot([1, 3, 128][seed as usize % 3]);
            let job = Job {
                table: 0,
                slot: (seed % TCPX_REQUESTS as u64) as usize,
                entries,
                dst_len,
                dst_align: rng.range(0, 15) as usize,
            };
            check(&g, kind, &bounce, &[job], SINGLE[seed as usize % 2], seed);
        }
    }
}

#[test]
fn every_alignment_pair_and_length() {
    let Some(g) = gpu("every_alignment_pair_and_length") else {
        return;
    };
    let bounce_len = 1 << 20;
    for kind in KINDS {
        for (i, len) in [
            1u32, 2, 3, 5, 15, 16, 17, 31, 33, 64, 255, 1000, 4093, 4095, 4096,
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = Rng(1000 + i as u64);
            let bounce = rng.bytes(bounce_len);
            let mut entries = Vec::new();
            let mut pos = 0u64;
            for sa in 0..16u32 {
                for da in 0..16u64 {
                    let src_page = rng.range(0, (bounce_len / PAGE_SIZE - 2) as u64) as u32;
                    let dst_off = pos.div_ceil(16) * 16 + da;
                    entries.push(LoadMeta {
                        src_off: src_page * PAGE_SIZE as u32 + sa,
                        len,
                        dst_off,
                    });
                    pos = dst_off + len as u64;
                }
            }
            rng.shuffle(&mut entries);
            let job = Job {
                table: 0,
                slot: i % TCPX_REQUESTS,
                entries,
                dst_len: pos as usize,
                dst_align: 0,
            };
            check(&g, kind, &bounce, &[job], SINGLE[i % 2], i as u64);
        }
    }
}

#[test]
fn fragments_at_the_end_of_the_bounce_region() {
    let Some(g) = gpu("fragments_at_the_end_of_the_bounce_region") else {
        return;
    };
    // Source ranges that end on the last byte of the allocation, with every source alignment
    // against an aligned destination (the shifted path reads its last word there).
    let bounce_len = 64 * 1024;
    for kind in KINDS {
        let mut rng = Rng(77);
        let bounce = rng.bytes(bounce_len);
        let mut entries = Vec::new();
        let mut pos = 0u64;
        for len in [1u32, 2, 3, 4, 5, 7, 9, 63, 65, 4093, 4094, 4095, 4096] {
            entries.push(LoadMeta {
                src_off: (bounce_len - len as usize) as u32,
                len,
                dst_off: pos,
            });
            pos = (pos + len as u64).div_ceil(16) * 16;
        }
        let job = Job {
            table: 0,
            slot: 5,
            entries,
            dst_len: pos as usize,
            dst_align: 0,
        };
        for launch in SINGLE {
            check(&g, kind, &bounce, std::slice::from_ref(&job), launch, 77);
        }
    }
}

#[test]
fn empty_slot_writes_nothing() {
    let Some(g) = gpu("empty_slot_writes_nothing") else {
        return;
    };
    for kind in KINDS {
        let bounce = Rng(5).bytes(PAGE_SIZE);
        let jobs = [Job {
            table: 0,
            slot: 9,
            entries: Vec::new(),
            dst_len: 4 * PAGE_SIZE,
            dst_align: 0,
        }];
        for launch in [
            Launch::Single,
            Launch::SingleCounted,
            Launch::Batch,
            Launch::BatchMixed,
        ] {
            check(&g, kind, &bounce, &jobs, launch, 5);
        }
    }
}

#[test]
fn full_slot_of_pages() {
    let Some(g) = gpu("full_slot_of_pages") else {
        return;
    };
    let pages = tcpx_core::unpack::MAX_RECV_BYTES / PAGE_SIZE;
    for kind in KINDS {
        let mut rng = Rng(11);
        // Twice the pages needed, so the slot's pages are scattered over a larger region.
        let bounce = rng.bytes(2 * pages * PAGE_SIZE);
        let mut entries = page_fragments(&mut rng, 0, 2 * pages);
        entries.truncate(pages);
        for (i, e) in entries.iter_mut().enumerate() {
            e.dst_off = (i * PAGE_SIZE) as u64;
        }
        rng.shuffle(&mut entries);
        // Aligned: the 16-byte path; misaligned by 7: the shifted path.
        for (dst_align, launch) in [0, 7].into_iter().zip(SINGLE) {
            let job = Job {
                table: 0,
                slot: 15,
                entries: entries.clone(),
                dst_len: pages * PAGE_SIZE,
                dst_align,
            };
            check(&g, kind, &bounce, std::slice::from_ref(&job), launch, 11);
            let other = [Launch::SingleCounted, Launch::Single][dst_align.min(1)];
            check(&g, kind, &bounce, &[job], other, 12);
        }
    }
}

#[test]
fn slot_with_the_most_entries() {
    let Some(mut g) = gpu("slot_with_the_most_entries") else {
        return;
    };
    // 2048 entries: twice what the default grid covers in one pass.
    for kind in KINDS {
        for blocks in [
            tcpx_kernels::DEFAULT_BLOCKS_PER_SLOT,
            tcpx_kernels::MAX_BLOCKS_PER_SLOT,
        ] {
            g.kernels.set_blocks_per_slot(blocks);
            let mut rng = Rng(21 + blocks as u64);
            let bounce_len = 2 << 20;
            let bounce = rng.bytes(bounce_len);
            let mut entries = Vec::with_capacity(ENTRIES_PER_SLOT);
            let mut pos = 0u64;
            for _ in 0..ENTRIES_PER_SLOT {
                let len = rng.range(1, 2048) as u32;
                let src_off = rng.range(0, (bounce_len - len as usize) as u64) as u32;
                entries.push(LoadMeta {
                    src_off,
                    len,
                    dst_off: pos,
                });
                pos += len as u64 + rng.range(0, 3);
            }
            rng.shuffle(&mut entries);
            let job = Job {
                table: 0,
                slot: 3,
                entries,
                dst_len: pos as usize,
                dst_align: 0,
            };
            for launch in SINGLE {
                check(&g, kind, &bounce, std::slice::from_ref(&job), launch, 21);
            }
        }
    }
}

#[test]
fn batch_over_several_tables_matches_cpu() {
    let Some(mut g) = gpu("batch_over_several_tables_matches_cpu") else {
        return;
    };
    // 3 tables x 16 slots = 48 jobs: more than one batched launch carries; some slots empty,
    // some full pages, some random fragments.
    let bounce_len = 8 << 20;
    for kind in KINDS {
        for (seed, blocks, cap, launch) in [
            (31u64, 64u32, 1024u32, Launch::Batch),
            (32, 7, 1024, Launch::BatchMixed),
            (33, 64, 48, Launch::BatchMixed),
        ] {
            g.kernels.set_blocks_per_slot(blocks);
            g.kernels.set_max_blocks_per_launch(cap);
            let mut rng = Rng(seed);
            let bounce = rng.bytes(bounce_len);
            let mut jobs = Vec::new();
            for table in 0..3 {
                for slot in 0..TCPX_REQUESTS {
                    let (entries, dst_len) = match rng.range(0, 3) {
                        0 => (Vec::new(), rng.range(0, 64) as usize),
                        1 => {
                            let pages = rng.range(1, 64) as usize;
                            let first = rng.range(0, (bounce_len / PAGE_SIZE - pages) as u64);
                            (
                                page_fragments(&mut rng, first as usize, pages),
                                pages * PAGE_SIZE,
                            )
                        }
                        _ => {
                            let n = rng.range(1, 100) as usize;
                            random_fragments(&mut rng, bounce_len, n)
                        }
                    };
                    jobs.push(Job {
                        table,
                        slot,
                        entries,
                        dst_len,
                        dst_align: [0, 0, 4, 8, 3][rng.range(0, 4) as usize],
                    });
                }
            }
            rng.shuffle(&mut jobs);
            check(&g, kind, &bounce, &jobs, launch, seed);
        }
    }
}

#[test]
fn stream_of_another_context_is_rejected() {
    let Some(g) = gpu("stream_of_another_context_is_rejected") else {
        return;
    };
    let other = CudaContext::new_non_primary(0, 0).expect("second context");
    let stream = other.new_stream().expect("stream");
    // SAFETY: the call must fail before launching anything.
    let r = unsafe { g.kernels.launch_unpack(&stream, 0, 0, 0, 0) };
    assert!(matches!(r, Err(Error::WrongContext)), "{r:?}");
    g.ctx.bind_to_thread().expect("rebind");
}

#[test]
fn list_launch_matches_cpu() {
    let Some(mut g) = gpu("list_launch_matches_cpu") else {
        return;
    };
    let bounce_len = (4 << 20) + 12;
    // Short lists (at most SHORT_LIST_ENTRIES) launch with the short parameter block unless
    // turned off: both blocks, every list below.
    for (kind, short) in KINDS.into_iter().flat_map(|k| [(k, true), (k, false)]) {
        g.kernels.set_short_lists(short);
        // Exactly a short list's capacity and one more, over two jobs (the second starting
        // mid-list).
        for total in [1, SHORT_LIST_ENTRIES, SHORT_LIST_ENTRIES + 1] {
            let mut rng = Rng(total as u64);
            let bounce = rng.bytes(bounce_len);
            let split = total / 2;
            let jobs: Vec<Job> = [split, total - split]
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let (entries, dst_len) = random_fragments(&mut rng, bounce_len, n);
                    Job {
                        table: 0,
                        slot: i,
                        entries,
                        dst_len: dst_len.max(1),
                        dst_align: rng.range(0, 15) as usize,
                    }
                })
                .collect();
            check(&g, kind, &bounce, &jobs, Launch::List, total as u64);
        }
        for seed in 0..16u64 {
            let mut rng = Rng(seed ^ 0x5151);
            let bounce = rng.bytes(bounce_len);
            let njobs = rng.range(1, MAX_LIST_JOBS as u64) as usize;
            let mut left = MAX_LIST_ENTRIES;
            let jobs: Vec<Job> = (0..njobs)
                .map(|i| {
                    // Some jobs empty; together at most a full list.
                    let most = (left / (njobs - i)).max(1);
                    let n = if rng.range(0, 5) == 0 {
                        0
                    } else {
                        rng.range(1, most as u64) as usize
                    };
                    let n = n.min(left);
                    left -= n;
                    let (entries, dst_len) = random_fragments(&mut rng, bounce_len, n);
                    Job {
                        table: 0,
                        slot: i % TCPX_REQUESTS,
                        entries,
                        dst_len: dst_len.max(1),
                        dst_align: rng.range(0, 15) as usize,
                    }
                })
                .collect();
            check(&g, kind, &bounce, &jobs, Launch::List, seed);
        }
        // One full list of 4 KiB pages: 4 MiB, as a 4 MiB TCPX receive.
        let mut rng = Rng(77);
        let bounce = rng.bytes(bounce_len);
        let job = Job {
            table: 0,
            slot: 3,
            entries: page_fragments(&mut rng, 0, MAX_LIST_ENTRIES),
            dst_len: MAX_LIST_ENTRIES * PAGE_SIZE,
            dst_align: 0,
        };
        check(&g, kind, &bounce, &[job], Launch::List, 77);
    }
    // An empty list launches nothing; a list refuses what does not fit.
    let mut list = UnpackList::new_boxed();
    // SAFETY: an empty list names no memory; nothing is launched.
    unsafe { g.kernels.launch_unpack_list(&g.stream, &list) }.expect("empty list");
    let too_many = vec![LoadMeta::default(); MAX_LIST_ENTRIES + 1];
    assert!(list.push(0, 0, &too_many).is_none());
    for _ in 0..MAX_LIST_JOBS {
        assert!(list.push(0, 0, &[]).is_some());
    }
    assert!(
        list.push(0, 0, &[]).is_none(),
        "more jobs than the list holds"
    );
    list.clear();
    assert!(list.is_empty() && list.fits(MAX_LIST_ENTRIES));
}
