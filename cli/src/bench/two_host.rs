//! `tcpx bench --listen` / `--connect`: one session per process; the listener's options rule
//! and travel to the connector as a plan over the session itself.

use std::net::{TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use tcpx::engine::{Config, Direction, Rendezvous, Segment, Session};
use tcpx::net::MemKind;

use super::buffers::{verify_failed, Gpu};
use super::endpoint::{process_cpu, wait_all, Count, Endpoint, Ticker, CTRL, MAX_ITERS};
use super::options::{Mode, Options, MAX_SIZE, MAX_SIZES};
use super::report::{channel_devices, config_header, Report, Row};
use super::{err, BenchResult};

pub(super) const PLAN_MAGIC: u64 = 0x6e61_6c70_7863_7074; // "tpcxplan"
/// 2: the statistics carry p90 and p99.9, the plan the `--tail` flag.
pub(super) const PLAN_VERSION: u64 = 2;
pub(super) const SIZE_MAGIC: u64 = 0x657a_6973_7863_7074;
pub(super) const STATS_MAGIC: u64 = 0x7374_6174_7863_7074;
pub(super) const VERIFY_MAGIC: u64 = 0x6966_7276_7863_7074;
pub(super) const FLAG_REVERSE: u64 = 1;
pub(super) const FLAG_VERIFY: u64 = 2;
pub(super) const FLAG_TAIL: u64 = 4;

pub(super) type Words = [u64; CTRL / 8];

pub(super) fn ctrl_send(ep: &mut Endpoint, words: &Words) -> BenchResult<()> {
    for (c, w) in ep.ctrl[..CTRL].chunks_mut(8).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    let seg = Segment {
        mem: ep.ctrl_mem,
        offset: 0,
        remote_offset: CTRL as u64,
        len: CTRL as u64,
    };
    let id = ep
        .session
        .post(Direction::Send, &[seg])
        .map_err(err("post"))?;
    let timeout = ep.transfer_timeout();
    wait_all(&mut ep.session, &[id], timeout)
}

pub(super) fn ctrl_recv(ep: &mut Endpoint) -> BenchResult<Words> {
    let seg = Segment {
        mem: ep.ctrl_mem,
        offset: CTRL as u64,
        remote_offset: 0,
        len: CTRL as u64,
    };
    let id = ep
        .session
        .post(Direction::Recv, &[seg])
        .map_err(err("post"))?;
    let timeout = ep.transfer_timeout();
    wait_all(&mut ep.session, &[id], timeout)?;
    let mut w = [0u64; CTRL / 8];
    for (w, c) in w.iter_mut().zip(ep.ctrl[CTRL..].chunks(8)) {
        *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    Ok(w)
}

pub(super) fn expect(w: &Words, magic: u64, what: &str) -> BenchResult<()> {
    if w[0] != magic {
        return Err(format!(
            "peer sent something else than its {what}: are both sides the same tcpx version?"
        ));
    }
    Ok(())
}

/// What the listener tells the connector before anything is measured.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) reverse: bool,
    pub(super) verify: bool,
    pub(super) segments: usize,
    pub(super) iters: Option<usize>,
    pub(super) tail: bool,
    pub(super) chunk: u32,
    pub(super) sizes: Vec<u64>,
}

impl Plan {
    pub(super) fn count(&self) -> Count {
        Count {
            fixed: self.iters,
            tail: self.tail,
        }
    }

    pub(super) fn to_words(&self) -> Words {
        let mut w = [0u64; CTRL / 8];
        w[0] = PLAN_MAGIC;
        w[1] = PLAN_VERSION;
        w[2] = (u64::from(self.reverse) * FLAG_REVERSE)
            | (u64::from(self.verify) * FLAG_VERIFY)
            | (u64::from(self.tail) * FLAG_TAIL);
        w[3] = self.segments as u64;
        w[4] = self.iters.unwrap_or(0) as u64;
        w[5] = u64::from(self.chunk);
        w[6] = self.sizes.len() as u64;
        w[7..7 + self.sizes.len()].copy_from_slice(&self.sizes);
        w
    }

    pub(super) fn from_words(w: &Words) -> BenchResult<Plan> {
        expect(w, PLAN_MAGIC, "plan")?;
        if w[1] != PLAN_VERSION {
            return Err(format!(
                "peer's bench plan version {} (this is {PLAN_VERSION})",
                w[1]
            ));
        }
        let n = w[6] as usize;
        if n == 0 || n > MAX_SIZES || w[7..7 + n].iter().any(|&s| s == 0 || s > MAX_SIZE) {
            return Err("peer's bench plan has bad sizes".into());
        }
        let segments = w[3] as usize;
        if segments == 0 || w[7..7 + n].iter().any(|&s| s < segments as u64) {
            return Err("peer's bench plan has bad segments".into());
        }
        Ok(Plan {
            reverse: w[2] & FLAG_REVERSE != 0,
            verify: w[2] & FLAG_VERIFY != 0,
            tail: w[2] & FLAG_TAIL != 0,
            segments,
            iters: (w[4] > 0).then_some(w[4] as usize),
            chunk: w[5] as u32,
            sizes: w[7..7 + n].to_vec(),
        })
    }
}

pub(super) fn two_hosts(o: &Options, mut cfg: Config) -> BenchResult<Report> {
    // The session's GPU must be known at the handshake: this side's role (and so its buffers'
    // GPU) is known here only to the listener, or when both sides name the same GPU.
    let own = match (&o.mode, o.reverse) {
        (Mode::Listen(_), false) => Some((o.mem.1, o.gpu.1)),
        (Mode::Listen(_), true) => Some((o.mem.0, o.gpu.0)),
        _ if o.gpu.0 == o.gpu.1 => Some((MemKind::Device, o.gpu.0)),
        _ => None,
    };
    if let Some((MemKind::Device, g)) = own.filter(|_| cfg.gpu.is_none()) {
        if o.mem.0 == MemKind::Device || o.mem.1 == MemKind::Device {
            cfg.gpu = Some(g);
        }
    }
    // Which role this side plays is the listener's call (--reverse), known after the plan;
    // when both kinds are cuda the GPU is needed either way, so probe before waiting on a peer.
    let mut gpu = match o.mem {
        (MemKind::Device, MemKind::Device) if o.gpu.0 == o.gpu.1 => Some(Gpu::open(o.gpu.0)?),
        (MemKind::Device, MemKind::Device) => {
            tcpx_kernels::gpu_available().map_err(|e| format!("--mem cuda: {e}"))?;
            let n = CudaContext::device_count().unwrap_or(0);
            let most = o.gpu.0.max(o.gpu.1);
            if most >= n {
                return Err(format!("--gpu {most}: this machine has {n} GPU(s)"));
            }
            None
        }
        _ => None,
    };
    let net = Session::open_net(&cfg).map_err(err("open plugin"))?;
    let listening = matches!(o.mode, Mode::Listen(_));
    let session = match &o.mode {
        Mode::Listen(port) => {
            let l = TcpListener::bind(("0.0.0.0", *port))
                .map_err(|e| format!("bind port {port}: {e}"))?;
            Session::establish(net.clone(), cfg.clone(), Rendezvous::Accept(&l))
        }
        Mode::Connect(addr) => {
            let a = addr
                .to_socket_addrs()
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to nothing"))?;
            Session::establish(net.clone(), cfg.clone(), Rendezvous::Connect(a))
        }
        Mode::Loopback => unreachable!("loopback has its own driver"),
    }
    .map_err(err("handshake"))?;
    let devices = channel_devices(&net, &session);

    // The plan travels first, over the session itself, before any buffer size is known.
    let mut ep = Endpoint::new(session, 1, 1, None)?;
    let plan = if listening {
        let plan = Plan {
            reverse: o.reverse,
            verify: o.verify,
            segments: o.segments,
            iters: o.iters,
            tail: o.tail,
            chunk: cfg.chunk_bytes,
            sizes: o.sizes.clone(),
        };
        ctrl_send(&mut ep, &plan.to_words())?;
        plan
    } else {
        let plan = Plan::from_words(&ctrl_recv(&mut ep)?)?;
        if plan.chunk != cfg.chunk_bytes {
            return Err(format!(
                "the listener uses --chunk {}, this side {}: both must match",
                plan.chunk, cfg.chunk_bytes
            ));
        }
        plan
    };
    let session = ep.close()?;
    let sender = listening == plan.reverse;
    let max = *plan.sizes.iter().max().expect("plan has sizes");
    let (kind, device) = if sender {
        (o.mem.0, o.gpu.0)
    } else {
        (o.mem.1, o.gpu.1)
    };
    if kind == MemKind::Device && gpu.as_ref().is_none_or(|g| g.device != device) {
        gpu = Some(Gpu::open(device)?);
    }
    let on = gpu.as_ref().filter(|_| kind == MemKind::Device);
    let mut ep = Endpoint::new(session, max, plan.segments, on)?;
    if sender {
        ep.buf.fill_pattern()?;
    }

    let ticker = Ticker::new(plan.sizes.len());
    let mut rows = Vec::with_capacity(plan.sizes.len());
    for (i, &size) in plan.sizes.iter().enumerate() {
        ticker.show(i, size, if sender { "sending" } else { "receiving" });
        ep.set_size(size, plan.segments);
        let row = if sender {
            send_size(&mut ep, &plan, size)
        } else {
            recv_size(&mut ep, &plan, size)
        };
        match row {
            Ok(r) => rows.push(r),
            Err(e) => {
                ticker.clear();
                return Err(e);
            }
        }
    }
    ticker.clear();
    ep.close()?;
    let mut header = config_header(&net, &cfg, plan.segments);
    header.insert(
        0,
        ("mode", if listening { "listen" } else { "connect" }.into()),
    );
    header.insert(
        1,
        ("role", if sender { "sender" } else { "receiver" }.into()),
    );
    header.insert(2, ("mem", kind.name().into()));
    if let Some(g) = on {
        header.insert(3, ("gpu", g.device.to_string()));
    }
    header.push(("devices", devices));
    Ok(Report {
        header,
        timing: "time = sender's post to the receiver's 8-byte ack \
(one small message more than the transfer)",
        plugin_name: net.name().to_string(),
        rows,
        tcp: Vec::new(),
        iperf3: Vec::new(),
        copy: None,
    })
}

/// One iteration on the sending host: data out, the receiver's ack back.
pub(super) fn send_iter(ep: &mut Endpoint, timeout: Duration) -> BenchResult<Duration> {
    let ack = Segment {
        mem: ep.ctrl_mem,
        offset: CTRL as u64,
        remote_offset: 0,
        len: 8,
    };
    let t0 = Instant::now();
    let a = ep
        .session
        .post(Direction::Recv, &[ack])
        .map_err(err("post"))?;
    let d = ep
        .session
        .post(Direction::Send, &ep.segs)
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[d, a], timeout)?;
    Ok(t0.elapsed())
}

/// One iteration on the receiving host: data in, then the ack that lets the sender go on.
pub(super) fn recv_iter(ep: &mut Endpoint, timeout: Duration) -> BenchResult<()> {
    let ack = Segment {
        mem: ep.ctrl_mem,
        offset: 0,
        remote_offset: CTRL as u64,
        len: 8,
    };
    let d = ep
        .session
        .post(Direction::Recv, &ep.segs)
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[d], timeout)?;
    let a = ep
        .session
        .post(Direction::Send, &[ack])
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[a], timeout)
}

pub(super) fn send_size(ep: &mut Endpoint, plan: &Plan, size: u64) -> BenchResult<Row> {
    let timeout = ep.transfer_timeout();
    let mut warm = vec![Duration::ZERO; plan.count().warmups(size)];
    for t in warm.iter_mut() {
        *t = send_iter(ep, timeout)?;
    }
    let iters = plan.count().iters(size, &warm);
    let mut w = [0u64; CTRL / 8];
    (w[0], w[1], w[2]) = (SIZE_MAGIC, size, iters as u64);
    ctrl_send(ep, &w)?;
    let mut times = vec![Duration::ZERO; iters];
    let cpu = process_cpu();
    for t in times.iter_mut() {
        *t = send_iter(ep, timeout)?;
    }
    let row = Row::from_times(size, &times).with_cpu(process_cpu() - cpu);
    let mut w = [0u64; CTRL / 8];
    w[0] = STATS_MAGIC;
    w[1] = row.p50.as_nanos() as u64;
    w[2] = row.p99.as_nanos() as u64;
    w[3] = row.total.as_nanos() as u64;
    w[4] = row.p90.as_nanos() as u64;
    w[5] = row.p999.as_nanos() as u64;
    ctrl_send(ep, &w)?;
    if plan.verify {
        send_iter(ep, timeout)?;
        let v = ctrl_recv(ep)?;
        expect(&v, VERIFY_MAGIC, "verify result")?;
        if v[1] != 0 {
            return Err(format!(
                "the receiver reports {}",
                verify_failed(size, (v[2] as usize, v[3] as u8, v[4] as u8, v[5] as usize))
            ));
        }
    }
    Ok(row)
}

pub(super) fn recv_size(ep: &mut Endpoint, plan: &Plan, size: u64) -> BenchResult<Row> {
    let timeout = ep.transfer_timeout();
    for _ in 0..plan.count().warmups(size) {
        recv_iter(ep, timeout)?;
    }
    let w = ctrl_recv(ep)?;
    expect(&w, SIZE_MAGIC, "size")?;
    if w[1] != size {
        return Err(format!("peer measures {} bytes, this side {size}", w[1]));
    }
    let iters = w[2] as usize;
    if iters == 0 || iters > MAX_ITERS.max(plan.iters.unwrap_or(0)) {
        return Err(format!("peer asks for {iters} iterations"));
    }
    let cpu = process_cpu();
    for _ in 0..iters {
        recv_iter(ep, timeout)?;
    }
    let cpu = (process_cpu() - cpu) / iters as u32;
    let s = ctrl_recv(ep)?;
    expect(&s, STATS_MAGIC, "statistics")?;
    // The sender timed the iterations: its statistics, this side's CPU time.
    let row = Row {
        bytes: size,
        iters,
        p50: Duration::from_nanos(s[1]),
        p90: Duration::from_nanos(s[4]),
        p99: Duration::from_nanos(s[2]),
        p999: Duration::from_nanos(s[5]),
        total: Duration::from_nanos(s[3]),
        samples: Vec::new(),
        cpu: Some(cpu),
    };
    if plan.verify {
        let n = size as usize;
        ep.buf.zero(n)?;
        recv_iter(ep, timeout)?;
        let bad = ep.buf.check(n)?;
        let mut v = [0u64; CTRL / 8];
        v[0] = VERIFY_MAGIC;
        if let Some((at, got, want, count)) = bad {
            (v[1], v[2], v[3], v[4], v[5]) = (1, at as u64, got.into(), want.into(), count as u64);
        }
        ctrl_send(ep, &v)?;
        if let Some(bad) = bad {
            return Err(verify_failed(size, bad));
        }
    }
    Ok(row)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::options::DEFAULT_SIZES;

    #[test]
    fn plan_round_trips_and_rejects_garbage() {
        let p = Plan {
            reverse: true,
            verify: false,
            segments: 3,
            iters: None,
            tail: true,
            chunk: 1 << 19,
            sizes: DEFAULT_SIZES.to_vec(),
        };
        assert_eq!(Plan::from_words(&p.to_words()).unwrap(), p);
        let mut w = p.to_words();
        w[6] = 9;
        assert!(Plan::from_words(&w).is_err());
        w[0] = 0;
        assert!(Plan::from_words(&w).unwrap_err().contains("plan"));
    }
}
