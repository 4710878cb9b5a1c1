//! The TCPX receive-side unpack layouts and the CPU reference unpack.
//!
//! A TCPX receive lands in 4 KiB bounce pages; the plugin describes each fragment with a
//! [`LoadMeta`] in slot `k % 16` of a [`NetUnpackMeta`] table. [`unpack_cpu`] applies a
//! slot on the CPU: it is the oracle the GPU kernel is tested against.

use core::ffi::c_void;
use core::mem::{align_of, offset_of, size_of};

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::TCPX_REQUESTS;

/// Bounce fragment ("page") size.
pub const PAGE_SIZE: usize = 4096;
/// Largest single receive TCPX accepts.
pub const MAX_RECV_BYTES: usize = 4 << 20;
/// Entries per slot (`MAX_RECV_BYTES / PAGE_SIZE * 2`).
pub const ENTRIES_PER_SLOT: usize = 2048;

/// One fragment: copy `len` bytes from `bounce + src_off` to `dst + dst_off`.
#[repr(C, align(16))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LoadMeta {
    pub src_off: u32,
    pub len: u32,
    pub dst_off: u64,
}

/// `netUnpackMeta`: per-slot fragment lists, then per-slot counts.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct NetUnpackMeta {
    pub mem: [[LoadMeta; ENTRIES_PER_SLOT]; TCPX_REQUESTS],
    pub cnt: [u64; TCPX_REQUESTS],
}

/// `unpackNetDeviceHandle`: what `DevHandle::handle` points at for the UNPACK offload.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UnpackDevHandle {
    /// Device-visible address of the [`NetUnpackMeta`] table.
    pub meta: *mut NetUnpackMeta,
    /// Base of the bounce region; every `src_off` is relative to it.
    pub bounce_buf: *mut c_void,
    /// Consumer position; starts at `u64::MAX` because it is incremented before use.
    pub head: u64,
}

const_assert_eq!(size_of::<LoadMeta>(), 16);
const_assert_eq!(align_of::<LoadMeta>(), 16);
const_assert_eq!(offset_of!(LoadMeta, src_off), 0);
const_assert_eq!(offset_of!(LoadMeta, len), 4);
const_assert_eq!(offset_of!(LoadMeta, dst_off), 8);
const_assert_eq!(offset_of!(NetUnpackMeta, cnt), 524_288);
const_assert_eq!(size_of::<NetUnpackMeta>(), 524_416);
const_assert_eq!(size_of::<UnpackDevHandle>(), 24);
const_assert_eq!(offset_of!(UnpackDevHandle, meta), 0);
const_assert_eq!(offset_of!(UnpackDevHandle, bounce_buf), 8);
const_assert_eq!(offset_of!(UnpackDevHandle, head), 16);
const_assert_eq!(ENTRIES_PER_SLOT, MAX_RECV_BYTES / PAGE_SIZE * 2);

/// Slot used by the `k`-th receive on a comm (0-based).
pub const fn slot_of(k: u64) -> usize {
    (k % TCPX_REQUESTS as u64) as usize
}

/// Why a slot cannot be applied. Nothing is written when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackError {
    /// `cnt[slot]` exceeds [`ENTRIES_PER_SLOT`].
    TooManyEntries { count: u64 },
    /// A fragment is longer than a page.
    FragmentTooLarge { index: usize, len: u32 },
    /// A fragment reads past the end of the bounce region.
    SourceOutOfBounds { index: usize },
    /// A fragment writes past the end of the destination.
    DestinationOutOfBounds { index: usize },
}

impl NetUnpackMeta {
    /// The published entries of `slot`, checked against the table's capacity.
    pub fn slot_entries(&self, slot: usize) -> Result<&[LoadMeta], UnpackError> {
        let count = self.cnt[slot % TCPX_REQUESTS];
        if count > ENTRIES_PER_SLOT as u64 {
            return Err(UnpackError::TooManyEntries { count });
        }
        Ok(&self.mem[slot % TCPX_REQUESTS][..count as usize])
    }
}

/// Checks every entry against the bounce and destination sizes; returns the byte total.
pub fn validate(
    entries: &[LoadMeta],
    bounce_len: usize,
    dst_len: usize,
) -> Result<u64, UnpackError> {
    if entries.len() > ENTRIES_PER_SLOT {
        return Err(UnpackError::TooManyEntries {
            count: entries.len() as u64,
        });
    }
    let mut total = 0u64;
    for (index, e) in entries.iter().enumerate() {
        if e.len as usize > PAGE_SIZE {
            return Err(UnpackError::FragmentTooLarge { index, len: e.len });
        }
        let src_end = e.src_off as u64 + e.len as u64;
        if src_end > bounce_len as u64 {
            return Err(UnpackError::SourceOutOfBounds { index });
        }
        match e.dst_off.checked_add(e.len as u64) {
            Some(end) if end <= dst_len as u64 => {}
            _ => return Err(UnpackError::DestinationOutOfBounds { index }),
        }
        total += e.len as u64;
    }
    Ok(total)
}

/// Applies `entries` from `bounce` into `dst`, all-or-nothing; returns the bytes copied.
pub fn unpack_cpu(entries: &[LoadMeta], bounce: &[u8], dst: &mut [u8]) -> Result<u64, UnpackError> {
    let total = validate(entries, bounce.len(), dst.len())?;
    for e in entries {
        let (s, d, n) = (e.src_off as usize, e.dst_off as usize, e.len as usize);
        dst[d..d + n].copy_from_slice(&bounce[s..s + n]);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_fragments_in_any_order() {
        let bounce: [u8; 16] = core::array::from_fn(|i| i as u8);
        let mut dst = [0u8; 8];
        let e = [
            LoadMeta {
                src_off: 12,
                len: 4,
                dst_off: 0,
            },
            LoadMeta {
                src_off: 0,
                len: 4,
                dst_off: 4,
            },
        ];
        assert_eq!(unpack_cpu(&e, &bounce, &mut dst), Ok(8));
        assert_eq!(dst, [12, 13, 14, 15, 0, 1, 2, 3]);
    }

    #[test]
    fn rejects_out_of_bounds_without_writing() {
        let bounce = [7u8; 16];
        let mut dst = [0u8; 8];
        let e = [
            LoadMeta {
                src_off: 0,
                len: 4,
                dst_off: 0,
            },
            LoadMeta {
                src_off: 0,
                len: 4,
                dst_off: 6,
            },
        ];
        assert_eq!(
            unpack_cpu(&e, &bounce, &mut dst),
            Err(UnpackError::DestinationOutOfBounds { index: 1 })
        );
        assert_eq!(dst, [0; 8]);
        let e = [LoadMeta {
            src_off: 14,
            len: 4,
            dst_off: 0,
        }];
        assert_eq!(
            unpack_cpu(&e, &bounce, &mut dst),
            Err(UnpackError::SourceOutOfBounds { index: 0 })
        );
        let e = [LoadMeta {
            src_off: 0,
            len: 1,
            dst_off: u64::MAX,
        }];
        assert_eq!(
            unpack_cpu(&e, &bounce, &mut dst),
            Err(UnpackError::DestinationOutOfBounds { index: 0 })
        );
    }

    #[test]
    fn slot_of_wraps_at_sixteen() {
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(15), 15);
        assert_eq!(slot_of(16), 0);
        assert_eq!(slot_of(u64::MAX), 15);
    }
}
