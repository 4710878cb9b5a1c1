//! C API of the tcpx engine (being written).
