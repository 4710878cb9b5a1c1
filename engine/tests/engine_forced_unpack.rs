//! Host receives on an UNPACK plugin. TCPX receives host buffers in place and publishes no
//! fragments for them (`cnt = 0`); tcpxsock's TCPX mode does the same, and the engine receives
//! into host memory as usual. tcpxsock's `TCPX_SOCK_HOST_BOUNCE=1` test knob instead lands
//! host receives in bounce pages, which nothing copies out: the engine recognises that by what
//! the plugin publishes (never by its name) and fails the transfer with a protocol error
//! rather than completing it with the buffer untouched. Its own process: the plugin
//! configuration is process-wide.

use std::time::{Duration, Instant};

use tcpx::engine::{Config, Direction, Memory, Progress, Segment, Session};
use tcpx::Error;

mod common;

const LEN: u64 = 300_000;

fn cfg() -> Config {
    Config {
        channels: 1,
        max_transfers: 2,
        timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

fn seg(mem: tcpx::MemId) -> Segment {
    Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: LEN,
    }
}

/// Registers `src` on `a` and `dst` on `b`, posts one host transfer a → b, and polls both
/// until the receive finishes or fails (bounded).
fn run(a: &mut Session, b: &mut Session, src: &mut [u8], dst: &mut [u8]) -> Result<(), Error> {
    // SAFETY: the buffers outlive the registrations (the sessions drop first).
    let (ma, mb) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), src.len(), Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
                .unwrap(),
        )
    };
    let ax = a.post(Direction::Send, &[seg(ma)]).unwrap();
    let bx = b.post(Direction::Recv, &[seg(mb)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the receive neither finished nor failed"
        );
        let _ = a.poll(ax);
        if let Progress::Done { .. } = b.poll(bx)? {
            return Ok(());
        }
    }
}

#[test]
fn host_receives_work_in_tcpx_mode_and_bounced_ones_fail_by_name() {
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + 3) as u8).collect();

    // TCPX mode: host receives land in place (`cnt = 0`).
    let sock = tcpx_sock::config::Config {
        unpack: true,
        ..Default::default()
    };
    let (mut a, mut b) = common::engine::loopback_pair(sock, cfg());
    let (mut src, mut dst) = (pattern.clone(), vec![0u8; LEN as usize]);
    run(&mut a, &mut b, &mut src, &mut dst).unwrap();
    assert!(dst == pattern, "the host receive's bytes differ");
    drop((a, b));

    // The host-bounce test knob: fragments published for a host receive are a protocol error
    // that names the cause; the buffer was never written.
    let sock = tcpx_sock::config::Config {
        host_bounce: true,
        ..Default::default()
    };
    let (mut a, mut b) = common::engine::loopback_pair(sock, cfg());
    let (mut src, mut dst) = (pattern.clone(), vec![0u8; LEN as usize]);
    match run(&mut a, &mut b, &mut src, &mut dst) {
        Err(e @ (Error::Protocol(_) | Error::Broken(_))) => {
            let why = e.to_string();
            assert!(why.contains("host-memory receive"), "{why}");
            assert!(why.contains("TCPX_SOCK_HOST_BOUNCE"), "{why}");
        }
        other => panic!("a bounced host receive must fail by name, got {other:?}"),
    }
    assert!(
        b.broken().is_some(),
        "the session stops after a protocol error"
    );
    assert!(dst.iter().all(|&v| v == 0), "the buffer was written");
    drop((a, b));
}
