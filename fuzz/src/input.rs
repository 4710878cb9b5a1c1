//! Input decoding shared by the control-protocol targets (`control`, `control_backend`):
//! reading the fuzzer's bytes, and frames that carry segments our own emitter refuses.

use tcpx_core::wire::{
    Ack, ErrorMsg, Hello, Message, ReadAnnounce, Segment, HEADER_LEN, MAGIC, VERSION,
};

/// Bytes of the input, read front to back; zeros once exhausted.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A segment's 32 wire bytes.
fn seg_bytes(s: &Segment) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, v) in [s.region(), s.key(), s.addr(), s.len()]
        .into_iter()
        .enumerate()
    {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// A frame carrying `segs` as given, also ranges our own emitter refuses (`addr + len`
/// overflowing): emitted with those lengths set to 0, then the segment bytes written back.
pub fn frame_with_segments(segs: &[Segment], make: impl Fn(&[Segment]) -> Vec<u8>) -> Vec<u8> {
    let tame: Vec<Segment> = segs
        .iter()
        .map(|s| match s.end() {
            Some(_) => *s,
            None => Segment::new(s.region(), s.key(), s.addr(), 0),
        })
        .collect();
    let mut f = make(&tame);
    let first = seg_bytes(&tame[0]);
    let at = f
        .windows(32)
        .position(|w| w == first)
        .expect("the segment list is in the frame");
    for (i, s) in segs.iter().enumerate() {
        f[at + i * 32..at + i * 32 + 32].copy_from_slice(&seg_bytes(s));
    }
    f
}

/// Op 5 of both targets: a header with any (or the right) magic and version, any kind and
/// length field, and up to 255 body bytes.
pub fn raw_header(b: &mut Bytes<'_>) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    let f = b.u8();
    let magic = if f & 1 == 0 { MAGIC } else { b.u32() };
    let version = if f & 2 == 0 { VERSION } else { b.u16() };
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&u16::from(b.u8() % 16).to_le_bytes());
    h.extend_from_slice(&b.u32().to_le_bytes());
    let body = usize::from(b.u8());
    h.extend_from_slice(b.take(body));
    h
}

/// Op 6 of both targets: a frame a target never expects from an initiator, chosen by `sel`,
/// naming transfer `xfer`.
pub fn unexpected(sel: u8, xfer: u64) -> Message<'static> {
    match sel % 4 {
        0 => Message::Ack(Ack { xfer, status: 0 }),
        1 => Message::ReadAnnounce(ReadAnnounce { xfer }),
        2 => Message::Hello(Hello {
            channels: 2,
            name: "again",
        }),
        _ => Message::Error(ErrorMsg {
            code: 1,
            xfer,
            text: "no",
        }),
    }
}
