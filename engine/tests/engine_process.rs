//! The engine between two processes over loopback: a checksum-verified batch, and a peer
//! killed mid-transfer that must surface as an error, not a hang.
//!
//! The peer is this test binary re-executed with `TCPX_TEST_PEER` set; it runs only the
//! `peer_entry` test, which does nothing in a normal run.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tcpx::engine::{Config, Direction, Memory, Progress, Rendezvous, Segment, Session};

const ROLE: &str = "TCPX_TEST_PEER";
const ADDR: &str = "TCPX_TEST_ADDR";

fn cfg() -> Config {
    Config {
        channels: 2,
        timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

fn loopback_only() {
    // The environment's TCPX_SOCK_* settings apply (CI runs this in tcpxsock's TCPX mode too).
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..tcpx_sock::config::Config::from_env()
    });
}

fn lens() -> Vec<u64> {
    vec![3, 4096, 524_288, 524_289, 1 << 20, 12_345, 0, 7 << 20]
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn segments(mem: tcpx::MemId) -> Vec<Segment> {
    let mut off = 0;
    lens()
        .into_iter()
        .map(|len| {
            let s = Segment {
                mem,
                offset: off,
                remote_offset: off,
                len,
            };
            off += len;
            s
        })
        .collect()
}

fn spawn_peer(role: &str, addr: std::net::SocketAddr) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peer_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(ADDR, addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The re-executed peer. Prints `SUM <checksum>` (recv role) or `READY` (idle role).
#[test]
fn peer_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    loopback_only();
    let addr = std::env::var(ADDR).unwrap().parse().unwrap();
    let net = Session::open_net(&cfg()).unwrap();
    let mut s = Session::establish(net, cfg(), Rendezvous::Connect(addr)).unwrap();
    let total: u64 = lens().iter().sum();
    let mut buf = vec![0u8; total as usize];
    // SAFETY: buf outlives the session's use of it.
    let m = unsafe {
        s.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host)
            .unwrap()
    };
    match role.as_str() {
        "recv" => {
            let x = s.post(Direction::Recv, &segments(m)).unwrap();
            s.wait(x, Duration::from_secs(30)).unwrap();
            println!("SUM {:016x}", fnv(&buf));
        }
        "both" => {
            // Receive into `buf` while sending `out` back, both in flight at once.
            let mut out: Vec<u8> = (0..total).map(|i| (i % 241) as u8 ^ 0x5a).collect();
            // SAFETY: out outlives the session's use of it.
            let o =
                unsafe { s.register(out.as_mut_ptr().cast(), out.len(), Memory::Host) }.unwrap();
            let rx = s.post(Direction::Recv, &segments(m)).unwrap();
            let tx = s.post(Direction::Send, &segments(o)).unwrap();
            s.wait(rx, Duration::from_secs(30)).unwrap();
            s.wait(tx, Duration::from_secs(30)).unwrap();
            println!("SUM {:016x}", fnv(&buf));
        }
        _ => {
            println!("READY");
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

fn read_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    let mut r = BufReader::new(out);
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            return String::new();
        }
        // libtest prints "test peer_entry ... " without a newline before our output.
        if let Some(i) = line.find("SUM ").or_else(|| line.find("READY")) {
            return line[i..].trim().to_string();
        }
    }
}

#[test]
fn two_processes_checksum() {
    loopback_only();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = spawn_peer("recv", l.local_addr().unwrap());
    let net = Session::open_net(&cfg()).unwrap();
    let mut s = Session::establish(net, cfg(), Rendezvous::Accept(&l)).unwrap();
    let total: u64 = lens().iter().sum();
    let mut buf: Vec<u8> = (0..total)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect();
    // SAFETY: buf outlives the session's use of it.
    let m = unsafe {
        s.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host)
            .unwrap()
    };
    let x = s.post(Direction::Send, &segments(m)).unwrap();
    assert_eq!(s.wait(x, Duration::from_secs(30)).unwrap(), total);
    let line = read_line(&mut child);
    assert_eq!(
        line,
        format!("SUM {:016x}", fnv(&buf)),
        "receiver's checksum"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn killed_peer_is_an_error_not_a_hang() {
    loopback_only();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = spawn_peer("idle", l.local_addr().unwrap());
    let net = Session::open_net(&cfg()).unwrap();
    let mut s = Session::establish(net, cfg(), Rendezvous::Accept(&l)).unwrap();
    assert_eq!(read_line(&mut child), "READY");
    let n = 64 << 20;
    let mut buf = vec![1u8; n];
    // SAFETY: buf outlives the session's use of it.
    let m = unsafe {
        s.register(buf.as_mut_ptr().cast(), n, Memory::Host)
            .unwrap()
    };
    let seg = [Segment {
        mem: m,
        offset: 0,
        remote_offset: 0,
        len: n as u64,
    }];
    let x = s.post(Direction::Send, &seg).unwrap();
    s.progress().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match s.poll(x) {
            Err(e) => break e,
            Ok(Progress::Done { .. }) => {
                panic!("64 MiB cannot complete to a peer that never received")
            }
            Ok(Progress::Pending { .. }) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no error 30 s after the peer died"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        s.broken().is_some(),
        "session must report itself broken: {err}"
    );
    assert!(
        s.post(Direction::Send, &seg).is_err(),
        "a broken session refuses work"
    );
}

#[test]
fn two_processes_both_directions_at_once() {
    loopback_only();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = spawn_peer("both", l.local_addr().unwrap());
    let net = Session::open_net(&cfg()).unwrap();
    let mut s = Session::establish(net, cfg(), Rendezvous::Accept(&l)).unwrap();
    let total: u64 = lens().iter().sum();
    let mut out: Vec<u8> = (0..total)
        .map(|i| (i % 253) as u8 ^ (i >> 9) as u8)
        .collect();
    let mut back = vec![0u8; total as usize];
    // SAFETY: both buffers outlive the session's use of them.
    let (o, b) = unsafe {
        (
            s.register(out.as_mut_ptr().cast(), out.len(), Memory::Host)
                .unwrap(),
            s.register(back.as_mut_ptr().cast(), back.len(), Memory::Host)
                .unwrap(),
        )
    };
    let tx = s.post(Direction::Send, &segments(o)).unwrap();
    let rx = s.post(Direction::Recv, &segments(b)).unwrap();
    s.wait(tx, Duration::from_secs(30)).unwrap();
    s.wait(rx, Duration::from_secs(30)).unwrap();
    let expect: Vec<u8> = (0..total).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    assert_eq!(fnv(&back), fnv(&expect), "peer -> us corrupted");
    assert_eq!(
        read_line(&mut child),
        format!("SUM {:016x}", fnv(&out)),
        "us -> peer"
    );
    assert!(child.wait().unwrap().success());
}
