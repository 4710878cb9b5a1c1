//! Shared test driver: calls the plugin only through its exported v7 table, as a loader
//! would, with every wait bounded by a deadline.
#![allow(dead_code)]

use core::ffi::{c_int, c_void};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use tcpx_core::abi::v7::{Net, Properties};
use tcpx_core::abi::{result, DevHandle, NcclResult, HANDLE_MAX_SIZE, NET_DEVICE_UNPACK, PTR_HOST};

/// Bound on every wait in the tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The table under test, reached through the exported symbol's Rust path.
pub fn net() -> &'static Net {
    &tcpx_sock::ncclNetPlugin_v7
}

/// Configures the plugin for loopback and calls `init` (once per test binary).
pub fn init(unpack: bool, shuffle: bool, bounce_bytes: usize) {
    init_with(tcpx_sock::Config {
        unpack,
        shuffle,
        bounce_bytes,
        ..tcpx_sock::Config::default()
    });
}

/// [`init`] with a whole configuration (its `ifname` forced to `lo`).
pub fn init_with(cfg: tcpx_sock::Config) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tcpx_sock::configure(tcpx_sock::Config {
            ifname: Some("lo".into()),
            ..cfg
        });
        // SAFETY: no logger.
        let rc = unsafe { net().init.unwrap()(None) };
        assert_eq!(rc, result::SUCCESS);
    });
}

pub type Handle = [u8; HANDLE_MAX_SIZE];

/// Held to read the configuration at `listen`/`connect` while another test of the same binary
/// may be switching it for its own listen comm ([`listen_with`]).
static CONFIG: RwLock<()> = RwLock::new(());

/// Whether the plugin is in TCPX mode (an UNPACK device: CUDA present, or configured so).
pub fn tcpx_mode() -> bool {
    props().net_device_type == NET_DEVICE_UNPACK
}

/// Whether the plugin is in host mode; prints `SKIP` for `test` otherwise (a CUDA machine is
/// always in TCPX mode, which `tests/tcpx*.rs` and `tests/cuda.rs` cover).
pub fn host_mode(test: &str) -> bool {
    if tcpx_mode() {
        println!("SKIP: {test}: the device is UNPACK (TCPX mode), not host");
        return false;
    }
    true
}

/// A comm pointer that may cross threads in tests.
#[derive(Clone, Copy, Debug)]
pub struct Ptr(pub *mut c_void);
// SAFETY: the plugin's comms may be used from any thread (one at a time).
unsafe impl Send for Ptr {}

pub fn listen() -> (Handle, Ptr) {
    let _g = CONFIG.read().unwrap_or_else(|e| e.into_inner());
    listen_now()
}

/// A listen comm whose comms use `cfg` (receive-side settings: TCPX mode, host bounce, odd
/// fragments, linear bytes, accept delay, bounce placement); the configuration in force is
/// restored afterwards.
pub fn listen_with(cfg: tcpx_sock::Config) -> (Handle, Ptr) {
    let _g = CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let base = tcpx_sock::config::current();
    tcpx_sock::configure(tcpx_sock::Config {
        ifname: base.ifname.clone(),
        ..cfg
    });
    let r = listen_now();
    tcpx_sock::configure(base);
    r
}

fn listen_now() -> (Handle, Ptr) {
    let mut h = [0u8; HANDLE_MAX_SIZE];
    let mut l = core::ptr::null_mut();
    // SAFETY: valid out-pointers and a 128-byte handle.
    let rc = unsafe { net().listen.unwrap()(0, h.as_mut_ptr().cast(), &mut l) };
    assert_eq!(rc, result::SUCCESS);
    assert!(!l.is_null());
    (h, Ptr(l))
}

/// One connect step.
pub fn connect_step(h: &mut Handle) -> Result<Option<Ptr>, NcclResult> {
    let _g = CONFIG.read().unwrap_or_else(|e| e.into_inner());
    let mut s = core::ptr::null_mut();
    let mut d: *mut DevHandle = core::ptr::null_mut();
    // SAFETY: valid out-pointers and a handle from listen.
    let rc = unsafe { net().connect.unwrap()(0, h.as_mut_ptr().cast(), &mut s, &mut d) };
    if rc != result::SUCCESS {
        return Err(rc);
    }
    Ok((!s.is_null()).then_some(Ptr(s)))
}

/// A zeroed device handle as NCCL allocates one for `accept` to fill.
pub fn zeroed_dev_handle() -> DevHandle {
    DevHandle {
        net_device_type: 0,
        net_device_version: 0,
        handle: core::ptr::null_mut(),
        size: 0,
        needs_proxy_progress: 0,
    }
}

/// One `accept` call with `dev` as the device-handle out-pointer's target: the result code and
/// the comm (NULL = not yet).
pub fn accept_raw(l: Ptr, dev: *mut *mut DevHandle) -> (NcclResult, Ptr) {
    let mut r = core::ptr::null_mut();
    // SAFETY: a valid out-pointer, a live listen comm; `dev` is the caller's.
    let rc = unsafe { net().accept.unwrap()(l.0, &mut r, dev) };
    (rc, Ptr(r))
}

/// One accept step, passing a zeroed device handle as NCCL does: in TCPX mode the plugin fills
/// it (returned, leaked for the test's lifetime), in host mode it sets the pointer to NULL.
pub fn accept_step(l: Ptr) -> Result<Option<(Ptr, *mut DevHandle)>, NcclResult> {
    let own = Box::into_raw(Box::new(zeroed_dev_handle()));
    let mut d = own;
    let (rc, r) = accept_raw(l, &mut d);
    if rc != result::SUCCESS || r.0.is_null() || d != own {
        // SAFETY: made above and not handed out.
        drop(unsafe { Box::from_raw(own) });
    }
    if rc != result::SUCCESS {
        return Err(rc);
    }
    Ok((!r.0.is_null()).then_some((r, d)))
}

/// Connected (send, recv, recv dev handle) on loopback within this process.
pub fn pair() -> (Ptr, Ptr, *mut DevHandle) {
    let (h, l) = listen();
    connect_accept(h, l)
}

/// Connects to and accepts from listen comm `l` (handle `h`), then closes `l`: the second
/// half of [`pair`], for tests that change the configuration between listen and connect.
pub fn connect_accept(mut h: Handle, l: Ptr) -> (Ptr, Ptr, *mut DevHandle) {
    let (mut s, mut r) = (None, None);
    let t0 = Instant::now();
    while s.is_none() || r.is_none() {
        assert!(t0.elapsed() < DEADLINE, "connect/accept timed out");
        if s.is_none() {
            s = connect_step(&mut h).expect("connect");
        }
        if r.is_none() {
            r = accept_step(l).expect("accept");
        }
    }
    close_listen(l);
    let (r, d) = r.unwrap();
    (s.unwrap(), r, d)
}

pub fn close_listen(l: Ptr) {
    // SAFETY: a live listen comm, closed once.
    assert_eq!(unsafe { net().close_listen.unwrap()(l.0) }, result::SUCCESS);
}
pub fn close_send(s: Ptr) {
    // SAFETY: a live send comm, closed once.
    assert_eq!(unsafe { net().close_send.unwrap()(s.0) }, result::SUCCESS);
}
pub fn close_recv(r: Ptr) {
    // SAFETY: a live recv comm, closed once.
    assert_eq!(unsafe { net().close_recv.unwrap()(r.0) }, result::SUCCESS);
}

/// A host memory handle. tcpxsock's registrations are bookkeeping that names no comm or
/// range, so one serves every host buffer on every comm (TCPX mode refuses NULL ones).
pub fn host_mh(comm: Ptr) -> *mut c_void {
    static MH: OnceLock<usize> = OnceLock::new();
    *MH.get_or_init(|| {
        let mut mh = core::ptr::null_mut();
        // SAFETY: a live comm and a valid out-pointer.
        let rc =
            unsafe { net().reg_mr.unwrap()(comm.0, core::ptr::null_mut(), 0, PTR_HOST, &mut mh) };
        assert_eq!(rc, result::SUCCESS);
        mh as usize
    }) as *mut c_void
}

pub fn isend(s: Ptr, buf: &[u8]) -> Result<Ptr, NcclResult> {
    let mut req = core::ptr::null_mut();
    // SAFETY: the buffer outlives the request in every caller.
    let rc = unsafe {
        net().isend.unwrap()(
            s.0,
            buf.as_ptr() as *mut c_void,
            buf.len() as c_int,
            7,
            host_mh(s),
            &mut req,
        )
    };
    if rc != result::SUCCESS {
        return Err(rc);
    }
    assert!(!req.is_null());
    Ok(Ptr(req))
}

pub fn irecv_n(r: Ptr, buf: *mut u8, len: usize, n: c_int) -> Result<Ptr, NcclResult> {
    let mut req = core::ptr::null_mut();
    let mut data = [buf.cast::<c_void>(), buf.cast()];
    let mut sizes = [len as c_int; 2];
    let mut tags = [3 as c_int; 2];
    let mut mh = [host_mh(r); 2];
    // SAFETY: arrays of two entries cover n <= 2; the buffer outlives the request.
    let rc = unsafe {
        net().irecv.unwrap()(
            r.0,
            n,
            data.as_mut_ptr(),
            sizes.as_mut_ptr(),
            tags.as_mut_ptr(),
            mh.as_mut_ptr(),
            &mut req,
        )
    };
    if rc != result::SUCCESS {
        return Err(rc);
    }
    assert!(!req.is_null());
    Ok(Ptr(req))
}

pub fn irecv(r: Ptr, buf: &mut [u8]) -> Result<Ptr, NcclResult> {
    irecv_n(r, buf.as_mut_ptr(), buf.len(), 1)
}

/// What `sizes` holds before `test`; it survives in TCPX mode, whose `test` never writes it.
const SIZE_SENTINEL: c_int = -7;
/// The size [`test_once`] and [`wait`] report when `test` left `sizes` untouched (TCPX mode).
pub const UNTOUCHED: usize = usize::MAX;

/// One `test` call: `Ok(Some(size))` when done, [`UNTOUCHED`] if it did not write the size.
pub fn test_once(req: Ptr) -> Result<Option<usize>, NcclResult> {
    let mut done = 0;
    let mut size = SIZE_SENTINEL;
    // SAFETY: a request of a live comm.
    let rc = unsafe { net().test.unwrap()(req.0, &mut done, &mut size) };
    if rc != result::SUCCESS {
        return Err(rc);
    }
    if done == 0 {
        assert_eq!(
            size, SIZE_SENTINEL,
            "test wrote a size for a request not done"
        );
        return Ok(None);
    }
    Ok(Some(if size == SIZE_SENTINEL {
        UNTOUCHED
    } else {
        size as usize
    }))
}

/// One `src`-sized transfer from `s` to `r` into a buffer with `slack` spare bytes, the sender
/// waited for on another thread: both ends report the size, the payload arrives, and nothing
/// past it is written.
pub fn round_trip(s: Ptr, r: Ptr, src: &[u8], slack: usize) {
    let len = src.len();
    let mut dst = vec![0u8; len + slack];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, src).unwrap();
    let sender = std::thread::spawn(move || wait(sr));
    assert_eq!(wait(rr), Ok(len), "size {len}");
    assert_eq!(sender.join().unwrap(), Ok(len), "send of size {len}");
    assert!(dst[..len] == src[..], "payload differs at size {len}");
    assert!(dst[len..].iter().all(|b| *b == 0), "wrote past size {len}");
}

/// What `test` reports for a request of `len` bytes: the size in host mode, nothing (so
/// [`UNTOUCHED`]) in TCPX mode.
pub fn reported(len: usize) -> usize {
    if tcpx_mode() {
        UNTOUCHED
    } else {
        len
    }
}

/// Tests until done or error, bounded by [`DEADLINE`].
pub fn wait(req: Ptr) -> Result<usize, NcclResult> {
    let t0 = Instant::now();
    loop {
        if let Some(n) = test_once(req)? {
            return Ok(n);
        }
        assert!(t0.elapsed() < DEADLINE, "request did not complete in time");
        // Give the helper threads the core on small machines.
        std::thread::yield_now();
    }
}

pub fn consumed(r: Ptr, req: Ptr) -> NcclResult {
    // SAFETY: a live recv comm and one of its requests.
    unsafe { net().irecv_consumed.unwrap()(r.0, 1, req.0) }
}

pub fn props() -> Properties {
    let mut p = Properties::zeroed();
    assert_eq!(
        // SAFETY: `p` is a v7 `Properties`, the struct this v7 table's `getProperties` fills;
        // device 0 exists (the plugin was initialised on loopback).
        unsafe { net().get_properties.unwrap()(0, &mut p) },
        result::SUCCESS
    );
    p
}

/// Deterministic pattern for a transfer: differs per size and seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Sizes every data test covers.
pub const SIZES: &[usize] = &[0, 1, 4095, 4096, 4097, 1 << 20, 4 << 20];

/// Small deterministic RNG for "random" sizes.
pub fn rand_sizes(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % max as u64) as usize
        })
        .collect()
}

/* ------------------------------- separate-process peer ------------------------------- */

/// Env var naming the role of a re-executed test binary.
pub const PEER_ENV: &str = "TCPXSOCK_TEST_PEER";

/// Sizes the process peer sends in role "send".
pub fn peer_sizes() -> Vec<usize> {
    let mut v = SIZES.to_vec();
    v.extend(rand_sizes(8, 4 << 20, 31));
    v
}

/// Re-executes this test binary as the sending peer (`role` = "send" or "stream"),
/// giving it `handle` on stdin.
pub fn spawn_peer(role: &str, handle: &Handle) -> std::process::Child {
    use std::io::Write;
    let mut c = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peer_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEER_ENV, role)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn peer");
    let hex: String = handle.iter().map(|b| format!("{b:02x}")).collect();
    let mut stdin = c.stdin.take().unwrap();
    writeln!(stdin, "{hex}").unwrap();
    c
}

/// Body of the peer process: connect to the handle on stdin and send.
pub fn peer_main() {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return;
    };
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let mut h = [0u8; HANDLE_MAX_SIZE];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&line[2 * i..2 * i + 2], 16).unwrap();
    }
    let t0 = Instant::now();
    let s = loop {
        if let Some(s) = connect_step(&mut h).unwrap() {
            break s;
        }
        assert!(t0.elapsed() < DEADLINE);
        std::thread::yield_now();
    };
    match role.as_str() {
        "send" => {
            for (i, len) in peer_sizes().into_iter().enumerate() {
                let src = pattern(len, 500 + i as u64);
                assert_eq!(wait(isend(s, &src).unwrap()), Ok(reported(len)));
            }
            close_send(s);
        }
        "stream" => {
            // Sends until killed by the parent (bounded anyway).
            let src = pattern(4 << 20, 1);
            while t0.elapsed() < DEADLINE {
                if wait(isend(s, &src).unwrap()).is_err() {
                    break;
                }
            }
        }
        _ => panic!("unknown role"),
    }
    std::process::exit(0);
}

/// Accepts one comm on `l` within the deadline.
pub fn accept_one(l: Ptr) -> (Ptr, *mut DevHandle) {
    let t0 = Instant::now();
    loop {
        if let Some(x) = accept_step(l).unwrap() {
            return x;
        }
        assert!(t0.elapsed() < DEADLINE, "accept timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}
