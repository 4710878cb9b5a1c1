//! `Session`: C channels (a send comm and a recv comm each) to one peer, the memory
//! registry, transfer slots, and the polling loop that drives the channel windows.
//!
//! The handshake is symmetric: both sides `listen`, swap their conn info (`ListenHandles`) out
//! of band, then each connects to the peer's handles while accepting the peer's connects. After setup, `post`,
//! `poll` and `release` touch no allocator: every queue and table was sized from `Config`.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tcpx_core::chunk::{RecvWindow, SendWindow};
use tcpx_core::plan::{self, Plan, PlanConfig};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::span::Span;
use tcpx_core::wire::{ListenHandle, ListenHandles};

mod drive;

use super::bootstrap;
use super::config::Config;
use super::gpu::{current_device, CtxGuard, Gpu, GpuBinding, UnpackSource};
use super::registry::{MemId, Memory, Region, Registry, Windows};
use super::topology::{self, Place};
use super::transfer::{Direction, Progress, Segment, Slot, State, XferId};
use crate::error::{Error, Result};
use crate::net::{Comm, ConnectHandle, ListenComm, MemKind, Net, RecvComm, Request, SendComm};

/// A chunk on the network, send side.
struct TxChunk {
    req: Request,
    xfer: u32,
    region: u32,
}

/// A chunk on the network, receive side.
struct RxChunk {
    req: Request,
    xfer: u32,
    region: u32,
    /// Destination address (device address for device chunks).
    dst: u64,
    /// The channel's event that completes after this chunk's unpack; `None` while the
    /// unpack is queued for the next batched launch.
    ev: Option<u8>,
}

struct Channel {
    send: SendComm,
    recv: RecvComm,
    tx: SendWindow<TxChunk, TCPX_REQUESTS>,
    rx: RecvWindow<RxChunk, TCPX_REQUESTS>,
    /// Set when the plugin lands device-memory receives in bounce pages (TCPX's UNPACK).
    unpack: Option<UnpackSource>,
    /// Transfers (slot indices) with chunks still to post on this channel, oldest first.
    tx_queue: VecDeque<u32>,
    rx_queue: VecDeque<u32>,
}

/// The first half of the handshake: listen comms exist, `conn_info` can travel.
pub struct Listener {
    net: Net,
    cfg: Config,
    /// The plugin device of each channel.
    devices: Vec<u8>,
    /// The session's GPU, current around every plugin call that binds to one.
    gpu: Option<GpuBinding>,
    listens: Vec<ListenComm>,
    info: Vec<u8>,
}

impl Listener {
    /// Bytes to hand to the peer (a `ListenHandles` frame: one handle per channel).
    pub fn conn_info(&self) -> &[u8] {
        &self.info
    }

    /// Connects to the peer's handles while accepting its connects; bounded by
    /// `Config::timeout`. The peer must do the same concurrently.
    pub fn connect(mut self, peer_info: &[u8]) -> Result<Session> {
        let peer = ListenHandles::parse(peer_info)
            .map_err(|e| Error::Protocol(format!("peer conn info (listen handles): {e}")))?;
        let c = self.cfg.channels;
        if peer.handles.len() != c {
            return Err(Error::Config(format!(
                "peer uses {} channels, this side {c}: both must be configured alike",
                peer.handles.len()
            )));
        }
        // The receiver posts the chunks the sender's plan makes: both must cut alike.
        if peer.chunk_bytes != self.cfg.chunk_bytes {
            return Err(Error::Config(format!(
                "peer uses chunk_bytes {}, this side {}: both must be configured alike",
                peer.chunk_bytes, self.cfg.chunk_bytes
            )));
        }
        // Short transfers are cut into up to `split_chunks` chunks: both ends use the smaller
        // of the two values, so they cut alike whatever each was configured with.
        self.cfg.split_chunks = self.cfg.split_chunks.min(peer.split);
        let mut handles: Vec<ConnectHandle> = peer
            .handles
            .iter()
            .map(|h| ConnectHandle::from_bytes(*h))
            .collect();
        let mut sends: Vec<Option<SendComm>> = (0..c).map(|_| None).collect();
        let mut recvs: Vec<Option<RecvComm>> = (0..c).map(|_| None).collect();
        let deadline = Instant::now() + self.cfg.timeout;
        // TCPX binds a send comm to the GPU current at `connect` and a recv comm to the one
        // current at its first `accept` call; this thread keeps the session's GPU current
        // through the whole loop. All channels progress together (TCPX's accept takes ≥ 5 s).
        let current = self.gpu.as_ref().map(GpuBinding::enter).transpose()?;
        loop {
            let mut missing = 0;
            for i in 0..c {
                if sends[i].is_none() {
                    let dev = usize::from(self.devices[i]);
                    sends[i] = self.net.connect(dev, &mut handles[i])?;
                }
                if recvs[i].is_none() {
                    recvs[i] = self.net.accept(&mut self.listens[i])?;
                }
                missing += usize::from(sends[i].is_none()) + usize::from(recvs[i].is_none());
            }
            if missing == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(
                    "session handshake: the peer did not connect/accept in time",
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(current);
        let mut channels = Vec::with_capacity(c);
        for (send, recv) in sends.into_iter().zip(recvs) {
            let recv = recv.expect("accepted");
            channels.push(Channel {
                send: send.expect("connected"),
                unpack: unpack_source(&recv, self.gpu.as_ref())?,
                recv,
                tx: SendWindow::new(),
                rx: RecvWindow::new(),
                tx_queue: VecDeque::with_capacity(self.cfg.max_transfers),
                rx_queue: VecDeque::with_capacity(self.cfg.max_transfers),
            });
        }
        let slots = (0..self.cfg.max_transfers)
            .map(|_| Slot::new(self.cfg.max_segments, c))
            .collect();
        let free = (0..self.cfg.max_transfers as u32).rev().collect();
        // CUDA memory is registered on every channel: each channel's device must take it.
        let mut cuda_ok = true;
        for &d in &self.devices {
            cuda_ok &= self.net.properties(usize::from(d))?.ptr_support.cuda();
        }
        Ok(Session {
            cuda_ok,
            devices: self.devices,
            binding: self.gpu,
            gpu: None,
            queued: Vec::with_capacity(c * TCPX_REQUESTS),
            consumed_needed: self.net.has_irecv_consumed(),
            net: self.net,
            cfg: self.cfg,
            channels,
            registry: Registry::default(),
            slots,
            free,
            next_first: [0; 2],
            broken: None,
            _listens: self.listens,
            restore_ctx: None,
        })
    }
}

/// A connection of `C` channels to one peer.
pub struct Session {
    net: Net,
    cfg: Config,
    channels: Vec<Channel>,
    registry: Registry,
    slots: Vec<Slot>,
    /// Free slot indices (a stack with capacity `max_transfers`).
    free: Vec<u32>,
    /// Round-robin start of the next plan, per direction (send, recv). Both peers advance
    /// theirs identically, so their plans stay mirror images.
    next_first: [u8; 2],
    /// Set when a plugin call failed: the comms' state is unknown, nothing more is posted.
    broken: Option<String>,
    /// Whether the plugin wants `irecvConsumed` after every completed receive.
    consumed_needed: bool,
    /// Whether the plugin accepts CUDA pointers.
    cuda_ok: bool,
    /// The plugin device of each channel.
    devices: Vec<u8>,
    /// The session's GPU ([`Config::gpu`]), current around the plugin calls that bind to
    /// one; `None` until a registration names one where no GPU was known at the handshake.
    binding: Option<GpuBinding>,
    /// CUDA context, stream, kernels, events: created by the first device registration.
    gpu: Option<Gpu>,
    /// (channel, seq) of each unpack queued in `gpu` by this poll, launched together at its
    /// end (capacity: every window slot of every channel, so pushing never allocates).
    queued: Vec<(usize, u64)>,
    _listens: Vec<ListenComm>,
    /// Set by `drop` when a GPU is open: dropped last (fields drop in order), it puts the
    /// caller's current CUDA context back after the GPU's objects were released with the
    /// session's bound.
    restore_ctx: Option<CtxGuard>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.gpu.is_some() {
            self.restore_ctx = Some(CtxGuard::save());
        }
    }
}

impl Session {
    /// Opens the net named by `cfg` (its plugin, or the embedded `tcpxsock`).
    pub fn open_net(cfg: &Config) -> Result<Net> {
        let net = match &cfg.plugin {
            Some(p) => Net::load(p)?,
            None => Net::embedded(),
        };
        net.init()?;
        let n = net.devices()?;
        let listed = match &cfg.devices {
            tcpx_core::topology::Devices::List(l) => l.iter().find(|&&d| usize::from(d) >= n),
            _ => None,
        };
        if let Some(&d) = listed {
            return Err(Error::Config(format!(
                "device {d} does not exist: the plugin has {n} (TCPX_DEVICES / TCPX_DEVICE)"
            )));
        }
        Ok(net)
    }

    /// First half of the handshake: one listen comm per channel.
    pub fn listen(net: Net, cfg: Config) -> Result<Listener> {
        cfg.validate()?;
        // TCPX's listen comm steers flows to the GPU current at `listen`.
        let gpu = cfg
            .gpu
            .or_else(current_device)
            .map(GpuBinding::open)
            .transpose()?;
        let place = Place::of(gpu.as_ref().map(GpuBinding::device));
        let devices = topology::channel_devices(&net, &cfg.devices, cfg.channels, &place)?;
        let current = gpu.as_ref().map(GpuBinding::enter).transpose()?;
        let listens = devices
            .iter()
            .map(|&d| net.listen(usize::from(d)))
            .collect::<Result<Vec<_>>>()?;
        drop(current);
        let handles: Vec<ListenHandle> = listens.iter().map(|l| *l.handle().as_bytes()).collect();
        let msg = ListenHandles {
            chunk_bytes: cfg.chunk_bytes,
            split: cfg.split_chunks,
            handles: &handles,
        };
        let mut info = vec![0u8; msg.buffer_len()];
        msg.emit(&mut info)
            .map_err(|e| Error::Protocol(format!("conn info (listen handles): {e}")))?;
        Ok(Listener {
            net,
            cfg,
            devices,
            gpu,
            listens,
            info,
        })
    }

    /// Whole handshake with the conn info carried by the TCP bootstrap: the side with
    /// `accept_on` waits for the peer, the other connects to `peer`.
    pub fn establish(net: Net, cfg: Config, rendezvous: Rendezvous<'_>) -> Result<Session> {
        let timeout = cfg.timeout;
        let l = Session::listen(net, cfg)?;
        let peer = match rendezvous {
            Rendezvous::Accept(tcp) => bootstrap::accept_exchange(tcp, l.conn_info(), timeout)?,
            Rendezvous::Connect(addr) => bootstrap::connect_exchange(addr, l.conn_info(), timeout)?,
        };
        l.connect(&peer)
    }

    /// The configuration this session runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The plugin device (NIC) each channel uses, by channel.
    pub fn channel_devices(&self) -> &[u8] {
        &self.devices
    }

    /// The loaded net.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Why the session stopped working, if it did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Registers `len` bytes at `ptr` on every comm of the session.
    ///
    /// # Safety
    /// `ptr..ptr+len` is valid memory of the stated kind and stays valid (and is not freed)
    /// until `deregister` returns.
    pub unsafe fn register(
        &mut self,
        ptr: *mut c_void,
        len: usize,
        memory: Memory,
    ) -> Result<MemId> {
        if ptr.is_null() || len == 0 {
            return Err(Error::Invalid("register: null pointer or zero length"));
        }
        let kind = memory.kind();
        if kind == MemKind::Device && !self.cuda_ok {
            return Err(Error::Unsupported(
                "the ncclNet plugin does not accept CUDA pointers on this machine",
            ));
        }
        // What the driver knows of the memory must agree, before anything is opened for it
        // (a GPU the machine lacks, host memory named device memory, … are named as such
        // before the session's own rules below).
        super::gpu::check_registration(ptr as u64, len as u64, memory)?;
        if let Memory::Cuda { device } = memory {
            match &self.binding {
                Some(b) if b.device() != device => {
                    return Err(Error::Invalid(
                        "register: device memory of another GPU than the session's (a session \
                         drives one GPU: TCPX_GPU, NIXL parameter gpu)",
                    ))
                }
                None if self.unpacks() => {
                    return Err(Error::Config(format!(
                        "register: device memory of GPU {device}, but no GPU was known when the \
                         session connected, and this plugin binds its receive queues to the GPU \
                         current then: set TCPX_GPU (NIXL parameter gpu)"
                    )))
                }
                _ => {}
            }
        }
        // The first device registration opens the session's GPU, kept only if the
        // registration succeeds (so a failed one changes nothing). Whatever is dropped on the
        // way out is dropped before the caller's context is put back.
        let _restore = (kind == MemKind::Device).then(CtxGuard::save);
        let new_binding = match memory {
            Memory::Cuda { device } if self.binding.is_none() => Some(GpuBinding::open(device)?),
            _ => None,
        };
        let new_gpu = match memory {
            Memory::Cuda { device } if self.gpu.is_none() => {
                Some(Gpu::open(device, self.channels.len())?)
            }
            _ => None,
        };
        // TCPX registers CUDA memory only from a 4 KiB-aligned address, binds it to the GPU
        // current at the call, and takes an `int` size in v7.
        let align = match kind {
            MemKind::Device => 4096,
            MemKind::Host => 1,
        };
        let windows = Windows::plan(
            ptr as u64,
            len as u64,
            align,
            self.net.max_reg_bytes() as u64,
        );
        let current = match kind {
            MemKind::Device => new_binding
                .as_ref()
                .or(self.binding.as_ref())
                .map(GpuBinding::enter)
                .transpose()?,
            MemKind::Host => None,
        };
        let mut regs = Vec::with_capacity(self.channels.len() * windows.count);
        for ch in &self.channels {
            for w in 0..windows.count {
                let (start, wlen) = windows.span(w);
                let p = start as *mut c_void;
                // SAFETY: the caller guarantees the memory; a window widened down to the
                // aligned base stays within the same allocation's pages (the driver maps whole
                // pages); the comms are open. A registration dropped on an error path is
                // released by its drop.
                let s = unsafe { self.net.reg_mr(&ch.send, p, wlen as usize, kind)? };
                // SAFETY: as above.
                let r = unsafe { self.net.reg_mr(&ch.recv, p, wlen as usize, kind)? };
                regs.push((s, r));
            }
        }
        drop(current);
        if let Some(b) = new_binding {
            self.binding = Some(b);
        }
        if let Some(gpu) = new_gpu {
            self.gpu = Some(gpu);
        }
        Ok(self.registry.insert(Region {
            base: ptr.cast(),
            len: len as u64,
            memory,
            windows,
            regs,
            in_flight: 0,
        }))
    }

    /// Whether the plugin hands receives to the engine to unpack (TCPX's UNPACK device).
    fn unpacks(&self) -> bool {
        self.channels.iter().any(|c| c.unpack.is_some())
    }

    /// Whether a live transfer (posted and not finished, an abandoned one included) names
    /// region `id`: until none does, `deregister` refuses and the plugin may still move bytes
    /// into or out of the memory. A transfer's chunks are posted over later polls, so the
    /// region must outlive the transfer, not only its chunks on the network.
    pub fn in_use(&self, id: MemId) -> Result<bool> {
        self.registry.get(id)?;
        Ok(self
            .slots
            .iter()
            .any(|s| s.state == State::Active && s.regions.contains(&id.index())))
    }

    /// Releases a registration. Fails while a live transfer (posted and not finished, an
    /// abandoned one included) names it, or chunks on it are in flight.
    pub fn deregister(&mut self, id: MemId) -> Result<()> {
        if self.in_use(id)? {
            return Err(Error::Invalid(
                "deregister: a live transfer still uses the region; wait for it or release it and let it finish",
            ));
        }
        let region = self.registry.remove(id)?;
        for (s, r) in region.regs {
            self.net.dereg_mr(s)?;
            self.net.dereg_mr(r)?;
        }
        Ok(())
    }

    /// Validates, plans and queues a transfer; chunks go out on the following polls.
    pub fn post(&mut self, dir: Direction, segments: &[Segment]) -> Result<XferId> {
        if let Some(why) = &self.broken {
            return Err(Error::Broken(why.clone()));
        }
        if segments.len() > self.cfg.max_segments {
            return Err(Error::Invalid(
                "post: more segments than Config::max_segments",
            ));
        }
        for s in segments {
            let r = self.registry.get(s.mem)?;
            // The region's bytes by offset; a segment must lie wholly inside them.
            if Span::new(0, r.len)
                .and_then(|region| region.sub(s.offset, s.len))
                .is_none()
            {
                return Err(Error::Invalid("post: a segment lies outside its region"));
            }
        }
        let index = self.free.pop().ok_or(Error::Invalid(
            "post: Config::max_transfers transfers are already live; release some",
        ))?;
        let d = dir as usize;
        let cfg = PlanConfig::new(self.cfg.chunk_bytes, self.cfg.channels as u8)
            .with_first_channel(self.next_first[d])
            .with_split(self.cfg.split_chunks);
        let slot = &mut self.slots[index as usize];
        slot.segments.clear();
        slot.regions.clear();
        for s in segments {
            slot.segments.push(plan::Segment {
                local_offset: s.offset,
                remote_offset: s.remote_offset,
                len: s.len,
            });
            slot.regions.push(s.mem.index());
        }
        let p = match Plan::new(&slot.segments, cfg) {
            Ok(p) => p,
            Err(_) => {
                self.free.push(index);
                return Err(Error::Invalid("post: the segments cannot be planned"));
            }
        };
        self.next_first[d] = p.next_first_channel();
        let id = slot.gen.next(index);
        slot.state = if p.chunk_count() == 0 {
            State::Done
        } else {
            State::Active
        };
        slot.abandoned = false;
        slot.dir = dir;
        slot.plan_cfg = cfg;
        slot.chunks_left = p.chunk_count();
        slot.bytes_total = p.total_bytes();
        slot.bytes_done = 0;
        for (c, ch) in self.channels.iter_mut().enumerate() {
            let on = p.chunks_on(c as u8);
            slot.cursors[c] = (on > 0).then(|| p.channel_chunks(c as u8).detach());
            if on > 0 {
                match dir {
                    Direction::Send => ch.tx_queue.push_back(index),
                    Direction::Recv => ch.rx_queue.push_back(index),
                }
            }
        }
        Ok(id)
    }

    /// Drives every channel once, then reports on `id`.
    pub fn poll(&mut self, id: XferId) -> Result<Progress> {
        self.progress()?;
        self.status(id)
    }

    /// Where `id` stands, without driving anything.
    pub fn status(&self, id: XferId) -> Result<Progress> {
        let slot = self.slot(id)?;
        if slot.state == State::Failed {
            if let Some(why) = &self.broken {
                return Err(Error::Broken(why.clone()));
            }
        }
        slot.progress()
    }

    /// Forgets a transfer. One still in flight is abandoned: its chunks finish into memory
    /// (they cannot be recalled from the network) and its slot is reused afterwards.
    pub fn release(&mut self, id: XferId) -> Result<()> {
        let broken = self.broken.is_some();
        let slot = self.slot_mut(id)?;
        match slot.state {
            State::Active if !broken => slot.abandoned = true,
            _ => {
                slot.state = State::Free;
                self.free.push(id.index());
            }
        }
        Ok(())
    }

    /// Drives every channel: posts what the windows allow, tests heads, retires chunks.
    /// Returns whether anything moved.
    pub fn progress(&mut self) -> Result<bool> {
        if let Some(why) = &self.broken {
            return Err(Error::Broken(why.clone()));
        }
        // The GPU work below binds the session's context to this (the caller's) thread.
        let _restore = self.gpu.is_some().then(CtxGuard::save);
        let mut moved = false;
        for c in 0..self.channels.len() {
            match self.drive(c) {
                Ok(m) => moved |= m,
                Err(e) => {
                    // Which NIC failed: one session may spread over several.
                    let d = self.devices[c];
                    let why = format!(
                        "{e} (channel {c}, device {d} {})",
                        self.net
                            .properties(usize::from(d))
                            .map(|p| p.name)
                            .unwrap_or_default()
                    );
                    self.fail(&why);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.launch_unpacks() {
            self.fail(&e.to_string());
            return Err(e);
        }
        Ok(moved)
    }

    fn slot(&self, id: XferId) -> Result<&Slot> {
        match self.slots.get(id.index() as usize) {
            Some(s) if s.gen.issued(id) && s.state != State::Free => Ok(s),
            _ => Err(Error::Invalid("unknown or released transfer id")),
        }
    }

    fn slot_mut(&mut self, id: XferId) -> Result<&mut Slot> {
        match self.slots.get_mut(id.index() as usize) {
            Some(s) if s.gen.issued(id) && s.state != State::Free => Ok(s),
            _ => Err(Error::Invalid("unknown or released transfer id")),
        }
    }

    /// Drives until `id` is done (or fails), at most `timeout`. For tools and tests; a
    /// polling application calls [`Session::poll`] from its own loop.
    pub fn wait(&mut self, id: XferId, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Progress::Done { bytes } = self.poll(id)? {
                return Ok(bytes);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout("transfer did not complete in time"));
            }
            std::thread::yield_now();
        }
    }
}

/// How [`Session::establish`] meets its peer.
pub enum Rendezvous<'a> {
    /// Wait for the peer on this TCP listener.
    Accept(&'a TcpListener),
    /// Reach the peer's bootstrap listener.
    Connect(SocketAddr),
}

/// The UNPACK source of a recv comm whose plugin offloads receives to bounce pages.
fn unpack_source(recv: &RecvComm, gpu: Option<&GpuBinding>) -> Result<Option<UnpackSource>> {
    let Some(h) = recv.dev_handle() else {
        return Ok(None);
    };
    if h.net_device_type != tcpx_core::abi::NET_DEVICE_UNPACK {
        return Ok(None);
    }
    // SAFETY: an UNPACK device handle points at the plugin's `UnpackDevHandle` (in host or
    // device memory), alive as long as the comm.
    unsafe { UnpackSource::resolve(h.handle.cast(), gpu) }
}
