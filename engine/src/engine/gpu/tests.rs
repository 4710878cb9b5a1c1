use super::*;

fn source(meta: &NetUnpackMeta) -> UnpackSource {
    let h = UnpackDevHandle {
        meta: (meta as *const NetUnpackMeta).cast_mut(),
        bounce_buf: std::ptr::null_mut(),
        head: u64::MAX,
    };
    // SAFETY: a handle in host memory naming the table, for the length of the call.
    unsafe { UnpackSource::from_host_handle(&h) }.expect("a handle naming a table")
}

#[test]
fn published_fragments_are_checked_against_the_chunk() {
    // SAFETY: the table is integers only; all zeros is a valid (empty) table.
    let mut meta: Box<NetUnpackMeta> = unsafe { Box::new_zeroed().assume_init() };
    let page = |i: u64| LoadMeta {
        src_off: (i * 4096) as u32,
        len: 4096,
        dst_off: i * 4096,
    };
    meta.mem[3][..2].copy_from_slice(&[page(1), page(0)]);
    meta.cnt[3] = 2;
    let src = source(&meta);
    assert_eq!(src.checked_count(3, 8192).unwrap(), 2);
    assert_eq!(src.entries(3, 2), &[page(1), page(0)]);
    // One byte short of the chunk, a fragment over a page, an overflowing offset, a count
    // beyond the table: each refused with the reason.
    assert!(src.checked_count(3, 8191).is_err());
    meta.mem[3][1].len = 4097;
    assert!(source(&meta).checked_count(3, 1 << 20).is_err());
    meta.mem[3][1] = LoadMeta {
        src_off: 0,
        len: 16,
        dst_off: u64::MAX - 8,
    };
    assert!(source(&meta).checked_count(3, u32::MAX).is_err());
    meta.cnt[3] = ENTRIES_PER_SLOT as u64 + 1;
    let err = source(&meta).checked_count(3, u32::MAX).unwrap_err();
    assert!(err.to_string().contains("2049 fragments"), "{err}");
    // An empty slot is fine.
    assert_eq!(source(&meta).checked_count(4, 0).unwrap(), 0);
    // With the bounce region's size known, a source past its end is refused; one ending
    // exactly at it is fine; without the size, sources are not bounded.
    meta.mem[5][..2].copy_from_slice(&[page(0), page(2)]);
    meta.cnt[5] = 2;
    let bounded = |meta: &NetUnpackMeta, len| UnpackSource {
        bounce_len: Some(len),
        ..source(meta)
    };
    assert_eq!(
        bounded(&meta, 3 * 4096).checked_count(5, 3 * 4096).unwrap(),
        2
    );
    let err = bounded(&meta, 3 * 4096 - 1)
        .checked_count(5, 3 * 4096)
        .unwrap_err();
    assert!(err.to_string().contains("bounce"), "{err}");
    meta.mem[5][1].src_off = u32::MAX;
    assert!(source(&meta).checked_count(5, 3 * 4096).is_ok());
    assert!(bounded(&meta, u64::from(u32::MAX))
        .checked_count(5, 3 * 4096)
        .is_err());
}

/// Without a CUDA driver host registrations pass unchecked and device ones are refused by
/// name (with one, the GPU tests in tests/engine_gpu.rs cover every case).
#[test]
fn without_a_driver_only_host_memory_registers() {
    if tcpx_kernels::gpu_available().is_ok() {
        eprintln!("SKIP: a CUDA driver is present (tests/engine_gpu.rs covers this)");
        return;
    }
    let v = [0u8; 64];
    assert!(check_registration(v.as_ptr() as u64, 64, Memory::Host).is_ok());
    let e = check_registration(v.as_ptr() as u64, 64, Memory::Cuda { device: 0 }).unwrap_err();
    assert!(e.to_string().contains("no CUDA driver"), "{e}");
}

/// The driver knows the size of both kinds of bounce region: device memory (TCPX's
/// receive pages) and host memory mapped into the device (tcpxsock's), so fragment
/// sources are bounded on both. Prints `SKIP` without a GPU; `REQUIRE_GPU=1` fails then.
#[test]
fn the_driver_sizes_device_and_mapped_bounce_regions() {
    use tcpx_sock::{CudaMappedAllocator, MappedAllocator};
    if let Err(why) = tcpx_kernels::gpu_available() {
        assert!(
            std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
            "REQUIRE_GPU=1 but no GPU: {why}"
        );
        eprintln!("SKIP: {why}");
        return;
    }
    let gpu = Gpu::open(0, 1).unwrap();
    let dev = tcpx_kernels::mem::DeviceBuffer::new(gpu.stream.context(), 3 << 20).unwrap();
    assert_eq!(gpu.range_len(dev.ptr()), Some(3 << 20));
    assert_eq!(gpu.range_len(dev.ptr() + 4096), Some((3 << 20) - 4096));
    let mapped = CudaMappedAllocator.alloc(5 << 20).unwrap();
    let base = mapped.device as u64;
    // Registrations cover whole pages: at least the asked length, within a page of it.
    let len = gpu
        .range_len(base)
        .expect("mapped host memory is known to the driver");
    assert!((5 << 20..(5 << 20) + 4096).contains(&len), "{len}");
    assert_eq!(gpu.range_len(base + 100), Some(len - 100));
    // SAFETY: allocated above, unused from here on.
    unsafe { CudaMappedAllocator.free(mapped) };
    let host = [0u8; 64];
    assert_eq!(gpu.range_len(host.as_ptr() as u64), None);
}
