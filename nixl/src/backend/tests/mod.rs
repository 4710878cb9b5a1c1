//! Tests of one agent: creation, registrations, copies to ourselves, metadata of peers.

use super::*;
use crate::error::Status;
use crate::registry::MdId;
use crate::xfer::{Desc, Op};

mod peers;

fn backend(name: &str) -> Backend {
    Backend::new(name, [("listen_addr", "127.0.0.1:0")]).unwrap()
}

fn d(addr: u64, len: u64, md: MdId) -> Desc {
    Desc {
        addr,
        len,
        dev_id: 0,
        md,
    }
}

fn args<'a>(op: Op, l: &'a [Desc], r: &'a [Desc], agent: &'a str) -> XferArgs<'a> {
    XferArgs {
        op,
        local: l,
        local_mem: MEM_DRAM,
        remote: r,
        remote_mem: MEM_DRAM,
        agent,
        notif: None,
    }
}

#[test]
fn creation_validates_name_and_params() {
    assert!(Backend::new("", []).is_err());
    assert!(Backend::new(&"x".repeat(MAX_NAME + 1), []).is_err());
    let e = Backend::new("a", [("window", "0")]).unwrap_err();
    assert_eq!(e.status(), Status::InvalidParam);
}

#[test]
fn conn_info_names_a_reachable_listener() {
    let b = backend("a");
    let (peer, name) = blob::decode_conn_info(b.conn_info()).unwrap();
    assert_eq!(name, "a");
    assert_eq!(peer.addr, b.control().advertised());
    assert_eq!(peer.channels, 2);
    std::net::TcpStream::connect(peer.addr).unwrap();
}

#[test]
fn self_write_read_and_notif() {
    let b = backend("a");
    let mut src = vec![0u8; 4096];
    let mut dst = vec![0u8; 4096];
    src.iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = (i % 251) as u8);
    let s = src.as_mut_ptr() as u64;
    let t = dst.as_mut_ptr() as u64;
    let ms = b.register_mem(&d(s, 4096, 0), MEM_DRAM).unwrap();
    let mt = b.register_mem(&d(t, 4096, 0), MEM_DRAM).unwrap();
    let at = b.load_local_md(mt).unwrap();
    b.connect("a").unwrap();

    let (l, r) = ([d(s, 4096, ms)], [d(t, 4096, at)]);
    let mut a = args(Op::Write, &l, &r, "a");
    a.notif = Some(b"done");
    let mut h = b.prep_xfer(&a).unwrap();
    assert_eq!(b.check_xfer(h).unwrap_err().status(), Status::NotPosted);
    assert_eq!(b.post_xfer(&a, &mut h).unwrap(), Status::Success);
    assert_eq!(b.check_xfer(h).unwrap(), Status::Success);
    b.release_req(h).unwrap();
    assert_eq!(dst, src);
    let mut got = Vec::new();
    b.take_notifs(|from, m| {
        got.push((from.to_owned(), m.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(got, [("a".to_owned(), b"done".to_vec())]);

    dst[100..200].fill(7);
    let (l, r) = ([d(s + 100, 100, ms)], [d(t + 100, 100, at)]);
    let mut h = 0;
    assert_eq!(
        b.post_xfer(&args(Op::Read, &l, &r, "a"), &mut h).unwrap(),
        Status::Success
    );
    assert_eq!(&src[100..200], &[7u8; 100][..]);
    b.release_req(h).unwrap();
    assert_eq!(b.live_requests(), 0);

    b.deregister_mem(ms).unwrap();
    b.deregister_mem(mt).unwrap();
    b.unload_md(at).unwrap();
    assert_eq!(b.live_metadata(), 0);
}

#[test]
fn bad_transfers_are_rejected_before_anything_moves() {
    let b = backend("a");
    let mut buf = vec![1u8; 256];
    let p = buf.as_mut_ptr() as u64;
    let m = b.register_mem(&d(p, 256, 0), MEM_DRAM).unwrap();
    let al = b.load_local_md(m).unwrap();
    let st = |r: Result<ReqId, Error>| r.unwrap_err().status();
    let (l, r) = ([d(p, 128, m)], [d(p + 128, 129, al)]);
    assert_eq!(
        st(b.prep_xfer(&args(Op::Write, &l, &r, "a"))),
        Status::InvalidParam
    );
    let (l, r) = ([d(p, 128, m)], [d(p + 200, 128, al)]);
    assert_eq!(
        st(b.prep_xfer(&args(Op::Write, &l, &r, "a"))),
        Status::InvalidParam
    );
    let (l, r) = ([d(p, 128, m)], [d(p + 128, 128, al)]);
    assert_eq!(
        st(b.prep_xfer(&args(Op::Write, &l, &r, "nobody"))),
        Status::NotFound
    );
    let mut vram = args(Op::Write, &l, &r, "a");
    vram.remote_mem = MEM_VRAM;
    assert_eq!(st(b.prep_xfer(&vram)), Status::NotSupported);
    assert_eq!(
        b.check_xfer(12345).unwrap_err().status(),
        Status::InvalidParam
    );
    assert_eq!(
        b.release_req(12345).unwrap_err().status(),
        Status::InvalidParam
    );
    assert!(buf.iter().all(|&x| x == 1));
    assert_eq!(b.live_requests(), 0);
    buf[0] = 2; // keep `buf` alive and mutable past the registrations
}

#[test]
fn peers_load_metadata_and_prepare_remote_transfers() {
    let a = backend("a");
    let b = backend("b");
    let mut buf = vec![0u8; 64];
    let p = buf.as_mut_ptr() as u64;
    let mb = b.register_mem(&d(p, 64, 0), MEM_DRAM).unwrap();
    let ma = a.register_mem(&d(p, 64, 0), MEM_DRAM).unwrap();
    let token = b.public_data(mb).unwrap();

    assert_eq!(
        a.load_remote_md(&d(p, 64, 0), &token, MEM_DRAM, "b")
            .unwrap_err()
            .status(),
        Status::NotFound
    );
    assert_eq!(a.connect("b").unwrap_err().status(), Status::NotFound);
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    assert_eq!(
        a.load_remote_conn_info("c", b.conn_info())
            .unwrap_err()
            .status(),
        Status::Mismatch
    );
    a.connect("b").unwrap();
    assert!(a.is_connected("b"));
    assert_eq!(
        a.load_remote_md(&d(p, 65, 0), &token, MEM_DRAM, "b")
            .unwrap_err()
            .status(),
        Status::Mismatch
    );
    assert_eq!(
        a.load_remote_md(&d(p, 64, 0), b"junk", MEM_DRAM, "b")
            .unwrap_err()
            .status(),
        Status::InvalidParam
    );
    let rb = a
        .load_remote_md(&d(p, 64, 0), &token, MEM_DRAM, "b")
        .unwrap();

    let (l, r) = ([d(p, 64, ma)], [d(p, 64, rb)]);
    let h = a.prep_xfer(&args(Op::Write, &l, &r, "b")).unwrap();
    assert_eq!(a.check_xfer(h).unwrap_err().status(), Status::NotPosted);
    a.release_req(h).unwrap();
    let (l, r) = ([d(p, 64, ma)], [d(p + 1, 64, rb)]);
    let e = a.prep_xfer(&args(Op::Write, &l, &r, "b")).unwrap_err();
    assert_eq!(e.status(), Status::InvalidParam, "range is checked first");

    a.unload_md(rb).unwrap();
    a.disconnect("b").unwrap();
    assert_eq!(a.disconnect("b").unwrap_err().status(), Status::NotFound);
    buf[0] = 1;
}

#[test]
fn concurrent_self_transfers_each_land_whole() {
    let b = backend("a");
    const N: usize = 4;
    const LEN: usize = 64 * 1024;
    let mut src = vec![0u8; N * LEN];
    let mut dst = vec![0u8; N * LEN];
    for (i, x) in src.iter_mut().enumerate() {
        *x = (i / LEN + 1) as u8;
    }
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = b
        .register_mem(&d(s, (N * LEN) as u64, 0), MEM_DRAM)
        .unwrap();
    let mt = b
        .register_mem(&d(t, (N * LEN) as u64, 0), MEM_DRAM)
        .unwrap();
    let at = b.load_local_md(mt).unwrap();
    std::thread::scope(|scope| {
        for i in 0..N {
            let b = &b;
            scope.spawn(move || {
                let off = (i * LEN) as u64;
                let l = [d(s + off, LEN as u64, ms)];
                let r = [d(t + off, LEN as u64, at)];
                let a = args(Op::Write, &l, &r, "a");
                let mut h = b.prep_xfer(&a).unwrap();
                for _ in 0..20 {
                    assert_eq!(b.post_xfer(&a, &mut h).unwrap(), Status::Success);
                }
                b.release_req(h).unwrap();
            });
        }
    });
    assert_eq!(dst, src);
    assert_eq!(b.live_requests(), 0);
}

#[test]
fn the_agents_gpu_is_known_at_creation_and_must_exist() {
    let gpus = if vram_supported() {
        cudarc::driver::CudaContext::device_count().unwrap() as u32
    } else {
        0
    };
    let b = backend("a");
    // The default: the device current on this thread (device 0 with a driver), none
    // without one.
    assert_eq!(b.config().gpu.is_some(), gpus > 0);
    assert!(b.config().gpu.is_none_or(|g| g < gpus));
    // A GPU the machine does not have fails creation, naming the parameter.
    let n = gpus.to_string();
    let e = Backend::new("a", [("listen_addr", "127.0.0.1:0"), ("gpu", n.as_str())]).unwrap_err();
    assert!(
        matches!(&e, Error::Config { key, .. } if key == "gpu"),
        "gpu={gpus}: {e}"
    );
    // The effective GPU is reported (empty without one) and parses back.
    let params = b.config().to_params(b.control().advertised());
    let (_, g) = params.iter().find(|(k, _)| *k == "gpu").unwrap();
    assert_eq!(
        *g,
        b.config().gpu.map(|g| g.to_string()).unwrap_or_default()
    );
}

#[test]
fn registrations_of_no_bytes_and_of_any_size_up_to_the_limit() {
    let b = backend("a");
    if !vram_supported() {
        let e = b.register_mem(&d(0x1000, 16, 0), MEM_VRAM).unwrap_err();
        assert_eq!(e.status(), Status::NotSupported);
    }
    // No bytes: accepted (as UCX does), with a token; at address 0 too.
    let z = b.register_mem(&d(0x1000, 0, 0), MEM_DRAM).unwrap();
    assert_eq!(
        blob::decode_token(&b.public_data(z).unwrap()).unwrap().len,
        0
    );
    let z0 = b.register_mem(&d(0, 0, 0), MEM_DRAM).unwrap();
    b.deregister_mem(z).unwrap();
    b.deregister_mem(z0).unwrap();
    // Past the limit: refused, naming it; nothing recorded.
    let e = b
        .register_mem(&d(0x1000, MAX_REGION_BYTES + 1, 0), MEM_DRAM)
        .unwrap_err();
    assert_eq!(e.status(), Status::InvalidParam);
    assert!(e.to_string().contains("2^48"), "{e}");
    assert_eq!(b.live_metadata(), 0);
}
