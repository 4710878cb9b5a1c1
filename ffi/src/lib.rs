//! tcpx: the std layer — ncclNet plugin loader, engine (Session/Transfer), CUDA layer and C API.
