//! Test support (feature `testing`), shared by the backend's tests (hostile peers, zero
//! allocation, soak) and the control-protocol fuzz target: two backends on loopback, a target
//! backend whose registration sits between canary and guard pages, a well-behaved agent that
//! proves the target still serves, and a peer's handshake.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tcpx::engine::{Config as EngineConfig, Session};
use tcpx_core::wire::{self, Hello, Message, RegionToken, Segment, HEADER_LEN};

use crate::backend::XferArgs;
use crate::registry::MEM_DRAM;
use crate::xfer::{Desc, Op};
use crate::{blob, Backend, Status};

pub const PAGE: usize = 4096;
/// Pages of the target's guarded registration.
pub const REGION_PAGES: usize = 4;
pub const REGION: usize = REGION_PAGES * PAGE;
/// The byte every canary page holds.
pub const CANARY: u8 = 0xA5;
/// Every wait of the well-behaved agent gives up (panics) after this long.
pub const BOUND: Duration = Duration::from_secs(15);

/// `[guard][canary][region: REGION_PAGES][canary][guard]`: a write just outside the
/// registration changes a canary byte, one a page further faults.
pub struct Guarded {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; it is only read and written through it.
unsafe impl Send for Guarded {}

impl Guarded {
    pub fn new() -> Self {
        let len = (REGION_PAGES + 4) * PAGE;
        // SAFETY: an anonymous private mapping; the guard pages are made inaccessible below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap failed");
        let base = base.cast::<u8>();
        // SAFETY: both ranges are pages of the mapping just made.
        unsafe {
            assert_eq!(libc::mprotect(base.cast(), PAGE, libc::PROT_NONE), 0);
            assert_eq!(
                libc::mprotect(base.add(len - PAGE).cast(), PAGE, libc::PROT_NONE),
                0
            );
            std::ptr::write_bytes(base.add(PAGE), CANARY, len - 2 * PAGE);
        }
        Self { base, len }
    }

    /// Address of the registration.
    pub fn region(&self) -> u64 {
        self.base as u64 + 2 * PAGE as u64
    }

    fn canaries(&self) -> (&[u8], &[u8]) {
        // SAFETY: the canary pages are readable and live as long as `self`.
        unsafe {
            (
                std::slice::from_raw_parts(self.base.add(PAGE), PAGE),
                std::slice::from_raw_parts(self.base.add(2 * PAGE + REGION), PAGE),
            )
        }
    }

    /// The registration's bytes.
    pub fn region_bytes(&self) -> &[u8] {
        // SAFETY: readable, live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.region() as *const u8, REGION) }
    }

    /// Panics naming `case` if a byte next to the registration changed.
    #[track_caller]
    pub fn assert_intact(&self, case: &str) {
        let (lo, hi) = self.canaries();
        if let Some(i) = lo.iter().position(|&b| b != CANARY) {
            panic!("{case}: byte {} before the registration changed", PAGE - i);
        }
        if let Some(i) = hi.iter().position(|&b| b != CANARY) {
            panic!("{case}: byte {i} after the registration changed");
        }
    }
}

impl Default for Guarded {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A NIXL descriptor.
pub fn desc(addr: u64, len: u64, md: usize) -> Desc {
    Desc {
        addr,
        len,
        dev_id: 0,
        md,
    }
}

/// Backend `name` over tcpxsock on `lo` (the rest of tcpxsock's settings from the
/// environment, so `TCPX_SOCK_UNPACK=1` runs these tests in TCPX mode); `timeout_ms` is its
/// dead-peer bound.
pub fn backend(name: &str, timeout_ms: u64) -> Backend {
    backend_with(name, timeout_ms, &[])
}

/// tcpxsock's settings for these tests: loopback, the rest from the environment.
pub fn sock_config() -> tcpx_sock::config::Config {
    tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..tcpx_sock::config::Config::from_env()
    }
}

/// [`backend`] with more backend parameters.
pub fn backend_with(name: &str, timeout_ms: u64, params: &[(&str, &str)]) -> Backend {
    tcpx_sock::config::configure(sock_config());
    let to = timeout_ms.to_string();
    let base = [("listen_addr", "127.0.0.1:0"), ("timeout_ms", to.as_str())];
    Backend::new(name, base.into_iter().chain(params.iter().copied()))
        .unwrap_or_else(|e| panic!("backend {name}: {e}"))
}

/// Two backends named `a` and `b` as [`backend`] makes them, `a` knowing `b`'s connection
/// info.
pub fn backend_pair(a: &str, b: &str, timeout_ms: u64) -> (Backend, Backend) {
    // The peer first, then the agent that knows it (as World always made them).
    let second = backend(b, timeout_ms);
    let first = backend(a, timeout_ms);
    first.load_remote_conn_info(b, second.conn_info()).unwrap();
    (first, second)
}

/// `owner` (agent `owner_name`) registers `len` DRAM bytes at `addr` and `peer` loads its
/// public data: (the owner's handle, the peer's remote handle).
pub fn share(
    owner: &Backend,
    owner_name: &str,
    peer: &Backend,
    addr: u64,
    len: u64,
) -> (usize, usize) {
    share_mem(owner, owner_name, peer, addr, len, MEM_DRAM)
}

/// [`share`] of memory kind `mem` (`MEM_DRAM`, or `MEM_VRAM` on device 0).
pub fn share_mem(
    owner: &Backend,
    owner_name: &str,
    peer: &Backend,
    addr: u64,
    len: u64,
    mem: i32,
) -> (usize, usize) {
    let mo = owner.register_mem(&desc(addr, len, 0), mem).unwrap();
    let rp = peer
        .load_remote_md(
            &desc(addr, len, 0),
            &owner.public_data(mo).unwrap(),
            mem,
            owner_name,
        )
        .unwrap();
    (mo, rp)
}

/// Polls request `h` of `b` until it leaves `InProgress` (panics on an error or after
/// [`BOUND`]); allocates nothing while it waits.
pub fn poll_done(b: &Backend, h: usize) -> Status {
    let deadline = Instant::now() + BOUND;
    loop {
        match b.check_xfer(h) {
            Ok(Status::InProgress) => {}
            Ok(s) => return s,
            Err(e) => panic!("transfer failed: {e}"),
        }
        assert!(Instant::now() < deadline, "transfer hangs");
        std::hint::spin_loop();
    }
}

/// Posts one transfer on `b` — `op` of `local` (memory kind `local_mem`) with `remote`
/// (`remote_mem`) at `agent`, no notification — polls it to its end, releases it and returns
/// how it ended.
pub fn run_xfer(
    b: &Backend,
    op: Op,
    local: (&[Desc], i32),
    remote: (&[Desc], i32),
    agent: &str,
) -> Status {
    let x = XferArgs {
        op,
        local: local.0,
        local_mem: local.1,
        remote: remote.0,
        remote_mem: remote.1,
        agent,
        notif: None,
    };
    let mut h = 0;
    b.post_xfer(&x, &mut h).expect("post_xfer");
    let status = poll_done(b, h);
    b.release_req(h).expect("release_req");
    status
}

/// `msg` as frame bytes.
pub fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf).expect("emit");
    buf
}

/// Target `t` with a guarded registration and a plain one, and a well-behaved agent `a`
/// that writes to and reads from the plain one.
pub struct World {
    pub t: Backend,
    pub a: Backend,
    /// `t`'s control listener.
    pub addr: SocketAddr,
    pub guard: Guarded,
    /// The guarded registration's token, as peers see it.
    pub token: RegionToken,
    src: Vec<u8>,
    dst: Vec<u8>,
    ma: usize,
    rt: usize,
    round: u8,
}

impl World {
    /// Both backends over tcpxsock on `lo`; `timeout_ms` is their dead-peer bound.
    pub fn new(timeout_ms: u64) -> World {
        let (a, t) = backend_pair("a", "t", timeout_ms);
        let (info, _) = blob::decode_conn_info(t.conn_info()).unwrap();
        let guard = Guarded::new();
        let mg = t
            .register_mem(&desc(guard.region(), REGION as u64, 0), MEM_DRAM)
            .unwrap();
        let token = blob::decode_token(&t.public_data(mg).unwrap()).unwrap();
        // Two regions' worth: a READ of both goes through the data session (it is larger than
        // the default `inline_read_bytes`), a READ of one page travels inline.
        let mut src = vec![0u8; 2 * REGION];
        let mut dst = vec![0u8; 2 * REGION];
        let ma = a
            .register_mem(
                &desc(src.as_mut_ptr() as u64, 2 * REGION as u64, 0),
                MEM_DRAM,
            )
            .unwrap();
        let (_, rt) = share(&t, "t", &a, dst.as_mut_ptr() as u64, 2 * REGION as u64);
        a.connect("t").unwrap();
        World {
            t,
            a,
            addr: info.addr,
            guard,
            token,
            src,
            dst,
            ma,
            rt,
            round: 0,
        }
    }

    /// `len` bytes at `off` in the guarded registration, with its true region id and key.
    pub fn seg(&self, off: u64, len: u64) -> Segment {
        Segment::new(
            self.token.region,
            self.token.key,
            self.token.base + off,
            len,
        )
    }

    /// `a` writes a fresh pattern (with a notification) into `t`, reads all of it back through
    /// the data session and a page of it inline; all verified, and the notification must
    /// arrive. Drains every other queued notification.
    pub fn good_roundtrip(&mut self, case: &str) {
        self.round = self.round.wrapping_add(1);
        let r = self.round;
        for (i, x) in self.src.iter_mut().enumerate() {
            *x = (i % 239) as u8 ^ r;
        }
        let (s, t) = (self.src.as_ptr() as u64, self.dst.as_ptr() as u64);
        let (l, rr) = (
            [desc(s, REGION as u64, self.ma)],
            [desc(t, REGION as u64, self.rt)],
        );
        let w = XferArgs {
            op: Op::Write,
            local: &l,
            local_mem: MEM_DRAM,
            remote: &rr,
            remote_mem: MEM_DRAM,
            agent: "t",
            notif: Some(b"good"),
        };
        let mut h = 0;
        self.a.post_xfer(&w, &mut h).unwrap();
        assert_eq!(poll_done(&self.a, h), Status::Success, "{case}: good WRITE");
        self.a.release_req(h).unwrap();
        assert!(
            self.dst[..REGION] == self.src[..REGION],
            "{case}: good WRITE data differs"
        );
        // The notification arrives once the data is in; take it (and anything else queued).
        let mut good = 0;
        self.t
            .take_notifs(|from, m| {
                good += usize::from(from == "a" && m == b"good");
                true
            })
            .unwrap();
        assert_eq!(good, 1, "{case}: good notif");

        // READ both regions back (32 KiB: through the data session).
        self.src.fill(0);
        self.read_back(0, 0, 2 * REGION, &format!("{case}: good READ"));
        assert!(self.src == self.dst, "{case}: good READ data differs");

        // READ 4 KiB back into the middle of src (inline).
        self.src[PAGE..2 * PAGE].fill(0);
        self.read_back(PAGE, 0, PAGE, &format!("{case}: good inline READ"));
        assert!(
            self.src[PAGE..2 * PAGE] == self.dst[..PAGE],
            "{case}: good inline READ data differs"
        );
    }

    /// `a` READs `len` bytes at `remote` in `t`'s second registration into `local` of its own,
    /// and waits for DONE.
    fn read_back(&self, local: usize, remote: usize, len: usize, what: &str) {
        let (s, t) = (self.src.as_ptr() as u64, self.dst.as_ptr() as u64);
        let l = [desc(s + local as u64, len as u64, self.ma)];
        let r = [desc(t + remote as u64, len as u64, self.rt)];
        let rd = XferArgs {
            op: Op::Read,
            local: &l,
            local_mem: MEM_DRAM,
            remote: &r,
            remote_mem: MEM_DRAM,
            agent: "t",
            notif: None,
        };
        let mut h = 0;
        self.a.post_xfer(&rd, &mut h).unwrap();
        assert_eq!(poll_done(&self.a, h), Status::Success, "{what}");
        self.a.release_req(h).unwrap();
    }
}

/// Reads one whole frame; `None` once the stream is closed (EOF or reset). Waits out read
/// timeouts up to [`BOUND`], then panics (the target neither answered nor closed); panics on
/// a header that does not parse (a target never sends one).
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    read_exact(s, &mut buf)?;
    let len = wire::peek_frame(&buf)
        .unwrap_or_else(|e| panic!("the target sent a bad header: {e}"))
        .expect("a whole header");
    buf.resize(len, 0);
    read_exact(s, &mut buf[HEADER_LEN..])?;
    Some(buf)
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    use std::io::{ErrorKind, Read};
    let deadline = Instant::now() + BOUND;
    let mut off = 0;
    while off < buf.len() {
        match s.read(&mut buf[off..]) {
            Ok(0) => return None,
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    Instant::now() < deadline,
                    "target neither answered nor closed"
                );
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    Some(())
}

/// The `Limits` frame a target answers a handshake with, taking the largest notifications.
pub fn limits() -> Vec<u8> {
    frame(&Message::Limits(wire::Limits {
        max_notif: wire::MAX_NOTIF as u32,
    }))
}

/// A peer's side of the handshake with the target at `addr`: `Hello{name}` and our engine
/// listen handles, the target's handles back, then the engine session. The stream is left
/// with a 500 ms read timeout (reads through [`read_frame`] wait up to [`BOUND`]).
pub fn handshake(addr: SocketAddr, name: &str) -> Result<(TcpStream, Session), String> {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(BOUND))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let cfg = EngineConfig {
        timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let net = Session::open_net(&cfg).map_err(|e| e.to_string())?;
    let l = Session::listen(net, cfg).map_err(|e| e.to_string())?;
    s.write_all(&frame(&Message::Hello(Hello { channels: 2, name })))
        .map_err(|e| format!("hello: {e}"))?;
    s.write_all(l.conn_info())
        .map_err(|e| format!("listen handles: {e}"))?;
    let theirs = read_frame(&mut s).ok_or("target closed during the handshake")?;
    wire::parse(&theirs).map_err(|e| format!("target's handles: {e}"))?;
    let lim = read_frame(&mut s).ok_or("target closed during the handshake")?;
    match wire::parse(&lim) {
        Ok(Message::Limits(_)) => {}
        other => return Err(format!("expected the target's Limits, got {other:?}")),
    }
    let sess = l.connect(&theirs).map_err(|e| e.to_string())?;
    Ok((s, sess))
}
