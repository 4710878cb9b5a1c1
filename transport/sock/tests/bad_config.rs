//! A bad `TCPX_SOCK_*` value makes `init` fail (ncclInvalidArgument) instead of running on a
//! default the user did not ask for. Its own test binary: the variable is process-wide and
//! nothing here calls `configure`, so `init` reads the environment.

use tcpx_core::abi::result;

#[test]
fn init_refuses_a_bad_value_and_accepts_it_corrected() {
    let net = tcpx_sock::table();
    std::env::set_var("TCPX_SOCK_IFNAME", "lo");
    std::env::set_var("TCPX_SOCK_CHUNK_BYTES", "512KB");
    // SAFETY: no logger; init takes no other argument.
    let rc = unsafe { net.init.unwrap()(None) };
    assert_eq!(
        rc,
        result::INVALID_ARGUMENT,
        "init must refuse TCPX_SOCK_CHUNK_BYTES=512KB"
    );
    std::env::set_var("TCPX_SOCK_CHUNK_BYTES", "512K");
    // SAFETY: as above.
    let rc = unsafe { net.init.unwrap()(None) };
    assert_eq!(rc, result::SUCCESS, "the corrected value is accepted");
}
