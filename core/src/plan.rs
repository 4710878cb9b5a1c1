//! The transfer planner: segments in, chunks on channels out.
//!
//! TCPX matches sends to receives by posting order only, so both peers must derive exactly
//! the same chunk sequence from the same announce. [`Plan`] is therefore a pure function of
//! its inputs: validated once, then iterated lazily with no allocation.

use core::iter::FusedIterator;

/// Most segments one transfer may carry (bounds the announce and the validation cost).
pub const MAX_SEGMENTS: usize = 1024;
/// Largest chunk: TCPX's largest single receive (4 MiB).
pub const MAX_CHUNK_BYTES: u32 = crate::unpack::MAX_RECV_BYTES as u32;
/// Default chunk size (what GCP configures TCPX with).
pub const DEFAULT_CHUNK_BYTES: u32 = 512 << 10;
/// Most chunks [`PlanConfig::split`] may ask a short transfer to be cut into.
pub const MAX_SPLIT_CHUNKS: u16 = 64;
/// The smallest chunk [`PlanConfig::sized_for`] cuts a transfer into: NCCL's default
/// `NCCL_P2P_NET_CHUNKSIZE`, and with two channels a transfer up to 256 KiB stays one chunk
/// per channel (which tcpxsock moves on the caller's thread, no helper hand-off).
pub const MIN_SPLIT_CHUNK_BYTES: u64 = 128 << 10;
/// Most channels a plan may spread over.
pub const MAX_CHANNELS: u8 = 16;
/// Largest segment and largest transfer (256 TiB). Far above any real memory, and it keeps
/// every offset, count and sum of a valid plan far from `u64` overflow.
pub const MAX_TRANSFER_BYTES: u64 = 1 << 48;

/// A contiguous range moved between local and remote memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Segment {
    /// Offset in the local region.
    pub local_offset: u64,
    /// Offset in the remote region.
    pub remote_offset: u64,
    /// Length in bytes. Zero-length segments are allowed and produce no chunks.
    pub len: u64,
}

/// How a transfer is cut and spread. Both peers must use the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanConfig {
    /// Chunk size, `1..=MAX_CHUNK_BYTES`; the last chunk of a segment may be shorter.
    pub chunk_bytes: u32,
    /// Channels, `1..=MAX_CHANNELS`.
    pub channels: u8,
    /// Channel of the first chunk, `< channels`; rotating it spreads small transfers.
    pub first_channel: u8,
    /// A transfer shorter than this many chunks is cut into about this many smaller ones
    /// ([`PlanConfig::sized_for`]), `1..=MAX_SPLIT_CHUNKS`; 1 never cuts below `chunk_bytes`.
    pub split: u16,
}

impl PlanConfig {
    /// `chunk_bytes` over `channels`, starting at channel 0.
    pub const fn new(chunk_bytes: u32, channels: u8) -> Self {
        Self {
            chunk_bytes,
            channels,
            first_channel: 0,
            split: 1,
        }
    }

    /// The same config cutting short transfers into up to `split` chunks.
    pub const fn with_split(self, split: u16) -> Self {
        Self { split, ..self }
    }

    /// The same config with the round-robin starting at `first_channel`.
    pub const fn with_first_channel(self, first_channel: u8) -> Self {
        Self {
            first_channel,
            ..self
        }
    }

    /// The config a transfer of `total_bytes` is planned with: chunks of `chunk_bytes`, or,
    /// for a transfer shorter than `split` of them, chunks of a page multiple near
    /// `total_bytes / split` (at least [`MIN_SPLIT_CHUNK_BYTES`]), so that a mid-sized
    /// transfer moves in several pieces over every channel at once instead of one or two
    /// large ones. Where cores are plenty that is faster (on the 16-core H100 VM, a 1 MiB
    /// NIXL transfer over tcpxsock cut in eight 128 KiB chunks: p50 180 -> 100 µs, p99
    /// 960 -> 150 µs); on two cores it is slower (1 MiB p50 about 1.5x), hence a per-session
    /// setting. Both peers compute it from the same segments and split, so they cut alike.
    pub const fn sized_for(self, total_bytes: u64) -> Self {
        if self.split <= 1 {
            return self;
        }
        let page = crate::unpack::PAGE_SIZE as u64;
        let mut want = total_bytes.div_ceil(self.split as u64).div_ceil(page) * page;
        if want < MIN_SPLIT_CHUNK_BYTES {
            want = MIN_SPLIT_CHUNK_BYTES;
        }
        if want < self.chunk_bytes as u64 {
            // want < chunk_bytes <= u32::MAX.
            Self {
                chunk_bytes: want as u32,
                ..self
            }
        } else {
            self
        }
    }

    /// Check the bounds documented on each field.
    pub const fn validate(&self) -> Result<(), PlanError> {
        if self.chunk_bytes == 0 || self.chunk_bytes > MAX_CHUNK_BYTES {
            return Err(PlanError::ChunkBytes {
                chunk_bytes: self.chunk_bytes,
            });
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(PlanError::Channels {
                channels: self.channels,
            });
        }
        if self.first_channel >= self.channels {
            return Err(PlanError::FirstChannel {
                first_channel: self.first_channel,
                channels: self.channels,
            });
        }
        if self.split == 0 || self.split > MAX_SPLIT_CHUNKS {
            return Err(PlanError::Split { split: self.split });
        }
        Ok(())
    }
}

impl Default for PlanConfig {
    /// 512 KiB chunks over 2 channels.
    fn default() -> Self {
        Self::new(DEFAULT_CHUNK_BYTES, 2)
    }
}

/// Which offset of a segment is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Local,
    Remote,
}

/// Why a plan was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanError {
    /// More than [`MAX_SEGMENTS`] segments.
    TooManySegments { count: usize },
    /// `chunk_bytes` is 0 or above [`MAX_CHUNK_BYTES`].
    ChunkBytes { chunk_bytes: u32 },
    /// `channels` is 0 or above [`MAX_CHANNELS`].
    Channels { channels: u8 },
    /// `first_channel` is not below `channels`.
    FirstChannel { first_channel: u8, channels: u8 },
    /// `split` is 0 or above [`MAX_SPLIT_CHUNKS`].
    Split { split: u16 },
    /// A segment longer than [`MAX_TRANSFER_BYTES`].
    SegmentTooLong { segment: u32, len: u64 },
    /// `offset + len` of a segment does not fit in `u64`.
    OffsetOverflow { segment: u32, side: Side },
    /// The segments add up to more than [`MAX_TRANSFER_BYTES`].
    TooLarge { segment: u32 },
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManySegments { count } => {
                write!(f, "{count} segments (at most {MAX_SEGMENTS})")
            }
            Self::ChunkBytes { chunk_bytes } => {
                write!(f, "chunk size {chunk_bytes} not in 1..={MAX_CHUNK_BYTES}")
            }
            Self::Split { split } => {
                write!(f, "split {split} not in 1..={MAX_SPLIT_CHUNKS}")
            }
            Self::Channels { channels } => {
                write!(f, "{channels} channels (1..={MAX_CHANNELS})")
            }
            Self::FirstChannel {
                first_channel,
                channels,
            } => write!(f, "first channel {first_channel} with {channels} channels"),
            Self::SegmentTooLong { segment, len } => {
                write!(
                    f,
                    "segment {segment}: {len} bytes is above {MAX_TRANSFER_BYTES}"
                )
            }
            Self::OffsetOverflow { segment, side } => {
                write!(f, "segment {segment}: {side:?} offset + len overflows")
            }
            Self::TooLarge { segment } => {
                write!(
                    f,
                    "transfer exceeds {MAX_TRANSFER_BYTES} bytes at segment {segment}"
                )
            }
        }
    }
}

/// One unit of work: a single `isend`/`irecv` on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Index of the segment it belongs to.
    pub segment: u32,
    /// Offset in the local region.
    pub local_offset: u64,
    /// Offset in the remote region.
    pub remote_offset: u64,
    /// Length, `1..=chunk_bytes`.
    pub len: u32,
    /// Channel it travels on.
    pub channel: u8,
    /// Position among this plan's chunks on `channel`, from 0.
    pub seq: u64,
}

/// A validated transfer plan over borrowed segments. Cheap to copy and to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan<'a> {
    segments: &'a [Segment],
    cfg: PlanConfig,
    total_bytes: u64,
    chunk_count: u64,
}

impl<'a> Plan<'a> {
    /// Validate `segments` and `cfg` (in that order of cost: config, count, then each
    /// segment) and build the plan, cutting with `cfg.sized_for(total)`. O(segments); nothing
    /// is allocated.
    pub fn new(segments: &'a [Segment], cfg: PlanConfig) -> Result<Self, PlanError> {
        cfg.validate()?;
        if segments.len() > MAX_SEGMENTS {
            return Err(PlanError::TooManySegments {
                count: segments.len(),
            });
        }
        let mut total_bytes = 0u64;
        for (i, s) in segments.iter().enumerate() {
            // i < MAX_SEGMENTS, so it fits.
            let segment = i as u32;
            if s.len > MAX_TRANSFER_BYTES {
                return Err(PlanError::SegmentTooLong {
                    segment,
                    len: s.len,
                });
            }
            if s.local_offset.checked_add(s.len).is_none() {
                return Err(PlanError::OffsetOverflow {
                    segment,
                    side: Side::Local,
                });
            }
            if s.remote_offset.checked_add(s.len).is_none() {
                return Err(PlanError::OffsetOverflow {
                    segment,
                    side: Side::Remote,
                });
            }
            // Both terms are <= 2^48, so the sum cannot wrap before the check.
            total_bytes += s.len;
            if total_bytes > MAX_TRANSFER_BYTES {
                return Err(PlanError::TooLarge { segment });
            }
        }
        let cfg = cfg.sized_for(total_bytes);
        let cb = u64::from(cfg.chunk_bytes);
        let chunk_count = segments.iter().map(|s| s.len.div_ceil(cb)).sum();
        Ok(Self {
            segments,
            cfg,
            total_bytes,
            chunk_count,
        })
    }

    /// The planned segments.
    pub const fn segments(&self) -> &'a [Segment] {
        self.segments
    }

    /// The configuration it was planned with (`chunk_bytes` as [`PlanConfig::sized_for`]
    /// made it).
    pub const fn config(&self) -> PlanConfig {
        self.cfg
    }

    /// Sum of all segment lengths.
    pub const fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of chunks over all channels.
    pub const fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// Number of chunks on `channel` (0 for a channel outside the plan). O(1).
    pub const fn chunks_on(&self, channel: u8) -> u64 {
        if channel >= self.cfg.channels {
            return 0;
        }
        let c = self.cfg.channels as u64;
        let d = self.distance(channel);
        if d >= self.chunk_count {
            0
        } else {
            (self.chunk_count - d - 1) / c + 1
        }
    }

    /// The `first_channel` that continues this plan's round-robin in the next transfer.
    pub const fn next_first_channel(&self) -> u8 {
        let c = self.cfg.channels as u64;
        ((self.cfg.first_channel as u64 + self.chunk_count % c) % c) as u8
    }

    /// All chunks in posting order: segment by segment, channels round-robin.
    pub fn chunks(&self) -> Chunks<'a> {
        Chunks {
            segments: self.segments,
            chunk_bytes: u64::from(self.cfg.chunk_bytes),
            channels: self.cfg.channels,
            first_channel: self.cfg.first_channel,
            segment: 0,
            offset: 0,
            channel: self.cfg.first_channel,
            seq: 0,
            one_channel: false,
            remaining: self.chunk_count,
        }
    }

    /// Only `channel`'s chunks, in `seq` order: what one channel's window posts.
    /// Skips other channels' chunks arithmetically, so it is O(segments + own chunks).
    pub fn channel_chunks(&self, channel: u8) -> Chunks<'a> {
        let mut it = self.chunks();
        it.one_channel = true;
        it.channel = channel;
        it.remaining = self.chunks_on(channel);
        if it.remaining > 0 {
            it.skip_chunks(self.distance(channel));
        }
        it
    }

    /// Global index of `channel`'s first chunk.
    const fn distance(&self, channel: u8) -> u64 {
        let c = self.cfg.channels as u64;
        (channel as u64 + c - self.cfg.first_channel as u64) % c
    }
}

impl<'a> IntoIterator for &Plan<'a> {
    type Item = Chunk;
    type IntoIter = Chunks<'a>;
    fn into_iter(self) -> Chunks<'a> {
        self.chunks()
    }
}

/// Iterator over a [`Plan`]'s chunks (all of them, or one channel's).
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    segments: &'a [Segment],
    chunk_bytes: u64,
    channels: u8,
    first_channel: u8,
    /// Position of the next chunk: segment index and offset inside it.
    segment: usize,
    offset: u64,
    /// Channel and per-channel seq of the next chunk, kept incrementally (no division).
    channel: u8,
    seq: u64,
    /// Yield only `channel`'s chunks (skip `channels - 1` between two).
    one_channel: bool,
    /// Chunks still to yield.
    remaining: u64,
}

impl Chunks<'_> {
    /// Move the position forward by `k` chunks (of any channel).
    fn skip_chunks(&mut self, mut k: u64) {
        while let Some(s) = self.segments.get(self.segment) {
            let left = (s.len - self.offset).div_ceil(self.chunk_bytes);
            if k < left {
                self.offset += k * self.chunk_bytes;
                return;
            }
            k -= left;
            self.segment += 1;
            self.offset = 0;
        }
    }
}

impl Iterator for Chunks<'_> {
    type Item = Chunk;

    #[inline]
    fn next(&mut self) -> Option<Chunk> {
        if self.remaining == 0 {
            return None;
        }
        // Zero-length segments (and a finished one) hold no chunk.
        let mut s = self.segments.get(self.segment)?;
        while self.offset >= s.len {
            self.segment += 1;
            self.offset = 0;
            s = self.segments.get(self.segment)?;
        }
        let len = (s.len - self.offset).min(self.chunk_bytes);
        let chunk = Chunk {
            segment: self.segment as u32,
            local_offset: s.local_offset + self.offset,
            remote_offset: s.remote_offset + self.offset,
            // len <= chunk_bytes, a u32.
            len: len as u32,
            channel: self.channel,
            seq: self.seq,
        };
        self.remaining -= 1;
        if self.one_channel {
            self.seq += 1;
            if self.remaining > 0 {
                self.skip_chunks(u64::from(self.channels));
            }
        } else {
            self.offset += len;
            self.channel += 1;
            if self.channel == self.channels {
                self.channel = 0;
            }
            // A new round starts when the round-robin is back at the first channel.
            if self.channel == self.first_channel {
                self.seq += 1;
            }
        }
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match usize::try_from(self.remaining) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

impl FusedIterator for Chunks<'_> {}

/// A [`Chunks`] position without the borrow of the segments, so it can be stored beside
/// them (the engine keeps one per transfer and channel). Resume it with the same segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    chunk_bytes: u64,
    channels: u8,
    first_channel: u8,
    segment: usize,
    offset: u64,
    channel: u8,
    seq: u64,
    one_channel: bool,
    remaining: u64,
}

impl<'a> Chunks<'a> {
    /// Drops the borrow of the segments, keeping the position.
    pub fn detach(self) -> Cursor {
        Cursor {
            chunk_bytes: self.chunk_bytes,
            channels: self.channels,
            first_channel: self.first_channel,
            segment: self.segment,
            offset: self.offset,
            channel: self.channel,
            seq: self.seq,
            one_channel: self.one_channel,
            remaining: self.remaining,
        }
    }
}

impl Cursor {
    /// Resumes iteration over `segments`, which must be the planned ones.
    pub fn attach(self, segments: &[Segment]) -> Chunks<'_> {
        Chunks {
            segments,
            chunk_bytes: self.chunk_bytes,
            channels: self.channels,
            first_channel: self.first_channel,
            segment: self.segment,
            offset: self.offset,
            channel: self.channel,
            seq: self.seq,
            one_channel: self.one_channel,
            remaining: self.remaining,
        }
    }

    /// The next chunk, advancing the cursor.
    #[inline]
    pub fn next(&mut self, segments: &[Segment]) -> Option<Chunk> {
        let mut it = self.attach(segments);
        let chunk = it.next();
        *self = it.detach();
        chunk
    }

    /// Chunks still to come.
    pub const fn remaining(&self) -> u64 {
        self.remaining
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn seg(local_offset: u64, remote_offset: u64, len: u64) -> Segment {
        Segment {
            local_offset,
            remote_offset,
            len,
        }
    }

    #[test]
    fn splits_and_round_robins_across_segments() {
        let segs = [seg(0, 1000, 250), seg(500, 0, 0), seg(4096, 8192, 100)];
        let plan = Plan::new(&segs, PlanConfig::new(100, 2).with_first_channel(1)).unwrap();
        assert_eq!(plan.total_bytes(), 350);
        assert_eq!(plan.chunk_count(), 4);
        let got: Vec<Chunk> = plan.chunks().collect();
        let c = |segment, lo, ro, len, channel, seq| Chunk {
            segment,
            local_offset: lo,
            remote_offset: ro,
            len,
            channel,
            seq,
        };
        assert_eq!(
            got,
            [
                c(0, 0, 1000, 100, 1, 0),
                c(0, 100, 1100, 100, 0, 0),
                c(0, 200, 1200, 50, 1, 1),
                c(2, 4096, 8192, 100, 0, 1),
            ]
        );
        assert_eq!(
            (plan.chunks_on(0), plan.chunks_on(1), plan.chunks_on(2)),
            (2, 2, 0)
        );
        assert_eq!(plan.next_first_channel(), 1);
        let ch1: Vec<Chunk> = plan.channel_chunks(1).collect();
        assert_eq!(ch1, [got[0], got[2]]);
        assert_eq!(plan.channel_chunks(5).next(), None);
    }

    #[test]
    fn a_short_transfer_is_cut_in_smaller_chunks() {
        let cfg = PlanConfig::new(512 << 10, 2).with_split(8);
        let cut = |total: u64| {
            let segs = [seg(0, 0, total)];
            let p = Plan::new(&segs, cfg).unwrap();
            (p.config().chunk_bytes, p.chunk_count())
        };
        assert_eq!(cut(1 << 20), (128 << 10, 8), "1 MiB: eight 128 KiB chunks");
        assert_eq!(cut(4 << 20), (512 << 10, 8), "4 MiB: the configured size");
        assert_eq!(cut(64 << 20), (512 << 10, 128));
        assert_eq!(cut(2 << 20), (256 << 10, 8));
        assert_eq!(cut(4096), (128 << 10, 1), "never below 128 KiB");
        assert_eq!(cut(200_000), (128 << 10, 2));
        assert_eq!(cut(256 << 10), (128 << 10, 2), "one chunk per channel");
        assert_eq!(cut(3_000_001), (376_832, 8), "a page multiple: 92 pages");
        // A configured size below the floor is kept.
        assert_eq!(
            PlanConfig::new(4096, 1).sized_for(1 << 30).chunk_bytes,
            4096
        );
        assert_eq!(
            PlanConfig::new(32 << 10, 1).sized_for(1 << 20).chunk_bytes,
            32 << 10
        );
        // Several segments: the total decides, each segment is cut with it.
        let segs = [seg(0, 0, 512 << 10), seg(1 << 20, 0, 512 << 10)];
        let p = Plan::new(&segs, cfg).unwrap();
        assert_eq!((p.config().chunk_bytes, p.chunk_count()), (128 << 10, 8));
        assert!(p.chunks().all(|c| c.len == 128 << 10));
    }

    #[test]
    fn rejects_bad_config() {
        let segs = [seg(0, 0, 1)];
        let bad = [
            (
                PlanConfig::new(0, 1),
                PlanError::ChunkBytes { chunk_bytes: 0 },
            ),
            (
                PlanConfig::new(MAX_CHUNK_BYTES + 1, 1),
                PlanError::ChunkBytes {
                    chunk_bytes: MAX_CHUNK_BYTES + 1,
                },
            ),
            (PlanConfig::new(1, 0), PlanError::Channels { channels: 0 }),
            (PlanConfig::new(1, 17), PlanError::Channels { channels: 17 }),
            (
                PlanConfig::new(1, 4).with_first_channel(4),
                PlanError::FirstChannel {
                    first_channel: 4,
                    channels: 4,
                },
            ),
            (
                PlanConfig::new(1, 1).with_split(0),
                PlanError::Split { split: 0 },
            ),
            (
                PlanConfig::new(1, 1).with_split(MAX_SPLIT_CHUNKS + 1),
                PlanError::Split {
                    split: MAX_SPLIT_CHUNKS + 1,
                },
            ),
        ];
        for (cfg, err) in bad {
            assert_eq!(Plan::new(&segs, cfg), Err(err));
        }
        assert!(Plan::new(&segs, PlanConfig::new(MAX_CHUNK_BYTES, MAX_CHANNELS)).is_ok());
    }

    #[test]
    fn rejects_too_many_segments() {
        let segs = [seg(0, 0, 1); MAX_SEGMENTS + 1];
        assert_eq!(
            Plan::new(&segs, PlanConfig::default()),
            Err(PlanError::TooManySegments {
                count: MAX_SEGMENTS + 1
            })
        );
        assert!(Plan::new(&segs[..MAX_SEGMENTS], PlanConfig::default()).is_ok());
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        let cfg = PlanConfig::default();
        assert_eq!(
            Plan::new(&[seg(0, 0, u64::MAX)], cfg),
            Err(PlanError::SegmentTooLong {
                segment: 0,
                len: u64::MAX
            })
        );
        assert_eq!(
            Plan::new(&[seg(1, 0, 2), seg(u64::MAX - 5, 0, 10)], cfg),
            Err(PlanError::OffsetOverflow {
                segment: 1,
                side: Side::Local
            })
        );
        assert_eq!(
            Plan::new(&[seg(0, u64::MAX, 1)], cfg),
            Err(PlanError::OffsetOverflow {
                segment: 0,
                side: Side::Remote
            })
        );
        // Ending exactly at u64::MAX is fine.
        let ok = [seg(u64::MAX - 10, u64::MAX - 10, 10)];
        let last = Plan::new(&ok, cfg).unwrap().chunks().last().unwrap();
        assert_eq!(last.local_offset + u64::from(last.len), u64::MAX);
        let big = [seg(0, 0, MAX_TRANSFER_BYTES), seg(0, 0, 1)];
        assert_eq!(
            Plan::new(&big, cfg),
            Err(PlanError::TooLarge { segment: 1 })
        );
    }

    #[test]
    fn huge_plan_is_counted_not_walked() {
        let segs = [seg(0, 0, MAX_TRANSFER_BYTES)];
        let plan = Plan::new(&segs, PlanConfig::new(MAX_CHUNK_BYTES, 3)).unwrap();
        assert_eq!(
            plan.chunk_count(),
            MAX_TRANSFER_BYTES / u64::from(MAX_CHUNK_BYTES)
        );
        let sum: u64 = (0..3).map(|c| plan.chunks_on(c)).sum();
        assert_eq!(sum, plan.chunk_count());
        let first_on_2 = plan.channel_chunks(2).next().unwrap();
        assert_eq!(first_on_2.local_offset, 2 * u64::from(MAX_CHUNK_BYTES));
        let second_on_2 = plan.channel_chunks(2).nth(1).unwrap();
        assert_eq!(second_on_2.seq, 1);
        assert_eq!(second_on_2.local_offset, 5 * u64::from(MAX_CHUNK_BYTES));
    }

    #[test]
    fn cursor_resumes_where_it_stopped() {
        let segs = [seg(0, 0, 1000), seg(5000, 9000, 0), seg(3000, 100, 777)];
        let plan = Plan::new(&segs, PlanConfig::new(128, 3).with_first_channel(2)).unwrap();
        for ch in 0..3 {
            let mut cur = plan.channel_chunks(ch).detach();
            let mut got = Vec::new();
            while let Some(c) = cur.next(&segs) {
                got.push(c);
                assert_eq!(cur.remaining(), plan.chunks_on(ch) - got.len() as u64);
            }
            assert!(plan.channel_chunks(ch).eq(got.iter().copied()));
        }
        let mut all = plan.chunks();
        all.next();
        assert!(all.clone().eq(all.detach().attach(&segs)));
    }

    #[test]
    fn empty_and_all_zero_plans() {
        let plan = Plan::new(&[], PlanConfig::default()).unwrap();
        assert_eq!((plan.total_bytes(), plan.chunk_count()), (0, 0));
        assert_eq!(plan.chunks().next(), None);
        let zeros = [seg(7, 7, 0); 3];
        let plan = Plan::new(&zeros, PlanConfig::new(4, 3).with_first_channel(2)).unwrap();
        assert_eq!(plan.chunks().count(), 0);
        assert_eq!(plan.next_first_channel(), 2);
    }

    fn segments() -> impl Strategy<Value = Vec<Segment>> {
        proptest::collection::vec(
            (
                0u64..1 << 40,
                0u64..1 << 40,
                prop_oneof![1 => Just(0u64), 6 => 1u64..3000],
            )
                .prop_map(|(l, r, n)| seg(l, r, n)),
            0..12,
        )
    }

    fn config() -> impl Strategy<Value = PlanConfig> {
        (1u32..700, 1u8..=MAX_CHANNELS)
            .prop_flat_map(|(cb, ch)| (Just(cb), Just(ch), 0..ch))
            .prop_map(|(cb, ch, first)| PlanConfig::new(cb, ch).with_first_channel(first))
    }

    proptest! {
        /// Every byte of every segment is covered exactly once, in order; per-channel seqs
        /// are contiguous; channels are strict round-robin; counts agree with the walk.
        #[test]
        fn plan_covers_every_byte_once(segs in segments(), cfg in config()) {
            let plan = Plan::new(&segs, cfg).unwrap();
            let chunks: Vec<Chunk> = plan.chunks().collect();
            prop_assert_eq!(chunks.len() as u64, plan.chunk_count());
            prop_assert_eq!(plan.chunks().size_hint(), (chunks.len(), Some(chunks.len())));

            // Coverage: walk segments in order and expect contiguous chunks.
            let mut it = chunks.iter();
            for (i, s) in segs.iter().enumerate() {
                let mut off = 0u64;
                while off < s.len {
                    let c = it.next().unwrap();
                    prop_assert_eq!(c.segment as usize, i);
                    prop_assert_eq!(c.local_offset, s.local_offset + off);
                    prop_assert_eq!(c.remote_offset, s.remote_offset + off);
                    prop_assert!(c.len >= 1 && c.len <= cfg.chunk_bytes);
                    // Only a segment's last chunk may be short.
                    if off + u64::from(c.len) < s.len {
                        prop_assert_eq!(c.len, cfg.chunk_bytes);
                    }
                    off += u64::from(c.len);
                }
                prop_assert_eq!(off, s.len);
            }
            prop_assert!(it.next().is_none());
            let bytes: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            prop_assert_eq!(bytes, plan.total_bytes());

            let mut next_seq = [0u64; MAX_CHANNELS as usize];
            for (i, c) in chunks.iter().enumerate() {
                let want = (u64::from(cfg.first_channel) + i as u64) % u64::from(cfg.channels);
                prop_assert_eq!(u64::from(c.channel), want);
                prop_assert_eq!(c.seq, next_seq[c.channel as usize]);
                next_seq[c.channel as usize] += 1;
            }
            for ch in 0..MAX_CHANNELS {
                prop_assert_eq!(plan.chunks_on(ch), next_seq[ch as usize]);
                let own: Vec<Chunk> = plan.channel_chunks(ch).collect();
                let filtered: Vec<Chunk> =
                    chunks.iter().copied().filter(|c| c.channel == ch).collect();
                prop_assert_eq!(own, filtered);
            }
            let next = (u64::from(cfg.first_channel) + chunks.len() as u64)
                % u64::from(cfg.channels);
            prop_assert_eq!(u64::from(plan.next_first_channel()), next);
        }

        /// Same input, same plan: the property order-only matching relies on.
        #[test]
        fn plan_is_deterministic(segs in segments(), cfg in config()) {
            let a = Plan::new(&segs, cfg).unwrap();
            let copy = segs.clone();
            let b = Plan::new(&copy, cfg).unwrap();
            prop_assert!(a.chunks().eq(b.chunks()));
        }

        /// Offsets that overflow are always refused, never wrapped.
        #[test]
        fn overflow_is_an_error(off in (u64::MAX - 10_000)..=u64::MAX, len in 1u64..20_000) {
            let segs = [seg(off, 0, len)];
            let r = Plan::new(&segs, PlanConfig::default());
            prop_assert_eq!(r.is_err(), off.checked_add(len).is_none());
        }
    }
}
