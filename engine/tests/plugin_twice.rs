//! One process, two users of one plugin file: NCCL (vLLM and SGLang run their collectives
//! on it) `dlopen`s the plugin and `init`s it, and tcpx loads the same file. `dlopen` of one
//! file returns one instance and GPUDirect-TCPX's `init` is not idempotent, so tcpx must get
//! an instance of its own. Shown with tcpxsock's shared object (as NCCL would load it).

use std::ffi::{c_int, c_void};
use std::path::PathBuf;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use tcpx::net::{Isolation, Net};
use tcpx_core::abi::{v7, HANDLE_MAX_SIZE};

fn tcpxsock_so() -> PathBuf {
    // Cargo leaves the dependency's cdylib next to this test binary (target/<profile>/deps).
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libtcpx_sock.so");
    assert!(so.exists(), "{} was not built", so.display());
    so
}

/// Calls the raw table as NCCL does: devices, properties of device 0, listen, closeListen.
fn exercise_as_nccl(t: &v7::Net) {
    let mut n: c_int = 0;
    // SAFETY: the table's functions with valid out-pointers, as the ABI defines them.
    unsafe {
        assert_eq!((t.devices.unwrap())(&mut n), 0);
        assert!(n >= 1);
        let mut props = v7::Properties::zeroed();
        assert_eq!((t.get_properties.unwrap())(0, &mut props), 0);
        assert!(!props.name.is_null());
        let mut handle = [0u8; HANDLE_MAX_SIZE];
        let mut listen: *mut c_void = std::ptr::null_mut();
        assert_eq!(
            (t.listen.unwrap())(0, handle.as_mut_ptr().cast(), &mut listen),
            0
        );
        assert!(!listen.is_null());
        assert_eq!((t.close_listen.unwrap())(listen), 0);
    }
}

#[test]
fn nccl_and_tcpx_loading_one_plugin_file_get_separate_instances() {
    // Loopback only; this binary runs this one test, so nothing reads the environment yet.
    std::env::set_var("TCPX_SOCK_IFNAME", "lo");
    let so = tcpxsock_so();

    // NCCL's way: dlopen(RTLD_NOW | RTLD_LOCAL), the table by symbol, init with its logger.
    // SAFETY: loading our own plugin runs only Rust initialisers.
    let nccl = unsafe { Library::open(Some(&so), RTLD_NOW | RTLD_LOCAL) }.unwrap();
    // SAFETY: the exported data symbol is an `ncclNet_v7_t`; only its address is taken.
    let nccl_table = unsafe { nccl.get::<*const v7::Net>(b"ncclNetPlugin_v7\0") }.unwrap();
    let nccl_table: *const v7::Net = *nccl_table;
    // SAFETY: the library stays loaded (`nccl` lives to the end of the test).
    let t = unsafe { &*nccl_table };
    // SAFETY: init with an NCCL-compatible logger.
    assert_eq!(unsafe { (t.init.unwrap())(tcpx::log::nccl_logger()) }, 0);

    // tcpx's way, as the engine loads a plugin (isolation from TCPX_PLUGIN_ISOLATE, unset).
    let net = Net::load(&so).unwrap();
    let ours = net.symbol("ncclNetPlugin_v7").expect("table").as_ptr();
    assert_ne!(
        ours.cast_const(),
        nccl_table.cast::<c_void>(),
        "tcpx shares NCCL's instance of the plugin"
    );
    assert_eq!(net.isolation(), Isolation::Private);
    net.init().unwrap();

    // Both still work after both inits.
    exercise_as_nccl(t);
    assert!(net.devices().unwrap() >= 1);
    assert_eq!(net.properties(0).unwrap().name, "lo");
    let listen = net.listen(0).unwrap();
    assert!(listen.handle().as_bytes().iter().any(|&b| b != 0));
    net.close_listen(listen).unwrap();
    exercise_as_nccl(t);
}
