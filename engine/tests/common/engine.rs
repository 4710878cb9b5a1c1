//! Engine test support shared by the integration tests here, in `tests/tests`, `nixl/tests`
//! and `cli/tests` (which include this file by path): two sessions over the embedded
//! tcpxsock on loopback, one bounded transfer between them, and the GPU-or-SKIP check.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use tcpx::engine::{Config, Direction, Progress, Rendezvous, Segment, Session};

/// A CUDA context on device 0, or `None` after printing `SKIP` when there is no usable GPU;
/// with `REQUIRE_GPU=1` a missing GPU fails the test instead.
pub fn gpu() -> Option<Arc<CudaContext>> {
    match tcpx_kernels::gpu_available() {
        Ok(()) => Some(CudaContext::new(0).expect("CUDA context")),
        Err(why) => {
            assert!(
                std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
                "REQUIRE_GPU=1 but no GPU: {why}"
            );
            eprintln!("SKIP: {why}");
            None
        }
    }
}

/// Device 1's context when the machine has a second GPU, or `None` after printing `SKIP`;
/// `REQUIRE_GPUS=2` turns that skip into a failure.
pub fn second_gpu() -> Option<Arc<CudaContext>> {
    let n = match tcpx_kernels::gpu_available() {
        Ok(()) => CudaContext::device_count().unwrap(),
        Err(_) => 0,
    };
    if n >= 2 {
        return Some(CudaContext::new(1).expect("CUDA context on device 1"));
    }
    assert!(
        std::env::var("REQUIRE_GPUS").as_deref() != Ok("2"),
        "REQUIRE_GPUS=2 but the machine has {n} GPU(s)"
    );
    gpu()?;
    eprintln!("SKIP: one GPU; this test needs two");
    None
}

/// The calling thread's current CUDA context (null: none).
pub fn current_context() -> cudarc::driver::sys::CUcontext {
    cudarc::driver::result::ctx::get_current()
        .unwrap()
        .unwrap_or(std::ptr::null_mut())
}

/// Leaves the calling thread without a current CUDA context.
pub fn unbind_context() {
    // SAFETY: NULL unbinds; whatever needs a context binds it again.
    unsafe { cudarc::driver::result::ctx::set_current(std::ptr::null_mut()) }.unwrap();
}

/// `sock` with tcpxsock's TCPX-mode settings taken from the environment where set
/// (`TCPX_SOCK_UNPACK`, `TCPX_SOCK_ACCEPT_DELAY_MS`, `TCPX_SOCK_ODD_FRAGMENTS`,
/// `TCPX_SOCK_LINEAR_BYTES`, `TCPX_SOCK_BOUNCE_DEVICE`), so one test binary runs in the
/// default mode and, under that environment, against TCPX's behaviour.
pub fn tcpx_mode_from_env(sock: tcpx_sock::config::Config) -> tcpx_sock::config::Config {
    let env = tcpx_sock::config::Config::from_env();
    let mut out = sock;
    // Each field from the environment only where its variable is set.
    macro_rules! from_env {
        ($($var:literal => $field:ident),*) => {
            $(if std::env::var_os($var).is_some() {
                out.$field = env.$field;
            })*
        };
    }
    from_env!(
        "TCPX_SOCK_UNPACK" => unpack,
        "TCPX_SOCK_ACCEPT_DELAY_MS" => accept_delay_ms,
        "TCPX_SOCK_ODD_FRAGMENTS" => odd_fragments,
        "TCPX_SOCK_LINEAR_BYTES" => linear_bytes,
        "TCPX_SOCK_BOUNCE_DEVICE" => bounce_device
    );
    out
}

/// Two connected sessions with `cfg`, built on two threads, after configuring the embedded
/// tcpxsock with `sock` (its `ifname` forced to `lo`; TCPX-mode settings from the
/// environment win, [`tcpx_mode_from_env`]).
pub fn loopback_pair(sock: tcpx_sock::config::Config, cfg: Config) -> (Session, Session) {
    loopback_pair_with(sock, cfg.clone(), cfg)
}

/// As [`loopback_pair`], each session with its own configuration (the first one accepts).
pub fn loopback_pair_with(
    sock: tcpx_sock::config::Config,
    cfg_a: Config,
    cfg_b: Config,
) -> (Session, Session) {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..tcpx_mode_from_env(sock)
    });
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let net = Session::open_net(&cfg_b).unwrap();
        Session::establish(net, cfg_b, Rendezvous::Connect(addr)).unwrap()
    });
    let net = Session::open_net(&cfg_a).unwrap();
    let a = Session::establish(net, cfg_a, Rendezvous::Accept(&l)).unwrap();
    (a, t.join().unwrap())
}

/// One segment per length over region `mem`, back to back with `gap` untouched bytes after
/// each, at the same offsets on both sides.
pub fn segments(mem: tcpx::MemId, lens: &[u64], gap: u64) -> Vec<Segment> {
    let mut off = 0;
    lens.iter()
        .map(|&len| {
            let s = Segment {
                mem,
                offset: off,
                remote_offset: off,
                len,
            };
            off += len + gap;
            s
        })
        .collect()
}

/// Posts `send` on `a` and the mirror `recv` on `b`, polls both until done, releases both;
/// false if that takes longer than `timeout`. Allocates nothing itself.
pub fn transfer(
    a: &mut Session,
    b: &mut Session,
    send: &[Segment],
    recv: &[Segment],
    timeout: Duration,
) -> bool {
    let ax = a.post(Direction::Send, send).unwrap();
    let bx = b.post(Direction::Recv, recv).unwrap();
    let deadline = Instant::now() + timeout;
    let (mut ad, mut bd) = (false, false);
    while !(ad && bd) {
        if Instant::now() > deadline {
            return false;
        }
        ad = ad || matches!(a.poll(ax).unwrap(), Progress::Done { .. });
        bd = bd || matches!(b.poll(bx).unwrap(), Progress::Done { .. });
    }
    a.release(ax).unwrap();
    b.release(bx).unwrap();
    true
}
