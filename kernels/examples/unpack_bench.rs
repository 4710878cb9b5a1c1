//! Unpack kernel throughput and latency next to the CUDA copy of the same bytes.
//!
//! Device-memory bounce vs `cuMemcpyDtoDAsync`, pinned mapped host bounce vs `cuMemcpyHtoDAsync`
//! from the same pinned memory; 4 KiB pages in shuffled order, one 4 MiB slot per launch and 16
//! slots (64 MiB) per batched launch, timed with CUDA events over many back-to-back launches; and
//! launch-to-event-completion latency of one 512 KiB chunk. Prints a table and writes JSON
//! (`--json PATH`, default `unpack_bench.json`).
//!
//! Run: `cargo run --release -p tcpx-kernels --example unpack_bench -- --json out.json`

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{self, CUdeviceptr, CUevent_flags};
use cudarc::driver::{result, CudaContext, CudaStream};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::unpack::{unpack_cpu, LoadMeta, NetUnpackMeta, PAGE_SIZE};
use tcpx_kernels::mem::{DeviceBuffer, MappedHostBuffer};
use tcpx_kernels::{gpu_available, Kernels, UnpackJob, UnpackList};
use zerocopy::FromBytes;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const SLOT_BYTES: usize = 4 << 20;
const PAGES: usize = SLOT_BYTES / PAGE_SIZE;
const TOTAL: usize = TCPX_REQUESTS * SLOT_BYTES;
const CHUNK_BYTES: usize = 512 << 10;
const LATENCY_ITERS: usize = 1000;
const REPS: usize = 7;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// Slot `slot` takes `pages` shuffled pages of bounce region `slot`, listed in shuffled order.
fn publish_pages(meta: &mut NetUnpackMeta, rng: &mut Rng, slot: usize, pages: usize) {
    let mut src: Vec<usize> = (0..pages).collect();
    rng.shuffle(&mut src);
    let mut entries: Vec<LoadMeta> = src
        .iter()
        .enumerate()
        .map(|(i, &p)| LoadMeta {
            src_off: (slot * SLOT_BYTES + p * PAGE_SIZE) as u32,
            len: PAGE_SIZE as u32,
            dst_off: (i * PAGE_SIZE) as u64,
        })
        .collect();
    rng.shuffle(&mut entries);
    meta.mem[slot][..pages].copy_from_slice(&entries);
    meta.cnt[slot] = pages as u64;
}

fn table(buf: &mut MappedHostBuffer) -> &mut NetUnpackMeta {
    // SAFETY: the buffer is page-aligned, exactly size_of::<NetUnpackMeta>() bytes, initialised
    // (zeroed), and NetUnpackMeta is plain old data valid for any bytes.
    unsafe { &mut *buf.host_ptr().cast::<NetUnpackMeta>() }
}

/// Median seconds per call of `f` over REPS timed runs of `iters` back-to-back calls.
fn time_per_call(
    ctx: &Arc<CudaContext>,
    stream: &CudaStream,
    iters: usize,
    mut f: impl FnMut() -> BoxResult<()>,
) -> BoxResult<f64> {
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    for _ in 0..iters.min(20) {
        f()?;
    }
    stream.synchronize()?;
    let mut runs = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        start.record(stream)?;
        for _ in 0..iters {
            f()?;
        }
        end.record(stream)?;
        runs.push(start.elapsed_ms(&end)? as f64 * 1e-3 / iters as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[REPS / 2])
}

/// Median and p99 seconds from enqueueing `f` to its completion event observed by polling.
fn latency(
    ctx: &Arc<CudaContext>,
    stream: &CudaStream,
    mut f: impl FnMut() -> BoxResult<()>,
) -> BoxResult<(f64, f64)> {
    let done = ctx.new_event(None)?;
    let mut samples = Vec::with_capacity(LATENCY_ITERS);
    for i in 0..LATENCY_ITERS + 50 {
        let t0 = Instant::now();
        f()?;
        done.record(stream)?;
        while !done.try_is_complete()? {
            std::hint::spin_loop();
        }
        if i >= 50 {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    samples.sort_by(f64::total_cmp);
    let p99 = samples[(samples.len() * 99).div_ceil(100) - 1];
    Ok((samples[samples.len() / 2], p99))
}

struct Row {
    case: String,
    bytes: usize,
    unpack_s: f64,
    copy: &'static str,
    copy_s: f64,
}

fn gbps(bytes: usize, s: f64) -> f64 {
    bytes as f64 / s / 1e9
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "unpack_bench.json".into());
    gpu_available()?;
    let ctx = CudaContext::new(0)?;
    let gpu = ctx.name()?;
    let mut k = Kernels::load(&ctx)?;
    let stream = ctx.new_stream()?;
    let s = stream.cu_stream();

    let mut rng = Rng(42);
    let mut meta_buf = MappedHostBuffer::new(&ctx, size_of::<NetUnpackMeta>())?;
    for slot in 0..TCPX_REQUESTS {
        publish_pages(table(&mut meta_buf), &mut rng, slot, PAGES);
    }
    // A second table whose slot 0 is one 512 KiB chunk, for the latency runs.
    let mut chunk_meta_buf = MappedHostBuffer::new(&ctx, size_of::<NetUnpackMeta>())?;
    publish_pages(
        table(&mut chunk_meta_buf),
        &mut rng,
        0,
        CHUNK_BYTES / PAGE_SIZE,
    );
    let meta = meta_buf.dev_ptr();
    let chunk_meta = chunk_meta_buf.dev_ptr();
    // The same tables copied into device memory: what the kernel's reads of a host-memory
    // table cost (diagnostic rows; a TCPX plugin's table is host memory).
    let as_bytes = |b: &MappedHostBuffer| b.as_slice().to_vec();
    let mut dev_meta_buf = DeviceBuffer::new(&ctx, size_of::<NetUnpackMeta>())?;
    dev_meta_buf.write(0, &as_bytes(&meta_buf))?;
    let mut dev_chunk_meta_buf = DeviceBuffer::new(&ctx, size_of::<NetUnpackMeta>())?;
    dev_chunk_meta_buf.write(0, &as_bytes(&chunk_meta_buf))?;
    let (dev_meta, dev_chunk_meta) = (dev_meta_buf.ptr(), dev_chunk_meta_buf.ptr());

    let content: Vec<u8> = (0..TOTAL).map(|_| rng.next() as u8).collect();
    let mut dev_bounce = DeviceBuffer::new(&ctx, TOTAL)?;
    dev_bounce.write(0, &content)?;
    let mut host_bounce = MappedHostBuffer::new(&ctx, TOTAL)?;
    host_bounce.as_mut_slice().copy_from_slice(&content);
    let mut dst = DeviceBuffer::new(&ctx, TOTAL)?;
    let dst_ptr = dst.ptr();

    let jobs = |bounce: CUdeviceptr| -> Vec<UnpackJob> {
        (0..TCPX_REQUESTS)
            .map(|slot| {
                UnpackJob::new(
                    meta,
                    bounce,
                    slot as u32,
                    dst_ptr + (slot * SLOT_BYTES) as u64,
                )
            })
            .collect()
    };
    let dev_jobs = jobs(dev_bounce.ptr());
    let host_jobs = jobs(host_bounce.dev_ptr());
    // Slot 0 (4 MiB) and the 512 KiB chunk as launch-parameter lists, as the engine launches
    // them: the entries copied out of the table.
    let list_of = |m: &MappedHostBuffer, pages: usize, bounce: CUdeviceptr| -> Box<UnpackList> {
        let table = NetUnpackMeta::ref_from_bytes(m.as_slice()).expect("table layout");
        let mut l = UnpackList::new_boxed();
        l.push(bounce, dst_ptr, &table.mem[0][..pages])
            .expect("fits");
        l
    };
    let dev_list = list_of(&meta_buf, PAGES, dev_bounce.ptr());
    let host_list = list_of(&meta_buf, PAGES, host_bounce.dev_ptr());
    let dev_chunk_list = list_of(&chunk_meta_buf, CHUNK_BYTES / PAGE_SIZE, dev_bounce.ptr());
    let host_chunk_list = list_of(
        &chunk_meta_buf,
        CHUNK_BYTES / PAGE_SIZE,
        host_bounce.dev_ptr(),
    );
    let run_list = |k: &Kernels, l: &UnpackList| -> BoxResult<()> {
        // SAFETY: the list's entries are slot 0's (or the chunk's): inside the bounce buffers
        // and dst[..4 MiB].
        unsafe { k.launch_unpack_list(&stream, l)? };
        Ok(())
    };

    // Correctness of what is timed: both bounce kinds against the CPU oracle.
    let mut expected = vec![0u8; TOTAL];
    for slot in 0..TCPX_REQUESTS {
        let entries = table(&mut meta_buf)
            .slot_entries(slot)
            .map_err(|e| format!("{e:?}"))?;
        unpack_cpu(
            entries,
            &content,
            &mut expected[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES],
        )
        .map_err(|e| format!("{e:?}"))?;
    }
    for js in [&dev_jobs, &host_jobs] {
        dst.fill(0)?;
        // SAFETY: table, bounce and dst are live and hold every fragment; slots write disjoint
        // 4 MiB destination regions.
        unsafe { k.launch_unpack_batch(&stream, js)? };
        stream.synchronize()?;
        let mut got = vec![0u8; TOTAL];
        dst.read(0, &mut got)?;
        if got != expected {
            return Err("unpack result differs from the CPU oracle".into());
        }
    }
    for l in [&dev_list, &host_list] {
        dst.fill(0)?;
        run_list(&k, l)?;
        stream.synchronize()?;
        let mut got = vec![0u8; SLOT_BYTES];
        dst.read(0, &mut got)?;
        if got != expected[..SLOT_BYTES] {
            return Err("list unpack result differs from the CPU oracle".into());
        }
    }
    println!(
        "verified: 16 slots x 4 MiB (batch) and one 4 MiB list, device and mapped bounce, \
         match the CPU oracle"
    );

    let pages = PAGES as u32;
    let unpack_one = |k: &Kernels, bounce: CUdeviceptr, counted: bool| -> BoxResult<()> {
        // SAFETY: as above (slot 0 writes dst[..4 MiB]).
        unsafe {
            if counted {
                k.launch_unpack_counted(&stream, meta, bounce, 0, pages, dst_ptr)?
            } else {
                k.launch_unpack(&stream, meta, bounce, 0, dst_ptr)?
            }
        };
        Ok(())
    };
    let counted_jobs =
        |js: &[UnpackJob]| -> Vec<UnpackJob> { js.iter().map(|j| j.with_count(pages)).collect() };
    let (dev_jobs_n, host_jobs_n) = (counted_jobs(&dev_jobs), counted_jobs(&host_jobs));
    let unpack_all = |k: &Kernels, js: &[UnpackJob]| -> BoxResult<()> {
        // SAFETY: as above.
        unsafe { k.launch_unpack_batch(&stream, js)? };
        Ok(())
    };
    let dtod = |n: usize| -> BoxResult<()> {
        // SAFETY: both ranges lie inside live device allocations of TOTAL bytes.
        unsafe { result::memcpy_dtod_async(dst_ptr, dev_bounce.ptr(), n, s)? };
        Ok(())
    };
    let htod = |n: usize| -> BoxResult<()> {
        // SAFETY: the source is live pinned memory of TOTAL bytes, the destination live device
        // memory of TOTAL bytes.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst_ptr, host_bounce.host_ptr().cast(), n, s) }
            .result()?;
        Ok(())
    };

    // Tuning sweeps (device bounce): blocks per slot when the count is read on the device, and
    // the cap on blocks per batched launch when counts are given.
    let mut sweep_table = Vec::new();
    for blocks in [16u32, 32, 64, 128] {
        k.set_blocks_per_slot(blocks);
        let one = time_per_call(&ctx, &stream, 400, || {
            unpack_one(&k, dev_bounce.ptr(), false)
        })?;
        let all = time_per_call(&ctx, &stream, 60, || unpack_all(&k, &dev_jobs))?;
        sweep_table.push((blocks, gbps(SLOT_BYTES, one), gbps(TOTAL, all)));
    }
    k.set_blocks_per_slot(tcpx_kernels::DEFAULT_BLOCKS_PER_SLOT);
    let mut sweep_cap = Vec::new();
    for cap in [264u32, 528, 1024, 2048, 4096] {
        k.set_max_blocks_per_launch(cap);
        let all = time_per_call(&ctx, &stream, 60, || unpack_all(&k, &dev_jobs_n))?;
        let mapped = time_per_call(&ctx, &stream, 6, || unpack_all(&k, &host_jobs_n))?;
        sweep_cap.push((cap, gbps(TOTAL, all), gbps(TOTAL, mapped)));
    }
    k.set_max_blocks_per_launch(tcpx_kernels::DEFAULT_MAX_BLOCKS_PER_LAUNCH);

    let mut rows = Vec::new();
    // 4 MiB per launch is latency-bound (a few microseconds per call), so its ratio moves with
    // the GPU's clocks: five interleaved rounds of copy then unpack, median ratio.
    let mut interleaved = Vec::new();
    for _ in 0..5 {
        let c = time_per_call(&ctx, &stream, 400, || dtod(SLOT_BYTES))?;
        let l = time_per_call(&ctx, &stream, 400, || run_list(&k, &dev_list))?;
        let u = time_per_call(&ctx, &stream, 400, || {
            unpack_one(&k, dev_bounce.ptr(), true)
        })?;
        let t = time_per_call(&ctx, &stream, 400, || {
            // SAFETY: as `unpack_one`, reading the device copy of the same table.
            unsafe {
                k.launch_unpack_counted(&stream, dev_meta, dev_bounce.ptr(), 0, pages, dst_ptr)?
            };
            Ok(())
        })?;
        interleaved.push((c / l, c / u, c / t, c, l, u, t));
    }
    interleaved.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (list_ratio, _, _, list_c, list_l, _, _) = interleaved[interleaved.len() / 2];
    rows.push(Row {
        case: "device bounce, 1 slot/launch, list (median of 5 interleaved)".into(),
        bytes: SLOT_BYTES,
        unpack_s: list_l,
        copy: "cuMemcpyDtoDAsync",
        copy_s: list_c,
    });
    debug_assert!((list_c / list_l - list_ratio).abs() < 1e-9);
    rows.push(Row {
        case: "mapped host bounce, 1 slot/launch, list".into(),
        bytes: SLOT_BYTES,
        unpack_s: time_per_call(&ctx, &stream, 40, || run_list(&k, &host_list))?,
        copy: "cuMemcpyHtoDAsync",
        copy_s: time_per_call(&ctx, &stream, 40, || htod(SLOT_BYTES))?,
    });
    let dtod_one = time_per_call(&ctx, &stream, 400, || dtod(SLOT_BYTES))?;
    let dtod_all = time_per_call(&ctx, &stream, 60, || dtod(TOTAL))?;
    let htod_one = time_per_call(&ctx, &stream, 40, || htod(SLOT_BYTES))?;
    let htod_all = time_per_call(&ctx, &stream, 6, || htod(TOTAL))?;
    for (counted, mode) in [(true, "count given"), (false, "count from table")] {
        let (dj, hj) = if counted {
            (&dev_jobs_n, &host_jobs_n)
        } else {
            (&dev_jobs, &host_jobs)
        };
        rows.push(Row {
            case: format!("device bounce, 1 slot/launch, {mode}"),
            bytes: SLOT_BYTES,
            unpack_s: time_per_call(&ctx, &stream, 400, || {
                unpack_one(&k, dev_bounce.ptr(), counted)
            })?,
            copy: "cuMemcpyDtoDAsync",
            copy_s: dtod_one,
        });
        rows.push(Row {
            case: format!("device bounce, 16 slots/launch, {mode}"),
            bytes: TOTAL,
            unpack_s: time_per_call(&ctx, &stream, 60, || unpack_all(&k, dj))?,
            copy: "cuMemcpyDtoDAsync",
            copy_s: dtod_all,
        });
        rows.push(Row {
            case: format!("mapped host bounce, 1 slot/launch, {mode}"),
            bytes: SLOT_BYTES,
            unpack_s: time_per_call(&ctx, &stream, 40, || {
                unpack_one(&k, host_bounce.dev_ptr(), counted)
            })?,
            copy: "cuMemcpyHtoDAsync",
            copy_s: htod_one,
        });
        rows.push(Row {
            case: format!("mapped host bounce, 16 slots/launch, {mode}"),
            bytes: TOTAL,
            unpack_s: time_per_call(&ctx, &stream, 6, || unpack_all(&k, hj))?,
            copy: "cuMemcpyHtoDAsync",
            copy_s: htod_all,
        });
    }

    let chunk_pages = (CHUNK_BYTES / PAGE_SIZE) as u32;
    let chunk = |k: &Kernels, bounce: CUdeviceptr, counted: bool| -> BoxResult<()> {
        // SAFETY: the chunk table's slot 0 reads bounce[..512 KiB] and writes dst[..512 KiB].
        unsafe {
            if counted {
                k.launch_unpack_counted(&stream, chunk_meta, bounce, 0, chunk_pages, dst_ptr)?
            } else {
                k.launch_unpack(&stream, chunk_meta, bounce, 0, dst_ptr)?
            }
        };
        Ok(())
    };
    // The same chunk's list in the long (1024-entry) parameter block, for comparison.
    k.set_short_lists(false);
    let long_list = latency(&ctx, &stream, || run_list(&k, &dev_chunk_list))?;
    k.set_short_lists(true);
    let empty_slot = 7;
    table(&mut meta_buf).cnt[empty_slot] = 0;
    let lat = [
        (
            "unpack empty slot, count from table",
            latency(&ctx, &stream, || {
                // SAFETY: an empty slot reads only the table.
                unsafe {
                    k.launch_unpack(&stream, meta, dev_bounce.ptr(), empty_slot as u32, dst_ptr)?
                };
                Ok(())
            })?,
        ),
        (
            "unpack 512 KiB, device, count given",
            latency(&ctx, &stream, || chunk(&k, dev_bounce.ptr(), true))?,
        ),
        (
            "unpack 512 KiB, device, count from table",
            latency(&ctx, &stream, || chunk(&k, dev_bounce.ptr(), false))?,
        ),
        (
            "unpack 512 KiB, device, list (4.4 KB params)",
            latency(&ctx, &stream, || run_list(&k, &dev_chunk_list))?,
        ),
        ("unpack 512 KiB, device, list (16.8 KB params)", long_list),
        (
            "unpack 512 KiB, mapped, list",
            latency(&ctx, &stream, || run_list(&k, &host_chunk_list))?,
        ),
        (
            "unpack 512 KiB, device, table in device mem",
            latency(&ctx, &stream, || {
                // SAFETY: as `chunk`, reading the device copy of the chunk table.
                unsafe {
                    k.launch_unpack_counted(
                        &stream,
                        dev_chunk_meta,
                        dev_bounce.ptr(),
                        0,
                        chunk_pages,
                        dst_ptr,
                    )?
                };
                Ok(())
            })?,
        ),
        (
            "cuMemcpyDtoDAsync 512 KiB",
            latency(&ctx, &stream, || dtod(CHUNK_BYTES))?,
        ),
        (
            "unpack 512 KiB, mapped, count given",
            latency(&ctx, &stream, || chunk(&k, host_bounce.dev_ptr(), true))?,
        ),
        (
            "cuMemcpyHtoDAsync 512 KiB",
            latency(&ctx, &stream, || htod(CHUNK_BYTES))?,
        ),
    ];
    table(&mut meta_buf).cnt[empty_slot] = PAGES as u64;

    println!("GPU: {gpu}");
    println!(
        "{:<52} {:>9} {:>12} {:>18} {:>10} {:>7}",
        "case", "bytes", "unpack GB/s", "copy", "copy GB/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<52} {:>9} {:>12.1} {:>18} {:>10.1} {:>7.3}",
            r.case,
            r.bytes,
            gbps(r.bytes, r.unpack_s),
            r.copy,
            gbps(r.bytes, r.copy_s),
            r.copy_s / r.unpack_s
        );
    }
    println!(
        "sweep, count from table (device bounce): blocks/slot, 4 MiB GB/s, 64 MiB batched GB/s"
    );
    for (b, one, all) in &sweep_table {
        println!("  {b:>5} {one:>10.1} {all:>10.1}");
    }
    println!("sweep, counts given: max blocks/launch, 64 MiB batched GB/s device, mapped");
    for (c, all, mapped) in &sweep_cap {
        println!("  {c:>5} {all:>10.1} {mapped:>10.1}");
    }
    println!(
        "device bounce, 4 MiB/launch, 5 interleaved rounds, ratio vs DtoD: list, count given \
         (table in host memory), table in device memory:"
    );
    for (rl, r, rt, c, l, u, t) in &interleaved {
        println!(
            "  {rl:>6.3} {r:>6.3} {rt:>6.3}   DtoD {:>7.1} list {:>7.1} table {:>7.1} \
             device table {:>7.1} GB/s",
            gbps(SLOT_BYTES, *c),
            gbps(SLOT_BYTES, *l),
            gbps(SLOT_BYTES, *u),
            gbps(SLOT_BYTES, *t)
        );
    }
    println!("latency, enqueue to event seen complete ({LATENCY_ITERS} iterations):");
    for (name, (med, p99)) in &lat {
        println!(
            "  {name:<48} median {:>7.2} us  p99 {:>7.2} us",
            med * 1e6,
            p99 * 1e6
        );
    }

    let mut json = String::new();
    write!(json, "{{\"gpu\":\"{gpu}\",\"rows\":[")?;
    for (i, r) in rows.iter().enumerate() {
        write!(
            json,
            "{}{{\"case\":\"{}\",\"bytes\":{},\"unpack_gbps\":{:.3},\"copy\":\"{}\",\"copy_gbps\":{:.3},\"ratio\":{:.4}}}",
            if i > 0 { "," } else { "" },
            r.case,
            r.bytes,
            gbps(r.bytes, r.unpack_s),
            r.copy,
            gbps(r.bytes, r.copy_s),
            r.copy_s / r.unpack_s
        )?;
    }
    write!(json, "],\"sweep_table_blocks\":[")?;
    for (i, (b, one, all)) in sweep_table.iter().enumerate() {
        write!(
            json,
            "{}{{\"blocks_per_slot\":{b},\"slot_gbps\":{one:.3},\"batch16_gbps\":{all:.3}}}",
            if i > 0 { "," } else { "" }
        )?;
    }
    write!(json, "],\"sweep_max_blocks\":[")?;
    for (i, (c, all, mapped)) in sweep_cap.iter().enumerate() {
        write!(
            json,
            "{}{{\"max_blocks_per_launch\":{c},\"batch16_dev_gbps\":{all:.3},\"batch16_mapped_gbps\":{mapped:.3}}}",
            if i > 0 { "," } else { "" }
        )?;
    }
    write!(json, "],\"interleaved_4mib_device\":[")?;
    for (i, (rl, r, rt, ..)) in interleaved.iter().enumerate() {
        write!(
            json,
            "{}{{\"ratio_list\":{rl:.4},\"ratio_host_table\":{r:.4},\"ratio_device_table\":{rt:.4}}}",
            if i > 0 { "," } else { "" }
        )?;
    }
    write!(json, "],\"latency_us\":[")?;
    for (i, (name, (med, p99))) in lat.iter().enumerate() {
        write!(
            json,
            "{}{{\"case\":\"{name}\",\"median\":{:.3},\"p99\":{:.3}}}",
            if i > 0 { "," } else { "" },
            med * 1e6,
            p99 * 1e6
        )?;
    }
    json.push_str("]}\n");
    std::fs::write(&json_path, json)?;
    println!("wrote {json_path}");
    Ok(())
}
