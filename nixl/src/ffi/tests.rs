use super::*;

#[test]
fn engine_vtable_matches_nixl_slot_order() {
    assert_eq!(vtable_mismatches(), 0);
}

#[test]
fn plugin_table_is_version_1() {
    // SAFETY: returns a pointer to the shim's static table; api_version is its first int.
    let v = unsafe { *(nixl_plugin_init() as *const i32) };
    assert_eq!(v, 1);
}

unsafe extern "C" fn collect(ctx: *mut c_void, a: TcpxStr, b: TcpxStr) -> bool {
    // SAFETY: `ctx` is the Vec passed below; the strings are valid for this call.
    let out = unsafe { &mut *(ctx as *mut Vec<(String, String)>) };
    // SAFETY: the sink's strings point to their `len` bytes for the duration of the call.
    let s = |x: TcpxStr| String::from_utf8(unsafe { bytes(x) }.unwrap().to_vec()).unwrap();
    out.push((s(a), s(b)));
    true
}

#[test]
fn options_are_reported_with_defaults() {
    let mut out: Vec<(String, String)> = Vec::new();
    // SAFETY: `collect` matches the sink contract and `out` outlives the call.
    unsafe { tcpx_nixl_backend_options(Some(collect), &mut out as *mut _ as *mut c_void) };
    let want: Vec<(String, String)> = OPTIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(out, want);
}

#[test]
fn rejected_params_give_null_and_null_backend_is_an_error() {
    let agent = TcpxStr::of(b"a");
    let p = [TcpxParam {
        key: TcpxStr::of(b"channels"),
        value: TcpxStr::of(b"99"),
    }];
    // SAFETY: all strings and the array are valid for the call.
    let be = unsafe { tcpx_nixl_backend_create(agent, p.as_ptr(), 1) };
    assert!(be.is_null());
    // SAFETY: null is an accepted backend pointer.
    let s = unsafe { tcpx_nixl_connect(be, agent) };
    assert_eq!(s, Status::Backend as i32);
    // SAFETY: as above.
    assert!(!unsafe { tcpx_nixl_supports_remote(be) });
}

#[test]
fn non_utf8_agent_is_rejected() {
    // SAFETY: valid byte string, no params.
    let be = unsafe { tcpx_nixl_backend_create(TcpxStr::of(b"\xff"), std::ptr::null(), 0) };
    assert!(be.is_null());
}
