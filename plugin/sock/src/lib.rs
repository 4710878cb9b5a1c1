//! tcpx-sock: will hold `tcpxsock`, our TCP ncclNet plugin emulating the TCPX receive path.
