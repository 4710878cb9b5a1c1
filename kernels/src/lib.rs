//! tcpx-kernels: will hold the CUDA unpack kernel (embedded fatbin) and its launcher (GPU issue).
