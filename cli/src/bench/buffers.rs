//! Transfer buffers in host or device memory, and the position-derived pattern a receiver
//! checks them against.

use std::sync::Arc;

use cudarc::driver::CudaContext;
use tcpx::net::MemKind;
use tcpx_kernels::mem::DeviceBuffer;

use super::report::size_label;
use super::BenchResult;

/// Position-derived pattern, so a receiver (here or on another host) can check any prefix
/// without holding a copy of what was sent.
pub(super) fn pattern_word(i: u64) -> u64 {
    (i ^ 0x7463_7078_6265_6e63)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        ^ i
}

pub(super) fn fill_pattern(buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        c.copy_from_slice(&pattern_word(i as u64).to_le_bytes()[..c.len()]);
    }
}

/// First mismatching offset and the number of wrong bytes, if any.
pub(super) fn check_pattern(buf: &[u8]) -> Option<(usize, u8, u8, usize)> {
    let mut first = None;
    let mut bad = 0;
    for (i, c) in buf.chunks(8).enumerate() {
        let want = pattern_word(i as u64).to_le_bytes();
        if c != &want[..c.len()] {
            for (j, (&g, &w)) in c.iter().zip(&want).enumerate() {
                if g != w {
                    first.get_or_insert((i * 8 + j, g, w));
                    bad += 1;
                }
            }
        }
    }
    first.map(|(at, got, want)| (at, got, want, bad))
}

pub(super) fn verify_failed(size: u64, (at, got, want, bad): (usize, u8, u8, usize)) -> String {
    format!(
        "VERIFY FAILED for {}: {bad} of {size} bytes differ, first at offset {at} \
(got {got:#04x}, expected {want:#04x})",
        size_label(size)
    )
}

/// The CUDA device the `cuda` buffers live on; opened only when a side asks for one.
#[derive(Clone)]
pub(super) struct Gpu {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) device: i32,
}

impl Gpu {
    /// Probes for a driver and a device before any other CUDA call, so a machine without
    /// one gets an error rather than a failed `dlopen` panic.
    pub(super) fn open(device: i32) -> BenchResult<Gpu> {
        tcpx_kernels::gpu_available().map_err(|e| format!("--mem cuda: {e}"))?;
        let ctx = CudaContext::new(device as usize)
            .map_err(|e| format!("--gpu {device}: CUDA context: {e}"))?;
        Ok(Gpu { ctx, device })
    }
}

pub(super) fn cuda_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e}")
}

/// A transfer buffer in host or device memory.
pub(super) enum Buf {
    Host(Vec<u8>),
    Cuda(DeviceBuffer),
}

impl Buf {
    pub(super) fn new(len: usize, gpu: Option<&Gpu>) -> BenchResult<Buf> {
        Ok(match gpu {
            None => Buf::Host(vec![0u8; len]),
            Some(g) => {
                let mut d = DeviceBuffer::new(&g.ctx, len)
                    .map_err(|e| format!("{len}-byte device buffer on GPU {}: {e}", g.device))?;
                d.fill(0).map_err(|e| e.to_string())?;
                Buf::Cuda(d)
            }
        })
    }

    pub(super) fn kind(&self) -> MemKind {
        match self {
            Buf::Host(_) => MemKind::Host,
            Buf::Cuda(_) => MemKind::Device,
        }
    }

    /// The pattern over the whole buffer (device memory: written once from a host copy).
    pub(super) fn fill_pattern(&mut self) -> BenchResult<()> {
        match self {
            Buf::Host(v) => fill_pattern(v),
            Buf::Cuda(d) => {
                let mut v = vec![0u8; d.len()];
                fill_pattern(&mut v);
                d.write(0, &v).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Zeroes at least the first `n` bytes.
    pub(super) fn zero(&mut self, n: usize) -> BenchResult<()> {
        match self {
            Buf::Host(v) => v[..n].fill(0),
            Buf::Cuda(d) => d.fill(0).map_err(|e| e.to_string())?,
        }
        Ok(())
    }

    /// `check_pattern` over the first `n` bytes (device memory: copied back to host first).
    pub(super) fn check(&self, n: usize) -> BenchResult<Option<(usize, u8, u8, usize)>> {
        Ok(match self {
            Buf::Host(v) => check_pattern(&v[..n]),
            Buf::Cuda(d) => {
                let mut v = vec![0u8; n];
                d.read(0, &mut v).map_err(|e| e.to_string())?;
                check_pattern(&v)
            }
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_check_finds_the_first_difference() {
        let mut b = vec![0u8; 1001];
        fill_pattern(&mut b);
        assert_eq!(check_pattern(&b), None);
        let want = b[333];
        b[333] ^= 0xff;
        b[1000] ^= 1;
        assert_eq!(check_pattern(&b), Some((333, want ^ 0xff, want, 2)));
    }
}
