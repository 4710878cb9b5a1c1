//! A session spread over two NICs whose second NIC fails: the session's transfers fail with an
//! error naming the channel and the device, and a session on the other NIC keeps working. The
//! fake plugin (`plugins/fake_net.c`, `FAIL_DEV=1`) fails every send on device 1.

use std::time::Duration;

use tcpx::engine::{Config, Devices, Direction, Memory, Segment, Session};
use tcpx::Error;

mod common;

/// Two sessions of `cfg` connected in this process (handshakes on two threads).
fn pair(cfg: &Config) -> (Session, Session) {
    let open = || Session::listen(Session::open_net(cfg).unwrap(), cfg.clone()).unwrap();
    let (la, lb) = (open(), open());
    let (ia, ib) = (la.conn_info().to_vec(), lb.conn_info().to_vec());
    let t = std::thread::spawn(move || lb.connect(&ia).unwrap());
    let a = la.connect(&ib).unwrap();
    (a, t.join().unwrap())
}

#[test]
fn a_failed_nic_fails_its_session_by_name_and_spares_the_others() {
    let plugin = common::build("nic_fail", &["EXPORT_V7", "FAIL_DEV=1"]);
    let cfg = |devices: &str| Config {
        plugin: Some(plugin.clone()),
        channels: 2,
        chunk_bytes: 4096,
        devices: Devices::parse(devices).unwrap(),
        timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let mut buf = vec![7u8; 8192];
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: 8192,
    };

    // Channels 0 and 1 on devices 0 and 1: the chunk on device 1 fails.
    let (mut a, _b) = pair(&cfg("0,1"));
    assert_eq!(a.channel_devices(), &[0, 1]);
    // SAFETY: `buf` outlives the sessions' use of it.
    let m = unsafe { a.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host) }.unwrap();
    let x = a.post(Direction::Send, &[seg(m)]).unwrap();
    let err = a.wait(x, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(err, Error::Plugin { .. }), "{err}");
    let why = a.broken().expect("the session is broken").to_string();
    assert!(why.contains("channel 1, device 1 fake1"), "{why}");
    match a.post(Direction::Send, &[seg(m)]) {
        Err(Error::Broken(w)) => assert!(w.contains("device 1 fake1"), "{w}"),
        other => panic!("a broken session refuses new transfers, got {other:?}"),
    }

    // A session on device 0 alone moves data.
    let (mut c, mut d) = pair(&cfg("0"));
    assert_eq!(c.channel_devices(), &[0, 0]);
    let mut dst = vec![0u8; 8192];
    // SAFETY: both buffers outlive the sessions' use of them.
    let (mc, md) = unsafe {
        (
            c.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host)
                .unwrap(),
            d.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
                .unwrap(),
        )
    };
    assert!(common::engine::transfer(
        &mut c,
        &mut d,
        &[seg(mc)],
        &[seg(md)],
        Duration::from_secs(10)
    ));
    assert!(c.broken().is_none() && d.broken().is_none());
}
