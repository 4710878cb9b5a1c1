//! `TCPX_SOCK_TRACE`: a process with it set writes `PREFIX.<pid>` at exit, one
//! `ns tid label key` line per stage a request passed (caller and helper threads, one key per
//! request); without it nothing is recorded or written.

mod common;

use common::*;
use std::collections::HashSet;

const CHILD_ENV: &str = "TCPX_SOCK_TRACE_TEST_CHILD";

fn setup() {
    init(false, false, 0);
}

/// Entry point of the re-executed traced process; a no-op when run as a normal test.
#[test]
#[ignore = "runs only as the traced child of another test"]
fn traced_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    setup();
    let (s, r, _) = pair();
    // Inline (control socket), and larger than a direct request (helper threads).
    for len in [4096, 1 << 20] {
        let src = pattern(len, len as u64);
        let mut dst = vec![0u8; len];
        let rr = irecv(r, &mut dst).unwrap();
        let sr = isend(s, &src).unwrap();
        let sender = std::thread::spawn(move || wait(sr));
        assert!(wait(rr).is_ok());
        assert!(sender.join().unwrap().is_ok());
        if tcpx_mode() {
            assert_eq!(consumed(r, rr), 0);
        }
        assert!(dst == src);
    }
    assert!(tcpx_sock::trace::enabled());
    close_send(s);
    close_recv(r);
}

#[test]
fn a_traced_process_writes_every_stage_at_exit() {
    let dir = std::env::temp_dir().join(format!("tcpxsock-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("t");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "traced_child", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("TCPX_SOCK_TRACE", &prefix)
        .output()
        .expect("run the traced child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one file, PREFIX.<pid>: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut labels = HashSet::new();
    let mut tids_of = std::collections::HashMap::<String, HashSet<u32>>::new();
    let mut keys_of = std::collections::HashMap::<String, HashSet<String>>::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "ns tid label key: {line:?}");
        assert!(f[0].parse::<u64>().unwrap() > 0, "{line}");
        assert!(f[3].starts_with("0x"), "{line}");
        let tid = f[1].parse::<u32>().unwrap();
        tids_of.entry(f[2].to_string()).or_default().insert(tid);
        keys_of
            .entry(f[2].to_string())
            .or_default()
            .insert(f[3].to_string());
        labels.insert(f[2].to_string());
    }
    for want in [
        "sock.isend",
        "sock.irecv",
        "sock.send.ctrl",
        "sock.recv.header",
        "sock.recv.inline",
        "sock.send.dispatch",
        "sock.recv.dispatch",
        "sock.helper.send.job",
        "sock.helper.send.done",
        "sock.helper.recv.job",
        "sock.helper.recv.done",
        "sock.send.done",
        "sock.recv.done",
    ] {
        assert!(labels.contains(want), "{want} missing from {labels:?}");
    }
    // Helper threads are not the callers' threads, and a dispatched request's stages on both
    // carry its key.
    let callers = &tids_of["sock.isend"] | &tids_of["sock.irecv"];
    assert!(tids_of["sock.helper.send.job"].is_disjoint(&callers));
    for (posted, picked) in [
        ("sock.send.dispatch", "sock.helper.send.job"),
        ("sock.recv.dispatch", "sock.helper.recv.job"),
        ("sock.helper.recv.done", "sock.recv.done"),
    ] {
        assert!(
            !keys_of[posted].is_disjoint(&keys_of[picked]),
            "{posted} {:?} / {picked} {:?}",
            keys_of[posted],
            keys_of[picked]
        );
    }
}

#[test]
fn off_without_the_variable() {
    if std::env::var_os("TCPX_SOCK_TRACE").is_some_and(|v| !v.is_empty()) {
        eprintln!("SKIP: TCPX_SOCK_TRACE is set for this run");
        return;
    }
    setup();
    tcpx_sock::trace::mark("test.mark");
    assert!(!tcpx_sock::trace::enabled());
    assert!(tcpx_sock::trace::dump().unwrap().is_none());
}
