//! The loader against fake plugins compiled at test time: version probing, each failure
//! mode's exact error, the logger bridge, and the RAII data path through `tcpx::net`,
//! including what GPUDirect-TCPX does to a caller (device handle filled in place, sizes never
//! reported, `iflush` that must not be called).

mod common;

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use tcpx::log::{self, Level, Record};
use tcpx::net::{AbiVersion, Comm, DeviceType, Isolation, MemKind, Net, RecvBuf};
use tcpx::Error;

/// Reads one of the fake plugin's call counters in `net`'s own instance (a private copy,
/// which reopening the file by path would not reach).
fn counter(net: &Net, what: &str) -> i32 {
    let f = net.symbol("fake_counter").expect("fake_counter");
    // SAFETY: `fake_counter` is `int fake_counter(const char*)` in fake_net.c.
    let f: unsafe extern "C" fn(*const c_char) -> i32 = unsafe { std::mem::transmute(f) };
    let what = std::ffi::CString::new(what).unwrap();
    // SAFETY: a NUL-terminated string, read during the call.
    unsafe { f(what.as_ptr()) }
}

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
    let unpack = defines.contains(&"OFFLOAD_TYPE=1");
    let sizes_reported = !defines.contains(&"NO_TEST_SIZES");
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
    assert!(
        sreq.size(0).is_none() && !sreq.size_reported(0),
        "not done yet"
    );
    assert_eq!(net.test(&mut sreq).unwrap(), Some(src.len()));
    assert_eq!(sreq.size_reported(0), sizes_reported);
    let got = loop {
        if let Some(n) = net.test(&mut rreq).unwrap() {
            break n;
        }
    };
    assert_eq!(rreq.size_reported(0), sizes_reported);
    assert_eq!(rreq.posted_size(0), Some(dst.len()));
    if sizes_reported {
        assert_eq!(got, src.len());
    } else {
        // An unreported size is the posted one: the receiver cannot learn the real size.
        assert_eq!(got, dst.len());
    }
    assert_eq!(rreq.size(0), Some(got));
    assert_eq!(rreq.size(1), None);
    assert_eq!(&dst[..src.len()], &src[..]);
    assert!(matches!(net.test(&mut rreq), Err(Error::Invalid(_))));
    let handle = recv
        .dev_handle()
        .map(|h| (h.net_device_type, h.net_device_version, h.handle.is_null()));
    // Flushing is refused on UNPACK comms without reaching the plugin, and goes through
    // on HOST ones (where this fake has nothing to flush).
    // SAFETY: the buffer's receive has completed; the fake only counts the call.
    let flushed = unsafe { net.iflush(&recv, &bufs) };
    if unpack {
        assert_eq!(handle, Some((1, 7, false)));
        match flushed {
            Err(e @ Error::Unsupported(_)) => {
                let text = e.to_string();
                assert!(text.contains("UNPACK") && text.contains("TCPX"), "{text}");
                assert!(text.contains("Hopper needs no flush"), "{text}");
            }
            r => panic!("unexpected {r:?}"),
        }
        assert_eq!(counter(&net, "iflush"), 0);
        net.irecv_consumed(&recv, rreq).unwrap();
        assert_eq!(counter(&net, "irecvConsumed"), 1);
    } else {
        assert_eq!(handle, None);
        assert!(flushed.unwrap().is_none());
        assert_eq!(counter(&net, "iflush"), 1);
        drop(rreq);
    }
    drop(sreq);
    // A comm still used by a registration cannot be closed explicitly.
    match net.close_send(send) {
        Err(Error::Invalid(_)) => {}
        r => panic!("unexpected {r:?}"),
    }
    assert_eq!(counter(&net, "closeSend"), 0);
    drop(smr); // last user of the send comm: deregisters, then closes it
    assert_eq!(counter(&net, "deregMr"), 1);
    assert_eq!(counter(&net, "closeSend"), 1);
    net.dereg_mr(rmr).unwrap();
    assert_eq!(counter(&net, "deregMr"), 2);
    net.close_recv(recv).unwrap();
    assert_eq!(counter(&net, "closeRecv"), 1);
    drop(listen);
    assert_eq!(counter(&net, "closeListen"), 1);
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

/// T1: GPUDirect-TCPX fills the caller's device handle in place (the fake refuses a NULL
/// one where TCPX would crash) and checks the type and version NCCL presets.
#[test]
fn a_plugin_that_fills_the_device_handle_in_place_gets_one() {
    data_path(
        "data7fill",
        &[
            "EXPORT_V7",
            "OFFLOAD_TYPE=1",
            "OFFLOAD_VERSION=7",
            "FILL_DEV_HANDLE",
        ],
    );
}

/// T2: GPUDirect-TCPX's `test` never writes sizes: the posted sizes stand in.
#[test]
fn unreported_sizes_are_the_posted_sizes() {
    data_path(
        "data7nosizes",
        &[
            "EXPORT_V7",
            "OFFLOAD_TYPE=1",
            "OFFLOAD_VERSION=7",
            "FILL_DEV_HANDLE",
            "NO_TEST_SIZES",
        ],
    );
    data_path("data10nosizes", &["EXPORT_V10", "NO_TEST_SIZES"]);
}

/// Accept retries lend the plugin one handle, which the accepted comm then owns; a HOST
/// device gets none.
#[test]
fn listen_remembers_its_device_and_offload() {
    let path = common::build(
        "listenunpack",
        &[
            "EXPORT_V7",
            "OFFLOAD_TYPE=1",
            "OFFLOAD_VERSION=7",
            "FILL_DEV_HANDLE",
        ],
    );
    let net = Net::load(&path).unwrap();
    net.init().unwrap();
    let mut listen = net.listen(1).unwrap();
    assert_eq!(
        (listen.dev(), listen.device_type()),
        (1, DeviceType::Unpack)
    );
    let mut handle = *listen.handle();
    assert!(net.connect(1, &mut handle).unwrap().is_none());
    let send = net.connect(1, &mut handle).unwrap().expect("connected");
    // NCCL's send side passes a pointer to NULL, and so do we: no handle on a send comm.
    assert!(send.dev_handle().is_none());
    assert!(net.accept(&mut listen).unwrap().is_none());
    let recv = net.accept(&mut listen).unwrap().expect("accepted");
    let h = recv.dev_handle().expect("filled in place");
    assert_eq!((h.net_device_type, h.net_device_version), (1, 7));
    assert!(!h.handle.is_null() && h.size == 24 && h.needs_proxy_progress == 1);

    let host = common::build("listenhost", &["EXPORT_V7"]);
    let net = Net::load(&host).unwrap();
    let listen = net.listen(0).unwrap();
    assert_eq!(listen.device_type(), DeviceType::Host);
    // A device whose properties fail cannot be listened on.
    assert!(matches!(
        net.listen(5),
        Err(Error::Plugin {
            func: "getProperties",
            ..
        })
    ));
}

#[test]
fn max_reg_bytes_follows_the_abi_size_type() {
    let v7 = Net::load(common::build("maxreg7", &["EXPORT_V7"])).unwrap();
    assert_eq!(v7.max_reg_bytes(), i32::MAX as usize);
    let v10 = Net::load(common::build("maxreg10", &["EXPORT_V10"])).unwrap();
    assert_eq!(v10.max_reg_bytes(), usize::MAX);
}

/// By default a plugin file is loaded as a private copy; loading it again in tcpx returns
/// the same instance (one `init`), and the shared way reaches the file's own instance.
#[test]
fn plugins_load_privately_once_per_file() {
    let path = common::build("private", &["EXPORT_V7"]);
    let a = Net::load_with_isolation(&path, None, Isolation::Private).unwrap();
    let b = Net::load_with_isolation(&path, None, Isolation::Private).unwrap();
    assert_eq!(a.isolation(), Isolation::Private);
    let table = |n: &Net| n.symbol("ncclNetPlugin_v7").expect("table").as_ptr();
    assert_eq!(table(&a), table(&b), "one instance per file within tcpx");
    let shared = Net::load_with_isolation(&path, None, Isolation::Shared).unwrap();
    assert_eq!(shared.isolation(), Isolation::Shared);
    assert_ne!(
        table(&a),
        table(&shared),
        "the private copy is another instance"
    );
    // The shared instance is the file's own: reopening the file by path reaches it.
    // SAFETY: the test plugin has no initialisers with side effects.
    let own = unsafe { libloading::Library::new(&path) }.unwrap();
    // SAFETY: only the address is taken.
    let own_table = unsafe { own.get::<*mut c_void>(b"ncclNetPlugin_v7\0") }.unwrap();
    assert_eq!(*own_table, table(&shared));
    assert!(Net::embedded().symbol("ncclNetPlugin_v7").is_none());
    assert_eq!(Net::embedded().isolation(), Isolation::Private);
}

#[test]
fn the_library_outlives_the_net_handle() {
    let path = common::build("outlive", &["EXPORT_V7"]);
    // The file's own instance, so that the counters can be read after the last user is gone.
    let net = Net::load_with_isolation(&path, None, Isolation::Shared).unwrap();
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

/// Compiles `tests/plugins/<source>` into `out` with extra compiler and linker arguments
/// (what `common::build` has no room for: sonames, libraries, run paths).
fn cc(source: &str, out: &std::path::Path, args: &[&str]) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plugins")
        .join(source);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror"])
        .args(["-Wno-unused-function", "-Wno-unused-variable", "-o"])
        .arg(out)
        .arg(&src)
        .args(args)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {}", out.display());
}

/// Whether an object answering to `name` (a bare soname) is loaded in this process.
fn loaded_as(name: &str) -> bool {
    use libloading::os::unix::{Library, RTLD_NOW};
    const RTLD_NOLOAD: i32 = 0x4;
    // SAFETY: NOLOAD opens nothing new; it only takes a reference to a loaded object.
    unsafe { Library::open(Some(name), RTLD_NOW | RTLD_NOLOAD) }.is_ok()
}

/// The dynamic loader matches a bare `dlopen("libnccl-net.so")` by soname: a private copy
/// keeping the file's soname would be handed to NCCL when tcpx loaded first.
#[test]
fn a_private_copy_does_not_answer_to_the_files_soname() {
    let dir = common::tmp_dir();
    let private = dir.join("libtcpxsonamepriv.so");
    cc(
        "fake_net.c",
        &private,
        &["-DEXPORT_V7", "-Wl,-soname,libtcpxsonamepriv.so"],
    );
    let net = Net::load_with_isolation(&private, None, Isolation::Private).unwrap();
    net.init().unwrap();
    assert_eq!(net.isolation(), Isolation::Private);
    assert!(!loaded_as("libtcpxsonamepriv.so"));
    // The check can see a match: the file itself, opened shared, answers to its soname.
    let shared = dir.join("libtcpxsonameshared.so");
    cc(
        "fake_net.c",
        &shared,
        &["-DEXPORT_V7", "-Wl,-soname,libtcpxsonameshared.so"],
    );
    let net2 = Net::load_with_isolation(&shared, None, Isolation::Shared).unwrap();
    assert!(loaded_as("libtcpxsonameshared.so"));
    drop((net, net2));
}

/// A plugin that finds a dependency next to itself through `$ORIGIN` still loads as a
/// private copy (whose own `$ORIGIN` is elsewhere), bound to that dependency.
#[test]
fn a_private_copy_finds_origin_dependencies() {
    let dir = common::tmp_dir().join("origin");
    std::fs::create_dir_all(&dir).unwrap();
    cc(
        "fake_dep.c",
        &dir.join("libtcpxfakedep.so"),
        &["-Wl,-soname,libtcpxfakedep.so"],
    );
    let plugin = dir.join("libfakeorigin.so");
    let libdir = format!("-L{}", dir.display());
    cc(
        "fake_net.c",
        &plugin,
        &[
            "-DEXPORT_V7",
            "-DUSE_DEP",
            &libdir,
            "-ltcpxfakedep",
            "-Wl,-rpath,$ORIGIN",
            "-Wl,--enable-new-dtags",
        ],
    );
    assert!(!loaded_as("libtcpxfakedep.so"));
    let net = Net::load_with_isolation(&plugin, None, Isolation::Private).unwrap();
    assert_eq!(
        net.isolation(),
        Isolation::Private,
        "fell back to the shared file"
    );
    assert_eq!(counter(&net, "dep"), 42);
    assert_eq!(net.devices().unwrap(), 2);
}
