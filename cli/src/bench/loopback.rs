//! `tcpx bench --loopback`: both sessions in this process, driven by one thread or two.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tcpx::engine::{Config, Direction, Progress, Segment, Session};
use tcpx::net::{MemKind, Net};

use super::baseline::{copy_name, copy_row, run_iperf3, tcp_pingpong};
use super::buffers::{fill_pattern, verify_failed, Buf, Gpu};
use super::endpoint::{process_cpu, wait_all, Endpoint, Ticker};
use super::options::{Options, Poller};
use super::report::{channel_devices, config_header, Report, Row};
use super::{err, BenchResult};

pub(super) fn loopback(o: &Options, cfg: Config) -> BenchResult<Report> {
    // Before the plugin and the sessions: without a GPU, fail fast and say so.
    let open = |k: MemKind, device: i32| -> BenchResult<Option<Gpu>> {
        match k {
            MemKind::Device => Gpu::open(device).map(Some),
            MemKind::Host => Ok(None),
        }
    };
    let (tx_gpu, rx_gpu) = (open(o.mem.0, o.gpu.0)?, open(o.mem.1, o.gpu.1)?);
    if cfg.plugin.is_none() {
        // The embedded tcpxsock would pick a real NIC by default; loopback means `lo`.
        tcpx_sock::config::configure(tcpx_sock::config::Config {
            ifname: Some("lo".into()),
            ..tcpx_sock::config::Config::try_from_env()?
        });
    }
    let net = Session::open_net(&cfg).map_err(err("open plugin"))?;
    // Each session drives the GPU of its buffers (TCPX binds comms to it at the handshake).
    let on = |k: MemKind, device: i32| Config {
        gpu: (k == MemKind::Device).then_some(device).or(cfg.gpu),
        ..cfg.clone()
    };
    let (a, b) = pair(&net, &on(o.mem.0, o.gpu.0), &on(o.mem.1, o.gpu.1))?;
    let devices = [
        ("devices_tx", channel_devices(&net, &a)),
        ("devices_rx", channel_devices(&net, &b)),
    ];
    let max = *o.sizes.iter().max().expect("at least one size");
    let mut tx = Endpoint::new(a, max, o.segments, tx_gpu.as_ref())?;
    let mut rx = Endpoint::new(b, max, o.segments, rx_gpu.as_ref())?;
    tx.buf.fill_pattern()?;

    let ticker = Ticker::new(o.sizes.len());
    let mut rows = Vec::with_capacity(o.sizes.len());
    for (i, &size) in o.sizes.iter().enumerate() {
        ticker.show(i, size, "tcpx");
        tx.set_size(size, o.segments);
        rx.set_size(size, o.segments);
        let mut warm = vec![Duration::ZERO; o.count().warmups(size)];
        measure(o.poller, &mut tx, &mut rx, &mut warm)?;
        let mut times = vec![Duration::ZERO; o.count().iters(size, &warm)];
        let cpu = process_cpu();
        measure(o.poller, &mut tx, &mut rx, &mut times)?;
        rows.push(Row::from_times(size, &times).with_cpu(process_cpu() - cpu));
        if o.verify {
            // An untimed extra transfer into a zeroed buffer: every byte must be rewritten.
            rx.buf.zero(size as usize)?;
            measure(o.poller, &mut tx, &mut rx, &mut [Duration::ZERO])?;
            if let Some(bad) = rx.buf.check(size as usize)? {
                ticker.clear();
                return Err(verify_failed(size, bad));
            }
        }
    }
    let (mut tcp, mut iperf3, mut copy) = (Vec::new(), Vec::new(), None);
    if o.baseline {
        // The engine's host buffers double as the baseline's: no extra gigabytes resident.
        // A device side gets a host stand-in (TCP reads and writes host memory only).
        let mut src_host = Vec::new();
        let src: &[u8] = match &tx.buf {
            Buf::Host(v) => v,
            Buf::Cuda(_) => {
                src_host = vec![0u8; max as usize];
                fill_pattern(&mut src_host);
                &src_host
            }
        };
        let mut dst_host = Vec::new();
        let dst: &mut [u8] = match &mut rx.buf {
            Buf::Host(v) => v,
            Buf::Cuda(_) => {
                dst_host = vec![0u8; max as usize];
                &mut dst_host
            }
        };
        for (i, &size) in o.sizes.iter().enumerate() {
            ticker.show(i, size, "tcp ping-pong");
            let n = size as usize;
            tcp.push(tcp_pingpong(&src[..n], &mut dst[..n], o.count())?);
        }
        drop((src_host, dst_host));
        // Device to device across GPUs is a peer copy; the driver routes it by address.
        if let Some(g) = rx_gpu.as_ref().or(tx_gpu.as_ref()) {
            let op = copy_name(tx.buf.kind(), rx.buf.kind());
            let mut rows = Vec::with_capacity(o.sizes.len());
            for (i, &size) in o.sizes.iter().enumerate() {
                ticker.show(i, size, op);
                rows.push(copy_row(g, &tx.buf, &mut rx.buf, size, o.count())?);
            }
            copy = Some((op, rows));
        }
        for streams in [1, 4] {
            ticker.show(o.sizes.len() - 1, max, &format!("iperf3 -P {streams}"));
            iperf3.push((streams, run_iperf3(streams)));
        }
    }
    ticker.clear();
    tx.close()?;
    rx.close()?;
    let mut header = config_header(&net, &cfg, o.segments);
    header.insert(0, ("mode", "loopback".into()));
    header.insert(1, ("mem", format!("{}:{}", o.mem.0.name(), o.mem.1.name())));
    let gpus = match (&tx_gpu, &rx_gpu) {
        (Some(t), Some(r)) if t.device != r.device => Some(format!("{}:{}", t.device, r.device)),
        (Some(g), _) | (_, Some(g)) => Some(g.device.to_string()),
        (None, None) => None,
    };
    if let Some(g) = gpus {
        header.insert(2, ("gpu", g));
    }
    header.push(("poller", o.poller.name().into()));
    header.extend(devices);
    Ok(Report {
        header,
        timing: "time = post on both sides to done on both sides",
        plugin_name: net.name().to_string(),
        rows,
        tcp,
        iperf3,
        copy,
    })
}

/// Two connected sessions; conn info swapped in memory, connect/accept on two threads
/// because each side's handshake only finishes while the other's runs.
pub(super) fn pair(net: &Net, cfg_a: &Config, cfg_b: &Config) -> BenchResult<(Session, Session)> {
    let la = Session::listen(net.clone(), cfg_a.clone()).map_err(err("listen"))?;
    let lb = Session::listen(net.clone(), cfg_b.clone()).map_err(err("listen"))?;
    let (ia, ib) = (la.conn_info().to_vec(), lb.conn_info().to_vec());
    thread::scope(|s| {
        let h = s.spawn(move || lb.connect(&ia));
        let a = la.connect(&ib).map_err(err("handshake"));
        let b = h
            .join()
            .map_err(|_| "handshake thread panicked".to_string())?
            .map_err(err("handshake"));
        Ok((a?, b?))
    })
}

/// Fills `times` with one transfer each, sender `tx` to receiver `rx`.
pub(super) fn measure(
    poller: Poller,
    tx: &mut Endpoint,
    rx: &mut Endpoint,
    times: &mut [Duration],
) -> BenchResult<()> {
    match poller {
        Poller::Single => measure_single(tx, rx, times),
        Poller::Threads => measure_threads(tx, rx, times),
    }
}

pub(super) fn measure_single(
    tx: &mut Endpoint,
    rx: &mut Endpoint,
    times: &mut [Duration],
) -> BenchResult<()> {
    let timeout = tx.transfer_timeout();
    for t in times.iter_mut() {
        let t0 = Instant::now();
        let r = rx
            .session
            .post(Direction::Recv, &rx.segs)
            .map_err(err("post"))?;
        let s = tx
            .session
            .post(Direction::Send, &tx.segs)
            .map_err(err("post"))?;
        let deadline = t0 + timeout;
        let (mut rd, mut sd) = (false, false);
        while !(rd && sd) {
            let mut moved = false;
            if !rd {
                moved |= rx.session.progress().map_err(err("progress"))?;
                rd = matches!(rx.session.status(r), Ok(Progress::Done { .. }));
            }
            if !sd {
                moved |= tx.session.progress().map_err(err("progress"))?;
                sd = matches!(tx.session.status(s), Ok(Progress::Done { .. }));
            }
            if rd && sd {
                break;
            }
            if !moved {
                if Instant::now() >= deadline {
                    return Err("a transfer did not complete in time".into());
                }
                thread::yield_now();
            }
        }
        *t = t0.elapsed();
        rx.session.release(r).map_err(err("release"))?;
        tx.session.release(s).map_err(err("release"))?;
    }
    Ok(())
}

/// A two-party barrier that spins (yielding) instead of sleeping, so the second thread
/// starts within a scheduler slice rather than a futex wake-up, and that a failing side can
/// open for good so its partner does not wait forever.
pub(super) struct SpinBarrier {
    pub(super) arrived: AtomicUsize,
    pub(super) abort: AtomicBool,
}

impl SpinBarrier {
    /// Waits for the partner's arrival number `round`; false once aborted.
    pub(super) fn wait(&self, round: usize) -> bool {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < 2 * (round + 1) {
            if self.abort.load(Ordering::Acquire) {
                return false;
            }
            thread::yield_now();
        }
        !self.abort.load(Ordering::Acquire)
    }
}

pub(super) fn measure_threads(
    tx: &mut Endpoint,
    rx: &mut Endpoint,
    times: &mut [Duration],
) -> BenchResult<()> {
    let timeout = tx.transfer_timeout();
    let now = Instant::now();
    let mut tx_marks = vec![(now, now); times.len()];
    let mut rx_marks = vec![(now, now); times.len()];
    let barrier = SpinBarrier {
        arrived: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    };
    let side = |s: &mut Session, dir, segs: &[Segment], marks: &mut [(Instant, Instant)]| {
        let r = (|| {
            for (round, m) in marks.iter_mut().enumerate() {
                if !barrier.wait(round) {
                    return Err("the other side failed".to_string());
                }
                let t0 = Instant::now();
                let id = s.post(dir, segs).map_err(err("post"))?;
                wait_all(s, &[id], timeout)?;
                *m = (t0, Instant::now());
            }
            Ok(())
        })();
        if r.is_err() {
            barrier.abort.store(true, Ordering::Release);
        }
        r
    };
    let (a, b) = thread::scope(|sc| {
        let h = sc.spawn(|| side(&mut rx.session, Direction::Recv, &rx.segs, &mut rx_marks));
        let a = side(&mut tx.session, Direction::Send, &tx.segs, &mut tx_marks);
        let b = h
            .join()
            .unwrap_or_else(|_| Err("receiver thread panicked".into()));
        (a, b)
    });
    a.and(b)?;
    for ((t, s), r) in times.iter_mut().zip(&tx_marks).zip(&rx_marks) {
        *t = s.1.max(r.1) - s.0.min(r.0);
    }
    Ok(())
}
