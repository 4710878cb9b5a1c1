//! tcpxsock's `TCPX_SOCK_UNPACK=1` test mode lands host receives in bounce pages, which the
//! engine never copies out (TCPX receives host buffers in place). The engine refuses such
//! receives with a clear error instead of completing them with the buffer untouched. Its own
//! process: the plugin configuration is process-wide.

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use tcpx::engine::{Config, Direction, Memory, Progress, Rendezvous, Segment, Session};
use tcpx::Error;

fn pair(cfg: Config) -> (Session, Session) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let c2 = cfg.clone();
    let t = thread::spawn(move || {
        let net = Session::open_net(&c2).unwrap();
        Session::establish(net, c2, Rendezvous::Connect(addr)).unwrap()
    });
    let net = Session::open_net(&cfg).unwrap();
    let a = Session::establish(net, cfg, Rendezvous::Accept(&l)).unwrap();
    (a, t.join().unwrap())
}

#[test]
fn host_receives_are_refused_when_tcpxsock_bounces_them() {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        unpack: true,
        ..Default::default()
    });
    let cfg = Config {
        channels: 1,
        timeout: Duration::from_secs(20),
        ..Config::default()
    };
    let (mut a, mut b) = pair(cfg);
    let mut src = vec![7u8; 8192];
    let mut dst = vec![0u8; 8192];
    // SAFETY: both buffers outlive their registrations (the sessions drop first).
    let (ms, md) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), src.len(), Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
                .unwrap(),
        )
    };
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: 8192,
    };
    let e = b.post(Direction::Recv, &[seg(md)]);
    match e {
        Err(Error::Unsupported(why)) => assert!(why.contains("TCPX_SOCK_UNPACK"), "{why}"),
        other => panic!("a host receive into bounce pages must be refused, got {other:?}"),
    }
    assert!(
        b.broken().is_none(),
        "a refused post must not break the session"
    );
    // A send from host memory is still accepted; the refused post left nothing queued, so
    // an empty receive completes at once.
    let x = a.post(Direction::Send, &[seg(ms)]).unwrap();
    a.release(x).unwrap();
    let y = b.post(Direction::Recv, &[]).unwrap();
    assert_eq!(b.poll(y).unwrap(), Progress::Done { bytes: 0 });
    assert!(dst.iter().all(|&v| v == 0));
    drop(a);
    drop(b);
    drop(src);
}
