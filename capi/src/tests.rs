use super::*;
use std::ptr::{null, null_mut};

fn last_error() -> String {
    // SAFETY: `tcpx_last_error` never returns NULL and its text is NUL-terminated.
    unsafe { CStr::from_ptr(tcpx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_error_variant_has_its_code() {
    let p: std::sync::Arc<str> = "p".into();
    let cases = [
        (Error::Invalid("x"), TCPX_ERR_INVALID),
        (Error::BadMemory("x".into()), TCPX_ERR_INVALID),
        (Error::Timeout("x"), TCPX_ERR_TIMEOUT),
        (Error::PluginNotFound { path: "/x".into() }, TCPX_ERR_PLUGIN),
        (
            Error::NotSharedObject {
                path: "/x".into(),
                reason: "r".into(),
            },
            TCPX_ERR_PLUGIN,
        ),
        (
            Error::NoSymbol {
                path: "/x".into(),
                tried: vec![],
            },
            TCPX_ERR_PLUGIN,
        ),
        (
            Error::Plugin {
                plugin: p.clone(),
                func: "f",
                code: 3,
            },
            TCPX_ERR_PLUGIN,
        ),
        (
            Error::MissingFunction {
                plugin: p.clone(),
                func: "f",
            },
            TCPX_ERR_PLUGIN,
        ),
        (Error::NoDevices { plugin: p.clone() }, TCPX_ERR_PLUGIN),
        (
            Error::UnknownDeviceOffload {
                plugin: p,
                dev: 0,
                device_type: 9,
                version: 1,
            },
            TCPX_ERR_PLUGIN,
        ),
        (Error::Broken("b".into()), TCPX_ERR_BROKEN),
        (Error::Unsupported("u"), TCPX_ERR_UNSUPPORTED),
        (Error::Config("c".into()), TCPX_ERR_CONFIG),
        (Error::Protocol("p".into()), TCPX_ERR_PROTOCOL),
        (Error::Io("io", std::io::Error::other("e")), TCPX_ERR_IO),
    ];
    for (e, code) in &cases {
        assert_eq!(status_of(e), *code, "{e:?}");
    }
}

#[test]
fn every_code_has_distinct_text() {
    let codes = [
        TCPX_OK,
        TCPX_ERR_INVALID,
        TCPX_ERR_TIMEOUT,
        TCPX_ERR_PLUGIN,
        TCPX_ERR_BROKEN,
        TCPX_ERR_UNSUPPORTED,
        TCPX_ERR_CONFIG,
        TCPX_ERR_PROTOCOL,
        TCPX_ERR_IO,
        TCPX_ERR_PANIC,
        TCPX_ERR_GPU,
        -1000,
    ];
    let texts: Vec<String> = codes
        .iter()
        .map(|&c| {
            // SAFETY: `tcpx_strerror` returns a pointer to static NUL-terminated text for
            // every code, known or not.
            unsafe { CStr::from_ptr(tcpx_strerror(c)) }
                .to_string_lossy()
                .into()
        })
        .collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty(), "code {}", codes[i]);
        assert_eq!(texts.iter().filter(|u| *u == t).count(), 1, "{t} repeats");
    }
}

#[test]
fn errors_and_panics_become_codes_with_text() {
    assert_eq!(call("t_ok", || Ok(5)), 5);
    assert_eq!(
        call("t_err", || Err(Error::Timeout("slow peer"))),
        TCPX_ERR_TIMEOUT
    );
    let e = last_error();
    assert!(e.contains("t_err") && e.contains("slow peer"), "{e}");
    assert_eq!(call("t_panic", || panic!("boom {}", 7)), TCPX_ERR_PANIC);
    let e = last_error();
    assert!(e.contains("t_panic") && e.contains("boom 7"), "{e}");
    // Success leaves the last failure in place (errno-like).
    assert_eq!(call("t_ok", || Ok(0)), 0);
    assert!(last_error().contains("boom 7"));
}

#[test]
fn last_error_is_per_thread() {
    assert_eq!(call("here", || Err(Error::Invalid("x"))), TCPX_ERR_INVALID);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread sees no failure");
    assert!(last_error().contains("here"));
}

#[test]
fn null_handles_and_out_pointers_are_invalid() {
    let s: *mut tcpx_session_t = null_mut();
    let mut v = 0u64;
    let mut w = 0u64;
    let mut buf = [0u8; 8];
    let seg = tcpx_segment_t {
        mem: 0,
        offset: 0,
        remote_offset: 0,
        len: 1,
    };
    let mut cfg = std::mem::MaybeUninit::<tcpx_config_t>::zeroed();
    // SAFETY: every pointer is NULL or points to a live local of the right type.
    let codes = unsafe {
        [
            tcpx_config_default(null_mut()),
            tcpx_config_from_env(null_mut()),
            tcpx_listen(null(), &mut null_mut()),
            tcpx_listen(cfg.as_mut_ptr(), null_mut()),
            tcpx_listener_conn_info(null(), &mut null(), &mut 0),
            tcpx_listener_connect(null_mut(), buf.as_ptr(), 8, &mut null_mut()),
            tcpx_register(s, buf.as_mut_ptr().cast(), 8, TCPX_MEM_HOST, 0, &mut v),
            tcpx_deregister(s, 0),
            tcpx_transfer_post(s, TCPX_SEND, &seg, 1, &mut v),
            tcpx_transfer_poll(s, 0, &mut v, &mut w),
            tcpx_transfer_wait(s, 0, 1, &mut v),
            tcpx_transfer_release(s, 0),
            tcpx_progress(s),
        ]
    };
    for (i, c) in codes.iter().enumerate() {
        assert_eq!(*c, TCPX_ERR_INVALID, "call #{i}");
    }
    assert!(last_error().contains("NULL"), "{}", last_error());
    // Destroy functions take NULL like free().
    // SAFETY: NULL is documented as ignored.
    unsafe {
        tcpx_listener_destroy(null_mut());
        tcpx_session_destroy(null_mut());
    }
}

#[test]
fn config_round_trips_and_bad_values_are_config_errors() {
    let mut c = std::mem::MaybeUninit::<tcpx_config_t>::uninit();
    // SAFETY: `c` is writable.
    assert_eq!(unsafe { tcpx_config_default(c.as_mut_ptr()) }, TCPX_OK);
    // SAFETY: initialised by the call above.
    let c = unsafe { c.assume_init() };
    assert!(c.plugin.is_null());
    assert_eq!(config_from_c(&c).unwrap(), Config::default());
    let bad = tcpx_config_t { window: 17, ..c };
    let mut l = null_mut();
    // SAFETY: `bad` and `l` are live locals.
    assert_eq!(unsafe { tcpx_listen(&bad, &mut l) }, TCPX_ERR_CONFIG);
    assert!(l.is_null());
    assert!(last_error().contains("window"), "{}", last_error());
    let path = c"/nonexistent/libnccl-net.so";
    let with_plugin = tcpx_config_t {
        plugin: path.as_ptr(),
        ..c
    };
    let back = config_from_c(&with_plugin).unwrap();
    assert_eq!(
        back.plugin.as_deref(),
        Some(Path::new("/nonexistent/libnccl-net.so"))
    );
    assert_eq!(
        // SAFETY: `with_plugin` is a live config whose `plugin` is a static C string, and
        // `l` a local out-pointer.
        unsafe { tcpx_listen(&with_plugin, &mut l) },
        TCPX_ERR_PLUGIN
    );
    let p1 = config_to_c(&back).unwrap().plugin;
    assert_eq!(
        p1,
        config_to_c(&back).unwrap().plugin,
        "one copy per distinct path"
    );
    // SAFETY: interned strings live for the process.
    assert_eq!(unsafe { CStr::from_ptr(p1) }, path);
    let empty = tcpx_config_t {
        plugin: c"".as_ptr(),
        ..c
    };
    assert_eq!(config_from_c(&empty).unwrap().plugin, None);
}

/// `device`: an index is that one NIC, -1 auto, -2 all; a list of several has no C form
/// and is refused by name; nothing else is a device.
#[test]
fn device_choices_map_both_ways() {
    let mut c = std::mem::MaybeUninit::uninit();
    // SAFETY: a live out-pointer.
    assert_eq!(unsafe { tcpx_config_default(c.as_mut_ptr()) }, TCPX_OK);
    // SAFETY: filled above.
    let c = unsafe { c.assume_init() };
    assert_eq!(c.device, -1, "auto by default");
    for (device, want) in [
        (-1, Devices::Auto),
        (-2, Devices::All),
        (3, Devices::one(3)),
    ] {
        let cfg = config_from_c(&tcpx_config_t { device, ..c }).unwrap();
        assert_eq!(cfg.devices, want);
        assert_eq!(config_to_c(&cfg).unwrap().device, device);
    }
    for device in [-3, 256] {
        let e = config_from_c(&tcpx_config_t { device, ..c }).unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
    }
    let two = Config {
        devices: Devices::parse("0,2").unwrap(),
        ..Config::default()
    };
    let e = config_to_c(&two).unwrap_err();
    assert!(e.to_string().contains("TCPX_DEVICES=0,2"), "{e}");
}
