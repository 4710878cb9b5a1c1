//! The loader against fake plugins compiled at test time: version probing, each failure
//! mode's exact error, the logger bridge, and the RAII data path through `tcpx::net`.

mod common;

use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use tcpx::log::{self, Level, Record};
use tcpx::net::{AbiVersion, Comm, DeviceType, MemKind, Net, RecvBuf};
use tcpx::Error;

/// Every log line of this test process (the hook is global, so it is installed once).
fn log_lines() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&lines);
        log::set_max_level(Level::Trace);
        log::set_hook(Some(Arc::new(move |r: &Record<'_>| {
            sink.lock()
                .unwrap()
                .push(format!("{} [{}] {}", r.level.as_str(), r.target, r.message));
        })));
        lines
    })
}

#[test]
fn v7_only_plugin_loads_as_v7() {
    let path = common::build("v7only", &["EXPORT_V7"]);
    let net = Net::load(&path).unwrap();
    assert_eq!(net.abi(), AbiVersion::V7);
    assert_eq!(net.name(), "FakeV7");
    net.init().unwrap();
    assert_eq!(net.devices().unwrap(), 2);
    let d0 = net.properties(0).unwrap();
    assert_eq!(d0.name, "fake0");
    assert_eq!(
        d0.pci_path.as_deref(),
        Some("/sys/devices/pci0000:00/0000:00:04.0")
    );
    assert_eq!(d0.guid, 0xfa4e_0000);
    assert_eq!(d0.speed_mbps, 100_000);
    assert_eq!(d0.ptr_support.to_string(), "HOST|CUDA");
    assert_eq!((d0.max_comms, d0.max_recvs), (1024, 1));
    assert_eq!(d0.device_type, DeviceType::Host);
    assert!(!d0.reg_is_global && d0.vdevs.is_empty() && d0.max_p2p_bytes.is_none());
    assert_eq!(net.properties(1).unwrap().pci_path, None);
    let e = net.properties(5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Plugin {
                func: "getProperties",
                code: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn v10_only_plugin_loads_as_v10() {
    let path = common::build("v10only", &["EXPORT_V10"]);
    let net = Net::load(&path).unwrap();
    assert_eq!(net.abi(), AbiVersion::V10);
    assert_eq!(net.name(), "FakeV10");
    net.init().unwrap();
    let d1 = net.properties(1).unwrap();
    assert_eq!(d1.name, "fake1");
    assert_eq!(d1.ptr_support.to_string(), "HOST|CUDA|DMABUF");
    assert!(d1.reg_is_global && !d1.force_flush);
    assert_eq!(d1.vdevs, vec![1]);
    assert_eq!(d1.max_p2p_bytes, Some(1 << 31));
    assert_eq!(d1.max_coll_bytes, Some(1 << 30));
    assert_eq!(
        (d1.speed_mbps, d1.max_recvs, d1.latency_us),
        (400_000, 8, 2.0)
    );
}

#[test]
fn newest_table_wins_and_a_version_can_be_forced() {
    let path = common::build("v7v10", &["EXPORT_V7", "EXPORT_V10"]);
    assert_eq!(Net::load(&path).unwrap().abi(), AbiVersion::V10);
    let v7 = Net::load_with(&path, Some(AbiVersion::V7)).unwrap();
    assert_eq!((v7.abi(), v7.name()), (AbiVersion::V7, "FakeV7"));
    match Net::load_with(&path, Some(AbiVersion::V9)).unwrap_err() {
        Error::NoSymbol { tried, .. } => assert_eq!(tried, ["ncclNetPlugin_v9"]),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn no_symbol_lists_every_name_tried() {
    let path = common::build("nosym", &[]);
    let e = Net::load(&path).unwrap_err();
    match &e {
        Error::NoSymbol { tried, path: p } => {
            assert_eq!(
                tried,
                &[
                    "ncclNetPlugin_v10",
                    "ncclNetPlugin_v9",
                    "ncclNetPlugin_v8",
                    "ncclNetPlugin_v7"
                ]
            );
            assert_eq!(p, &path);
        }
        e => panic!("unexpected {e}"),
    }
    assert!(e.to_string().contains(
        "exports none of the symbols tried (ncclNetPlugin_v10, ncclNetPlugin_v9, \
         ncclNetPlugin_v8, ncclNetPlugin_v7)"
    ));
}

#[test]
fn failing_init_names_plugin_function_and_code_and_its_log_arrives() {
    let lines = log_lines();
    let path = common::build("initfail", &["EXPORT_V7", "FAIL_INIT"]);
    let net = Net::load(&path).unwrap();
    let e = net.init().unwrap_err();
    assert!(
        matches!(&e, Error::Plugin { func: "init", code: 2, plugin } if &**plugin == "FakeV7"),
        "{e}"
    );
    assert_eq!(e.nccl_code(), Some(2));
    assert_eq!(
        e.to_string(),
        "ncclNet plugin FakeV7: init failed with ncclSystemError (2)"
    );
    // The result is remembered: init is not run twice.
    assert!(matches!(
        net.init(),
        Err(Error::Plugin { func: "init", .. })
    ));
    let got = lines.lock().unwrap().clone();
    assert!(
        got.contains(&"WARN [nccl:INIT|NET] fake init refuses (errno 19)".to_string()),
        "{got:?}"
    );
}

#[test]
fn logger_shim_formats_printf_arguments() {
    let lines = log_lines();
    let path = common::build("logger", &["EXPORT_V10"]);
    Net::load(&path).unwrap().init().unwrap();
    let got = lines.lock().unwrap().clone();
    assert!(
        got.contains(&"INFO [nccl:NET] fake init: 2 devices, tag=hello, ratio=0.50".to_string()),
        "{got:?}"
    );
}

#[test]
fn zero_devices_is_an_error() {
    let path = common::build("zerodev", &["EXPORT_V7", "NDEVS=0"]);
    let net = Net::load(&path).unwrap();
    net.init().unwrap();
    let e = net.devices().unwrap_err();
    assert!(
        matches!(&e, Error::NoDevices { plugin } if &**plugin == "FakeV7"),
        "{e}"
    );
    assert_eq!(e.to_string(), "ncclNet plugin FakeV7: reports zero devices");
}

#[test]
fn a_file_that_is_not_a_shared_object_is_rejected() {
    let path = common::tmp_dir().join("not-a-plugin.so");
    std::fs::write(&path, "this is text, not ELF\n").unwrap();
    match Net::load(&path).unwrap_err() {
        Error::NotSharedObject { path: p, reason } => {
            assert_eq!(p, path);
            assert!(!reason.is_empty());
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn a_missing_file_is_reported_as_such() {
    let path = common::tmp_dir().join("no-such-plugin.so");
    let e = Net::load(&path).unwrap_err();
    assert!(
        matches!(&e, Error::PluginNotFound { path: p } if *p == path),
        "{e}"
    );
    assert!(e.to_string().ends_with("no-such-plugin.so: file not found"));
}

#[test]
fn unknown_offload_versions_are_rejected_and_unpack_7_is_accepted() {
    let bad = common::build(
        "unpack6",
        &["EXPORT_V7", "OFFLOAD_TYPE=1", "OFFLOAD_VERSION=6"],
    );
    let net = Net::load(&bad).unwrap();
    net.init().unwrap();
    let e = net.properties(0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownDeviceOffload {
                dev: 0,
                device_type: 1,
                version: 6,
                ..
            }
        ),
        "{e}"
    );
    let odd = common::build("type9", &["EXPORT_V10", "OFFLOAD_TYPE=9"]);
    let net = Net::load(&odd).unwrap();
    assert!(matches!(
        net.properties(1).unwrap_err(),
        Error::UnknownDeviceOffload {
            dev: 1,
            device_type: 9,
            version: 0,
            ..
        }
    ));
    let good = common::build(
        "unpack7",
        &["EXPORT_V7", "OFFLOAD_TYPE=1", "OFFLOAD_VERSION=7"],
    );
    let p = Net::load(&good).unwrap().properties(0).unwrap();
    assert_eq!((p.device_type, p.device_version), (DeviceType::Unpack, 7));
}

/// Connects a send comm to a recv comm of `net`, retrying the non-blocking calls.
fn pair(
    net: &Net,
) -> (
    tcpx::net::ListenComm,
    tcpx::net::SendComm,
    tcpx::net::RecvComm,
) {
    let mut listen = net.listen(0).unwrap();
    let mut handle = *listen.handle();
    assert!(handle.as_bytes().starts_with(b"fake-handle dev=0"));
    // The fake needs two calls each: the first must come back as "not yet".
    assert!(net.connect(0, &mut handle).unwrap().is_none());
    let send = net.connect(0, &mut handle).unwrap().expect("connected");
    assert!(net.accept(&mut listen).unwrap().is_none());
    let recv = net.accept(&mut listen).unwrap().expect("accepted");
    (listen, send, recv)
}

fn data_path(name: &str, defines: &[&str]) {
    let path = common::build(name, defines);
    let net = Net::load(&path).unwrap();
    net.init().unwrap();
    let (listen, send, recv) = pair(&net);
    let mut src = *b"hello over a fake wire";
    let mut dst = [0u8; 64];
    let sp = src.as_mut_ptr().cast::<c_void>();
    let dp = dst.as_mut_ptr().cast::<c_void>();
    // SAFETY: both buffers outlive their registrations and requests in this function.
    let (smr, rmr) = unsafe {
        (
            net.reg_mr(&send, sp, src.len(), MemKind::Host).unwrap(),
            net.reg_mr(&recv, dp, dst.len(), MemKind::Host).unwrap(),
        )
    };
    // A registration is tied to its comm.
    // SAFETY: as above; the call is rejected before reaching the plugin.
    let wrong = unsafe { net.isend(&send, sp, src.len(), 0, &rmr) };
    assert!(matches!(wrong, Err(Error::Invalid(_))));
    // SAFETY: as above.
    let busy = unsafe { net.isend(&send, sp, src.len(), 0, &smr) }.unwrap();
    assert!(busy.is_none(), "the fake is busy on the first isend");
    // SAFETY: as above.
    let mut sreq = unsafe { net.isend(&send, sp, src.len(), 7, &smr) }
        .unwrap()
        .expect("request");
    let bufs = [RecvBuf {
        data: dp,
        size: dst.len(),
        tag: 7,
        mr: &rmr,
    }];
    // SAFETY: as above.
    let mut rreq = unsafe { net.irecv(&recv, &bufs) }
        .unwrap()
        .expect("request");
    assert_eq!(net.test(&mut sreq).unwrap(), Some(src.len()));
    let got = loop {
        if let Some(n) = net.test(&mut rreq).unwrap() {
            break n;
        }
    };
    assert_eq!(got, src.len());
    assert_eq!(rreq.size(0), Some(src.len()));
    assert_eq!(&dst[..got], &src[..]);
    assert!(matches!(net.test(&mut rreq), Err(Error::Invalid(_))));
    let unpack = recv
        .dev_handle()
        .map(|h| (h.net_device_type, h.net_device_version));
    if defines.contains(&"OFFLOAD_TYPE=1") {
        assert_eq!(unpack, Some((1, 7)));
        net.irecv_consumed(&recv, rreq).unwrap();
        assert_eq!(common::counter(&path, "irecvConsumed"), 1);
    } else {
        assert_eq!(unpack, None);
        drop(rreq);
    }
    drop(sreq);
    // A comm still used by a registration cannot be closed explicitly.
    match net.close_send(send) {
        Err(Error::Invalid(_)) => {}
        r => panic!("unexpected {r:?}"),
    }
    assert_eq!(common::counter(&path, "closeSend"), 0);
    drop(smr); // last user of the send comm: deregisters, then closes it
    assert_eq!(common::counter(&path, "deregMr"), 1);
    assert_eq!(common::counter(&path, "closeSend"), 1);
    net.dereg_mr(rmr).unwrap();
    assert_eq!(common::counter(&path, "deregMr"), 2);
    net.close_recv(recv).unwrap();
    assert_eq!(common::counter(&path, "closeRecv"), 1);
    drop(listen);
    assert_eq!(common::counter(&path, "closeListen"), 1);
}

#[test]
fn v7_data_path_round_trips_and_cleans_up() {
    data_path("data7", &["EXPORT_V7"]);
}

#[test]
fn v10_data_path_round_trips_and_cleans_up() {
    data_path("data10", &["EXPORT_V10"]);
}

#[test]
fn unpack_receives_are_consumed_explicitly() {
    data_path(
        "data7unpack",
        &["EXPORT_V7", "OFFLOAD_TYPE=1", "OFFLOAD_VERSION=7"],
    );
}

#[test]
fn the_library_outlives_the_net_handle() {
    let path = common::build("outlive", &["EXPORT_V7"]);
    let net = Net::load(&path).unwrap();
    net.init().unwrap();
    let (listen, send, recv) = pair(&net);
    // Hold our own reference so the counters survive the plugin's last user.
    // SAFETY: the test plugin has no initialisers with side effects.
    let _keep = unsafe { libloading::Library::new(&path) }.unwrap();
    drop(net);
    // Comms keep the plugin mapped: closing them after the Net is gone must work.
    drop((send, recv, listen));
    assert_eq!(common::counter(&path, "closeSend"), 1);
    assert_eq!(common::counter(&path, "closeListen"), 1);
}
