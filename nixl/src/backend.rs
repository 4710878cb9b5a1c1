//! The TCPX backend behind one NIXL engine: configuration, control listener, metadata table,
//! peers, requests and notifications.
//!
//! Every method takes `&self`: NIXL's RW sync mode runs the data-path methods concurrently, so
//! state sits behind locks (never held across a call into NIXL). Transfers an agent makes to
//! itself are served here with memcpy; transfers to other agents go to [`RemotePath`].

use std::collections::HashMap;
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use tcpx_core::wire::{MemKind, MAX_NAME, MAX_NOTIF};

use crate::blob;
use crate::config::Config;
use crate::control::Control;
use crate::error::{Arg, Error, Status};
use crate::registry::{random_key, MdId, MemTable, Region, Span};
use crate::remote::{self, CostModel, Mem, NotifQueue, Notifs, PeerInfo, RemotePath, RemoteXfer};
use crate::xfer::{self, Desc, Op};

/// The value NIXL holds as an `nixlBackendReqH*`: never 0.
pub type ReqId = usize;

/// NIXL's `nixl_mem_t` value for host memory.
pub const MEM_DRAM: i32 = 0;
/// NIXL's `nixl_mem_t` value for GPU memory.
pub const MEM_VRAM: i32 = 1;

/// Longest registration taken: the longest segment the engine moves (a transfer's neighbours
/// are joined up to a whole registration).
pub const MAX_REGION_BYTES: u64 = tcpx_core::plan::MAX_TRANSFER_BYTES;

/// Whether this process serves VRAM: a CUDA driver with a device is present (probed once,
/// without touching CUDA when the driver library is missing).
pub fn vram_supported() -> bool {
    static GPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GPU.get_or_init(|| tcpx_kernels::gpu_available().is_ok())
}

/// Refuses a GPU this machine does not have at creation, rather than at every handshake.
fn check_gpu(gpu: u32) -> Result<(), Error> {
    let bad = |reason: String| Error::Config {
        key: "gpu".into(),
        reason,
    };
    tcpx_kernels::gpu_available()
        .map_err(|why| bad(format!("GPU {gpu} named, but no GPU is usable: {why}")))?;
    let n = cudarc::driver::CudaContext::device_count().unwrap_or(0);
    if i64::from(gpu) >= i64::from(n) {
        return Err(bad(format!(
            "GPU {gpu} named, but this machine has {n} GPU(s)"
        )));
    }
    Ok(())
}

/// Loads the configured ncclNet plugin (the built-in tcpxsock when none is named) and checks
/// its table and devices now, so a file that is not a usable plugin, or a `devices` list it
/// does not have, fails creation with the reason instead of the first transfer.
fn check_plugin(config: &Config) -> Result<(), Error> {
    tcpx::engine::Session::open_net(&remote::engine_config(config))
        .map(drop)
        .map_err(|e| {
            let (key, what) = match (&e, &config.plugin_path) {
                (tcpx::Error::Config(_), _) => ("devices", String::new()),
                (_, Some(p)) => ("plugin_path", format!("{}: ", p.display())),
                (_, None) => ("plugin_path", "the built-in tcpxsock: ".to_owned()),
            };
            Error::Config {
                key: key.into(),
                reason: format!("{what}{e}"),
            }
        })
}

fn mem_kind(mem: i32) -> Result<MemKind, Error> {
    match mem {
        MEM_DRAM => Ok(MemKind::Dram),
        MEM_VRAM if vram_supported() => Ok(MemKind::Vram),
        other => Err(Error::UnsupportedMem(other)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic is caught at the FFI boundary; the state it interrupted is still consistent
    // (every update is a single insert or remove), so keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// One transfer request as `prepXfer` / `postXfer` see it.
#[derive(Debug, Clone, Copy)]
pub struct XferArgs<'a> {
    /// READ or WRITE.
    pub op: Op,
    /// Our side.
    pub local: &'a [Desc],
    /// `nixl_mem_t` of the local list.
    pub local_mem: i32,
    /// The target side.
    pub remote: &'a [Desc],
    /// `nixl_mem_t` of the remote list.
    pub remote_mem: i32,
    /// Target agent (may be ourselves).
    pub agent: &'a str,
    /// Notification to deliver to the target when the transfer completes.
    pub notif: Option<&'a [u8]>,
}

#[derive(Debug)]
struct Peer {
    info: PeerInfo,
    /// The blob as loaded, to tell a repeated load from a conflicting one.
    raw: Vec<u8>,
    connected: bool,
}

#[derive(Debug)]
enum Route {
    /// A transfer to ourselves; done synchronously by `postXfer`.
    Own { posted: bool },
    /// A transfer to another agent, driven by the engine.
    Remote(RemoteXfer),
}

#[derive(Debug)]
struct Request {
    op: Op,
    agent: String,
    route: Route,
}

/// The request handles. The table's lock is held only to find a request; each request has
/// its own lock, held through its post or check, so a post that first opens a conn (a
/// handshake: up to `timeout_ms`) holds up no other request.
#[derive(Debug, Default)]
struct Requests {
    last: ReqId,
    map: HashMap<ReqId, Arc<Mutex<Request>>>,
}

impl Requests {
    fn get(&self, id: ReqId) -> Result<Arc<Mutex<Request>>, Error> {
        self.map
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::invalid(Arg::Request, format!("unknown request handle {id:#x}")))
    }
}

/// The backend of one NIXL engine.
#[derive(Debug)]
pub struct Backend {
    agent: Arc<str>,
    config: Config,
    control: Control,
    conn_info: Vec<u8>,
    mem: Mem,
    peers: Mutex<HashMap<String, Peer>>,
    requests: Mutex<Requests>,
    notifs: Notifs,
    /// The agent's GPU: an engine session drives one GPU, so every VRAM region must be on it
    /// (one agent per GPU, as NIXL's users run them). Set at creation to the configured GPU
    /// (`Config::gpu`, which the sessions are bound to from their handshake on); only
    /// without one (no CUDA driver then) by the first VRAM registration.
    gpu: OnceLock<u32>,
    /// What copies to ourselves cost so far (`estimateXferCost`).
    own_cost: CostModel,
    /// Engine data path; its drop stops and joins the backend thread.
    remote: RemotePath,
}

// libnixl calls the data-path methods from several threads at once (RW sync mode).
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Backend>()
};

impl Backend {
    /// Creates the backend for agent `agent` from NIXL's custom parameters; binds the control
    /// listener.
    pub fn new<'a>(
        agent: &str,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        if agent.is_empty() || agent.len() > MAX_NAME {
            return Err(Error::invalid(
                Arg::Agent,
                format!(
                    "agent name must be 1..={MAX_NAME} bytes, got {}",
                    agent.len()
                ),
            ));
        }
        let config = Config::from_sources(params, |k| std::env::var(k).ok())?
            .resolve_gpu(tcpx::engine::current_device);
        if let Some(g) = config.gpu {
            check_gpu(g)?;
        }
        check_plugin(&config)?;
        let control = Control::bind(config.listen_addr)?;
        let conn_info = blob::encode_conn_info(agent, control.advertised(), config.channels)?;
        let mem = Arc::new(RwLock::new(MemTable::default()));
        let notifs = Arc::new(Mutex::new(NotifQueue::new(config.notif_queue_bytes)));
        let listener = control.listener().try_clone().map_err(|err| Error::Io {
            what: "sharing the control listener",
            err,
        })?;
        let remote = RemotePath::new(agent, &config, listener, mem.clone(), notifs.clone())?;
        let gpu = config.gpu.map_or_else(OnceLock::new, OnceLock::from);
        Ok(Self {
            agent: agent.into(),
            remote,
            config,
            control,
            conn_info,
            mem,
            peers: Mutex::new(HashMap::new()),
            requests: Mutex::new(Requests::default()),
            notifs,
            gpu,
            // A memcpy: about a microsecond to start, then several GB/s.
            own_cost: CostModel::new(std::time::Duration::from_micros(1), 5_000_000_000),
        })
    }

    /// Our agent name.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The control listener peers reach us on.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Transfers to other agents are offered (over the tcpx engine).
    pub fn supports_remote(&self) -> bool {
        true
    }

    /// Transfers to ourselves are offered.
    pub fn supports_local(&self) -> bool {
        true
    }

    /// Notifications are offered (NIXL requires them with remote support).
    pub fn supports_notif(&self) -> bool {
        true
    }

    /// `registerMem`: records one contiguous local region under a fresh random key.
    pub fn register_mem(&self, desc: &Desc, mem: i32) -> Result<MdId, Error> {
        let mem = mem_kind(mem)?;
        let span = Span::new(desc.addr, desc.len)
            .ok_or_else(|| Error::invalid(Arg::Descs, "region wraps around the address space"))?;
        if desc.len > MAX_REGION_BYTES {
            return Err(Error::invalid(
                Arg::Descs,
                format!(
                    "a region of {} bytes: at most {MAX_REGION_BYTES} (2^48, the most the engine \
                     moves in one piece) can be registered",
                    desc.len
                ),
            ));
        }
        let device = match mem {
            MemKind::Dram => 0,
            MemKind::Vram => u32::try_from(desc.dev_id)
                .ok()
                .filter(|&d| d <= i32::MAX as u32)
                .ok_or_else(|| Error::invalid(Arg::Descs, "device id out of range"))?,
        };
        let region = Region {
            span,
            mem,
            device,
            key: random_key(),
        };
        let other_gpu = |gpu: u32| {
            let why = if self.config.gpu.is_some() {
                "the backend parameter gpu, else TCPX_GPU, else the CUDA device current when \
                 the backend was created"
            } else {
                "its first VRAM registration"
            };
            Error::invalid(
                Arg::Descs,
                format!(
                    "VRAM on device {device}, but this agent's GPU is device {gpu} ({why}): the \
                     backend drives one GPU per agent; create an agent per GPU, each with its \
                     gpu parameter"
                ),
            )
        };
        // Cheap checks first: the agent's GPU, then what the CUDA driver knows of the memory
        // (kind, GPU, length): a transfer into a wrong one would write outside it or kill the
        // CUDA context.
        if let Some(&gpu) = self
            .gpu
            .get()
            .filter(|&&g| mem == MemKind::Vram && g != device)
        {
            return Err(other_gpu(gpu));
        }
        // The same range, memory and device registered again is the same registration, counted
        // once more: one token, so peers load the agent's metadata however often it lists it.
        {
            let mut table = write(&self.mem);
            if table.find(&region).is_some() {
                return Ok(table.register(region));
            }
        }
        let memory = match mem {
            MemKind::Dram => tcpx::engine::Memory::Host,
            MemKind::Vram => tcpx::engine::Memory::Cuda {
                device: device as i32,
            },
        };
        // Without a CUDA driver host memory needs no check (and the driver probe is cached in
        // `vram_supported`, not repeated per call); a region of no bytes has nothing to check.
        if desc.len > 0 && (mem == MemKind::Vram || vram_supported()) {
            tcpx::engine::check_registration(desc.addr, desc.len, memory)
                .map_err(|e| Error::invalid(Arg::Descs, e.to_string()))?;
        }
        if mem == MemKind::Vram {
            // Two first registrations racing: one device wins, the other is refused.
            let gpu = *self.gpu.get_or_init(|| device);
            if gpu != device {
                return Err(other_gpu(gpu));
            }
            self.remote.open_copier(device);
        }
        // Each peer session registers it at its first use there, so registering costs the
        // same however many peers are connected.
        Ok(write(&self.mem).register(region))
    }

    /// `deregisterMem`: one count of the registration goes; the last releases it everywhere.
    pub fn deregister_mem(&self, md: MdId) -> Result<(), Error> {
        let mut table = write(&self.mem);
        if table.deregister(md)?.is_some() {
            self.remote.deregister(md);
        }
        Ok(())
    }

    /// `getPublicData`: the region token peers load with `loadRemoteMD`.
    pub fn public_data(&self, md: MdId) -> Result<Vec<u8>, Error> {
        let token = read(&self.mem).token(md)?;
        blob::encode_token(&token)
    }

    /// `loadRemoteMD`: validates a peer's region token against the descriptor NIXL pairs it
    /// with.
    pub fn load_remote_md(
        &self,
        desc: &Desc,
        token: &[u8],
        mem: i32,
        agent: &str,
    ) -> Result<MdId, Error> {
        if agent == &*self.agent {
            return Err(Error::invalid(Arg::Agent, "remote metadata from ourselves"));
        }
        if !lock(&self.peers).contains_key(agent) {
            return Err(Error::UnknownAgent(agent.to_owned()));
        }
        let kind = mem_kind(mem)?;
        let token = blob::decode_token(token)?;
        if token.mem != kind {
            return Err(Error::Mismatch(format!(
                "token of {:?} memory loaded as {kind:?}",
                token.mem
            )));
        }
        let span = Span {
            base: token.base,
            len: token.len,
        };
        if !span.contains(desc.addr, desc.len) {
            return Err(Error::Mismatch(format!(
                "descriptor [{:#x}, +{}) not inside token [{:#x}, +{})",
                desc.addr, desc.len, token.base, token.len
            )));
        }
        Ok(write(&self.mem).load_remote(agent, token))
    }

    /// `loadLocalMD`: the target-side handle for transfers to ourselves.
    pub fn load_local_md(&self, md: MdId) -> Result<MdId, Error> {
        write(&self.mem).load_local(md)
    }

    /// `unloadMD`.
    pub fn unload_md(&self, md: MdId) -> Result<(), Error> {
        write(&self.mem).unload(md)
    }

    /// `getConnInfo`: version, control address, channels and agent name.
    pub fn conn_info(&self) -> &[u8] {
        &self.conn_info
    }

    /// `loadRemoteConnInfo`: a repeated identical load is accepted, a conflicting one is not.
    pub fn load_remote_conn_info(&self, agent: &str, info: &[u8]) -> Result<(), Error> {
        if agent.is_empty() || agent == &*self.agent {
            return Err(Error::invalid(
                Arg::Agent,
                format!("cannot load connection info for {agent:?}"),
            ));
        }
        let (peer, name) = blob::decode_conn_info(info)?;
        if name != agent {
            return Err(Error::Mismatch(format!(
                "connection info of {name:?} loaded for agent {agent:?}"
            )));
        }
        let mut peers = lock(&self.peers);
        if let Some(known) = peers.get(agent) {
            return if known.raw == info {
                Ok(())
            } else {
                Err(Error::AgentAlreadyLoaded(agent.to_owned()))
            };
        }
        peers.insert(
            agent.to_owned(),
            Peer {
                info: peer,
                raw: info.to_vec(),
                connected: false,
            },
        );
        Ok(())
    }

    /// `connect`: ourselves always; a peer once its connection info is loaded.
    pub fn connect(&self, agent: &str) -> Result<(), Error> {
        if agent == &*self.agent {
            return Ok(());
        }
        // Not under the peer table's lock: the handshake takes up to `timeout_ms` (TCPX's
        // accept alone 5 s), and transfers to other peers need the table meanwhile.
        let info = self.peer_info(agent)?;
        self.remote.connect(agent, &info)?;
        // A peer disconnected during the handshake has no entry left to mark.
        if let Some(peer) = lock(&self.peers).get_mut(agent) {
            peer.connected = true;
        }
        Ok(())
    }

    /// `disconnect`: forgets the peer (NIXL has unloaded its metadata first).
    pub fn disconnect(&self, agent: &str) -> Result<(), Error> {
        if agent == &*self.agent {
            return Ok(());
        }
        lock(&self.peers)
            .remove(agent)
            .ok_or_else(|| Error::UnknownAgent(agent.to_owned()))?;
        self.remote.disconnect(agent);
        Ok(())
    }

    /// Whether `agent` is a loaded peer that `connect` was called for.
    pub fn is_connected(&self, agent: &str) -> bool {
        lock(&self.peers).get(agent).is_some_and(|p| p.connected)
    }

    fn peer_info(&self, agent: &str) -> Result<PeerInfo, Error> {
        lock(&self.peers)
            .get(agent)
            .map(|p| p.info.clone())
            .ok_or_else(|| Error::UnknownAgent(agent.to_owned()))
    }

    fn check_args(&self, a: &XferArgs<'_>) -> Result<(), Error> {
        mem_kind(a.local_mem)?;
        mem_kind(a.remote_mem)?;
        match a.notif {
            Some(n) => self.check_notif(a.agent, n),
            None => Ok(()),
        }
    }

    /// A notification for `agent` no longer than it takes: ours for ourselves
    /// (`max_notif_bytes`); for a peer what the wire carries, and on its conn what the peer
    /// told us it takes.
    fn check_notif(&self, agent: &str, msg: &[u8]) -> Result<(), Error> {
        let (max, whose) = if agent == &*self.agent {
            (
                self.config.max_notif_bytes as usize,
                "this agent's max_notif_bytes",
            )
        } else {
            (MAX_NOTIF, "the most the wire carries")
        };
        if msg.len() > max {
            return Err(Error::invalid(
                Arg::Notif,
                format!("{} bytes, at most {max} ({whose})", msg.len()),
            ));
        }
        Ok(())
    }

    /// `prepXfer`: validates the request completely and returns its handle.
    pub fn prep_xfer(&self, a: &XferArgs<'_>) -> Result<ReqId, Error> {
        self.check_args(a)?;
        let route = if a.agent == &*self.agent {
            // Transfers to ourselves are copies: by the CPU between host memories, else by the
            // copier of the device involved.
            let segments = xfer::plan(&read(&self.mem), &self.agent, a.agent, a.local, a.remote)?;
            if segments
                .iter()
                .filter_map(xfer::Segment::own_device)
                .any(|d| self.remote.copier(d).is_none())
            {
                return Err(Error::UnsupportedMem(MEM_VRAM));
            }
            Route::Own { posted: false }
        } else {
            let peer = self.peer_info(a.agent)?;
            let table = read(&self.mem);
            let segments = xfer::plan(&table, &self.agent, a.agent, a.local, a.remote)?;
            drop(table);
            Route::Remote(self.remote.prepare(a.op, a.agent, &peer, segments)?)
        };
        let mut reqs = lock(&self.requests);
        reqs.last += 1;
        let id = reqs.last;
        reqs.map.insert(
            id,
            Arc::new(Mutex::new(Request {
                op: a.op,
                agent: a.agent.to_owned(),
                route,
            })),
        );
        Ok(id)
    }

    /// `postXfer`: starts (for ourselves: performs) a prepared request; `*handle == 0` prepares
    /// first. May be called again on a completed request to repeat it.
    pub fn post_xfer(&self, a: &XferArgs<'_>, handle: &mut ReqId) -> Result<Status, Error> {
        self.check_args(a)?;
        if *handle == 0 {
            *handle = self.prep_xfer(a)?;
        }
        let req = lock(&self.requests).get(*handle)?;
        let mut req = lock(&req);
        if req.op != a.op || req.agent != a.agent {
            return Err(Error::invalid(
                Arg::Request,
                "request was prepared for another operation or agent",
            ));
        }
        match &mut req.route {
            Route::Remote(x) => {
                let peer = self.peer_info(a.agent)?;
                return self.remote.post(a.agent, &peer, x, a.notif);
            }
            // A repost that fails must not leave the previous post's SUCCESS standing.
            Route::Own { posted } => *posted = false,
        }
        // Only this request is locked during the copy, so transfers to ourselves run in
        // parallel under NIXL's RW sync mode.
        let started = std::time::Instant::now();
        let copied = {
            // Revalidate under the metadata table's read lock and copy while holding it, so no
            // registration can be dropped between the check and the copy.
            // The check allocates nothing (no segment list), so reposts stay off the heap.
            let table = read(&self.mem);
            // SAFETY: the function checks every segment to lie inside a live registration
            // before copying (device memory with its device's copier); the read guard keeps
            // them live.
            unsafe {
                xfer::revalidate_and_copy_own(&table, &self.agent, a.op, a.local, a.remote, |d| {
                    self.remote.copier(d)
                })
            }
        };
        copied?;
        self.own_cost
            .observe(a.local.iter().map(|d| d.len).sum(), started.elapsed());
        // Queued whatever the bound (our own application takes it, it cannot wait for itself).
        if let Some(msg) = a.notif {
            lock(&self.notifs).push_own(self.agent.clone(), msg.to_vec());
        }
        req.route = Route::Own { posted: true };
        Ok(Status::Success)
    }

    /// `checkXfer`.
    pub fn check_xfer(&self, handle: ReqId) -> Result<Status, Error> {
        let req = lock(&self.requests).get(handle)?;
        let mut req = lock(&req);
        match &mut req.route {
            Route::Own { posted: true } => Ok(Status::Success),
            Route::Own { posted: false } => Err(Error::NotPosted),
            Route::Remote(x) => self.remote.check(x),
        }
    }

    /// `releaseReqH`: never blocks; an in-flight remote transfer is aborted.
    pub fn release_req(&self, handle: ReqId) -> Result<(), Error> {
        let req = lock(&self.requests).map.remove(&handle).ok_or_else(|| {
            Error::invalid(Arg::Request, format!("unknown request handle {handle:#x}"))
        })?;
        // Waits only for a call another thread is making on this very handle.
        let route = std::mem::replace(&mut lock(&req).route, Route::Own { posted: false });
        if let Route::Remote(x) = route {
            self.remote.abort(x);
        }
        Ok(())
    }

    /// `getNotifs`: hands each queued `(sender, message)` to `sink` in arrival order; one the
    /// sink refuses stays queued.
    pub fn take_notifs(&self, mut sink: impl FnMut(&str, &[u8]) -> bool) -> Result<(), Error> {
        let mut q = lock(&self.notifs);
        while let Some((from, msg)) = q.front() {
            if !sink(from, msg) {
                return Err(Error::Output("a notification"));
            }
            q.pop_front();
        }
        Ok(())
    }

    /// `genNotif`: a notification not tied to a transfer.
    pub fn gen_notif(&self, agent: &str, msg: &[u8]) -> Result<(), Error> {
        self.check_notif(agent, msg)?;
        if agent == &*self.agent {
            lock(&self.notifs).push_own(self.agent.clone(), msg.to_vec());
            return Ok(());
        }
        let peer = self.peer_info(agent)?;
        self.remote.notify(agent, &peer, msg)
    }

    /// Live metadata handles (for leak checks).
    pub fn live_metadata(&self) -> usize {
        read(&self.mem).len()
    }

    /// Live request handles (for leak checks).
    pub fn live_requests(&self) -> usize {
        lock(&self.requests).map.len()
    }

    /// READs this agent answered inline so far (for tests: which path a READ took).
    pub fn inline_answers(&self) -> u64 {
        self.remote.inline_answers()
    }

    /// WRITEs this agent took inline so far (for tests: which path a WRITE took).
    pub fn inline_writes(&self) -> u64 {
        self.remote.inline_writes()
    }

    /// WRITEs this agent refused after their data was on the wire, whose data it received and
    /// dropped (for tests: which path a refusal took).
    pub fn drained_writes(&self) -> u64 {
        self.remote.drained()
    }

    /// `estimateXferCost`: expected duration and margin of a transfer of `bytes` to `agent`
    /// (or of the prepared request `handle`, when not 0), from what this agent's transfers
    /// cost so far: a latency and a throughput, each a moving average, for transfers to peers
    /// and for copies to ourselves.
    pub fn estimate_xfer_cost(
        &self,
        agent: &str,
        bytes: u64,
        handle: ReqId,
    ) -> Result<(std::time::Duration, std::time::Duration), Error> {
        let bytes = match handle {
            0 => bytes,
            h => {
                let req = lock(&self.requests).get(h)?;
                let req = lock(&req);
                match &req.route {
                    Route::Remote(x) => x.bytes(),
                    Route::Own { .. } => bytes,
                }
            }
        };
        if agent == &*self.agent {
            return Ok(self.own_cost.estimate(bytes));
        }
        self.peer_info(agent)?;
        Ok(self.remote.cost().estimate(bytes))
    }

    /// Bytes the notification queue counts against `notif_queue_bytes` now (queued and
    /// reserved; for tests).
    pub fn notif_bytes_held(&self) -> u64 {
        lock(&self.notifs).held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Backend {
        Backend::new(name, [("listen_addr", "127.0.0.1:0")]).unwrap()
    }

    fn d(addr: u64, len: u64, md: MdId) -> Desc {
        Desc {
            addr,
            len,
            dev_id: 0,
            md,
        }
    }

    fn args<'a>(op: Op, l: &'a [Desc], r: &'a [Desc], agent: &'a str) -> XferArgs<'a> {
        XferArgs {
            op,
            local: l,
            local_mem: MEM_DRAM,
            remote: r,
            remote_mem: MEM_DRAM,
            agent,
            notif: None,
        }
    }

    #[test]
    fn creation_validates_name_and_params() {
        assert!(Backend::new("", []).is_err());
        assert!(Backend::new(&"x".repeat(MAX_NAME + 1), []).is_err());
        let e = Backend::new("a", [("window", "0")]).unwrap_err();
        assert_eq!(e.status(), Status::InvalidParam);
    }

    #[test]
    fn conn_info_names_a_reachable_listener() {
        let b = backend("a");
        let (peer, name) = blob::decode_conn_info(b.conn_info()).unwrap();
        assert_eq!(name, "a");
        assert_eq!(peer.addr, b.control().advertised());
        assert_eq!(peer.channels, 2);
        std::net::TcpStream::connect(peer.addr).unwrap();
    }

    #[test]
    fn self_write_read_and_notif() {
        let b = backend("a");
        let mut src = vec![0u8; 4096];
        let mut dst = vec![0u8; 4096];
        src.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (i % 251) as u8);
        let s = src.as_mut_ptr() as u64;
        let t = dst.as_mut_ptr() as u64;
        let ms = b.register_mem(&d(s, 4096, 0), MEM_DRAM).unwrap();
        let mt = b.register_mem(&d(t, 4096, 0), MEM_DRAM).unwrap();
        let at = b.load_local_md(mt).unwrap();
        b.connect("a").unwrap();

        let (l, r) = ([d(s, 4096, ms)], [d(t, 4096, at)]);
        let mut a = args(Op::Write, &l, &r, "a");
        a.notif = Some(b"done");
        let mut h = b.prep_xfer(&a).unwrap();
        assert_eq!(b.check_xfer(h).unwrap_err().status(), Status::NotPosted);
        assert_eq!(b.post_xfer(&a, &mut h).unwrap(), Status::Success);
        assert_eq!(b.check_xfer(h).unwrap(), Status::Success);
        b.release_req(h).unwrap();
        assert_eq!(dst, src);
        let mut got = Vec::new();
        b.take_notifs(|from, m| {
            got.push((from.to_owned(), m.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(got, [("a".to_owned(), b"done".to_vec())]);

        dst[100..200].fill(7);
        let (l, r) = ([d(s + 100, 100, ms)], [d(t + 100, 100, at)]);
        let mut h = 0;
        assert_eq!(
            b.post_xfer(&args(Op::Read, &l, &r, "a"), &mut h).unwrap(),
            Status::Success
        );
        assert_eq!(&src[100..200], &[7u8; 100][..]);
        b.release_req(h).unwrap();
        assert_eq!(b.live_requests(), 0);

        b.deregister_mem(ms).unwrap();
        b.deregister_mem(mt).unwrap();
        b.unload_md(at).unwrap();
        assert_eq!(b.live_metadata(), 0);
    }

    #[test]
    fn bad_transfers_are_rejected_before_anything_moves() {
        let b = backend("a");
        let mut buf = vec![1u8; 256];
        let p = buf.as_mut_ptr() as u64;
        let m = b.register_mem(&d(p, 256, 0), MEM_DRAM).unwrap();
        let al = b.load_local_md(m).unwrap();
        let st = |r: Result<ReqId, Error>| r.unwrap_err().status();
        let (l, r) = ([d(p, 128, m)], [d(p + 128, 129, al)]);
        assert_eq!(
            st(b.prep_xfer(&args(Op::Write, &l, &r, "a"))),
            Status::InvalidParam
        );
        let (l, r) = ([d(p, 128, m)], [d(p + 200, 128, al)]);
        assert_eq!(
            st(b.prep_xfer(&args(Op::Write, &l, &r, "a"))),
            Status::InvalidParam
        );
        let (l, r) = ([d(p, 128, m)], [d(p + 128, 128, al)]);
        assert_eq!(
            st(b.prep_xfer(&args(Op::Write, &l, &r, "nobody"))),
            Status::NotFound
        );
        let mut vram = args(Op::Write, &l, &r, "a");
        vram.remote_mem = MEM_VRAM;
        assert_eq!(st(b.prep_xfer(&vram)), Status::NotSupported);
        assert_eq!(
            b.check_xfer(12345).unwrap_err().status(),
            Status::InvalidParam
        );
        assert_eq!(
            b.release_req(12345).unwrap_err().status(),
            Status::InvalidParam
        );
        assert!(buf.iter().all(|&x| x == 1));
        assert_eq!(b.live_requests(), 0);
        buf[0] = 2; // keep `buf` alive and mutable past the registrations
    }

    #[test]
    fn peers_load_metadata_and_prepare_remote_transfers() {
        let a = backend("a");
        let b = backend("b");
        let mut buf = vec![0u8; 64];
        let p = buf.as_mut_ptr() as u64;
        let mb = b.register_mem(&d(p, 64, 0), MEM_DRAM).unwrap();
        let ma = a.register_mem(&d(p, 64, 0), MEM_DRAM).unwrap();
        let token = b.public_data(mb).unwrap();

        assert_eq!(
            a.load_remote_md(&d(p, 64, 0), &token, MEM_DRAM, "b")
                .unwrap_err()
                .status(),
            Status::NotFound
        );
        assert_eq!(a.connect("b").unwrap_err().status(), Status::NotFound);
        a.load_remote_conn_info("b", b.conn_info()).unwrap();
        a.load_remote_conn_info("b", b.conn_info()).unwrap();
        assert_eq!(
            a.load_remote_conn_info("c", b.conn_info())
                .unwrap_err()
                .status(),
            Status::Mismatch
        );
        a.connect("b").unwrap();
        assert!(a.is_connected("b"));
        assert_eq!(
            a.load_remote_md(&d(p, 65, 0), &token, MEM_DRAM, "b")
                .unwrap_err()
                .status(),
            Status::Mismatch
        );
        assert_eq!(
            a.load_remote_md(&d(p, 64, 0), b"junk", MEM_DRAM, "b")
                .unwrap_err()
                .status(),
            Status::InvalidParam
        );
        let rb = a
            .load_remote_md(&d(p, 64, 0), &token, MEM_DRAM, "b")
            .unwrap();

        let (l, r) = ([d(p, 64, ma)], [d(p, 64, rb)]);
        let h = a.prep_xfer(&args(Op::Write, &l, &r, "b")).unwrap();
        assert_eq!(a.check_xfer(h).unwrap_err().status(), Status::NotPosted);
        a.release_req(h).unwrap();
        let (l, r) = ([d(p, 64, ma)], [d(p + 1, 64, rb)]);
        let e = a.prep_xfer(&args(Op::Write, &l, &r, "b")).unwrap_err();
        assert_eq!(e.status(), Status::InvalidParam, "range is checked first");

        a.unload_md(rb).unwrap();
        a.disconnect("b").unwrap();
        assert_eq!(a.disconnect("b").unwrap_err().status(), Status::NotFound);
        buf[0] = 1;
    }

    /// Two backends that know each other, their data sessions on loopback.
    fn linked() -> (Backend, Backend) {
        linked_with(&[])
    }

    fn linked_with(extra: &[(&str, &str)]) -> (Backend, Backend) {
        linked_each(extra, extra)
    }

    /// `a` and `b` with their own extra options.
    fn linked_each(a_extra: &[(&str, &str)], b_extra: &[(&str, &str)]) -> (Backend, Backend) {
        tcpx_sock::config::configure(tcpx_sock::config::Config {
            ifname: Some("lo".into()),
            ..Default::default()
        });
        let base = [("listen_addr", "127.0.0.1:0"), ("timeout_ms", "5000")];
        let a = Backend::new("a", base.iter().chain(a_extra).copied()).unwrap();
        let b = Backend::new("b", base.iter().chain(b_extra).copied()).unwrap();
        a.load_remote_conn_info("b", b.conn_info()).unwrap();
        b.load_remote_conn_info("a", a.conn_info()).unwrap();
        (a, b)
    }

    /// Polls until the request leaves IN_PROG; bounded so a stuck transfer fails the test.
    fn finish(b: &Backend, h: ReqId) -> Result<Status, Error> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match b.check_xfer(h) {
                Ok(Status::InProgress) => {}
                other => return other,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "transfer never finished"
            );
            std::thread::yield_now();
        }
    }

    fn notifs(b: &Backend) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        b.take_notifs(|from, m| {
            got.push((from.to_owned(), m.to_vec()));
            true
        })
        .unwrap();
        got
    }

    /// Registers `n` bytes at `s` on `a` ("a") and at `t` on `b` ("b"), and loads `b`'s into
    /// `a`: (a's md, b's md, b's region as `a` names it).
    /// Undoes [`dram_pair`] once every request is released, and checks none is left.
    fn undo_dram_pair(a: &Backend, b: &Backend, (ms, mt, rt): (MdId, MdId, MdId)) {
        a.unload_md(rt).unwrap();
        a.deregister_mem(ms).unwrap();
        b.deregister_mem(mt).unwrap();
        assert_eq!(a.live_requests(), 0);
    }

    fn dram_pair(a: &Backend, b: &Backend, s: u64, t: u64, n: u64) -> (MdId, MdId, MdId) {
        let ms = a.register_mem(&d(s, n, 0), MEM_DRAM).unwrap();
        let mt = b.register_mem(&d(t, n, 0), MEM_DRAM).unwrap();
        let rt = a
            .load_remote_md(&d(t, n, 0), &b.public_data(mt).unwrap(), MEM_DRAM, "b")
            .unwrap();
        (ms, mt, rt)
    }

    /// Descriptors 64 bytes long, 128 bytes apart at both ends (nothing to join), from `at`.
    fn strided(base: u64, md: MdId, at: usize, n: usize) -> Vec<Desc> {
        (0..n)
            .map(|i| d(base + ((at + i) * 128) as u64, 64, md))
            .collect()
    }

    #[test]
    fn transfers_of_many_parts_wait_for_room_and_land_whole() {
        let (a, b) = linked();
        // Two parts outstanding at most: most parts below wait for earlier ones.
        a.remote.set_max_outstanding(2);
        const N: usize = 3 * 1024 + 100; // four parts
        const BYTES: usize = 3 * N * 128;
        let mut src: Vec<u8> = (0..BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; BYTES];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ms, mt, rt) = dram_pair(&a, &b, s, t, BYTES as u64);
        // A WRITE of four parts, a READ of four parts and a small WRITE, all in flight.
        let (wl, wr) = (strided(s, ms, 0, N), strided(t, rt, 0, N));
        let (rl, rr) = (strided(s, ms, N, N), strided(t, rt, N, N));
        let (sl, sr) = (strided(s, ms, 2 * N, 1), strided(t, rt, 2 * N, 1));
        for i in 0..N {
            let at = (N + i) * 128;
            dst[at..at + 64].fill(0xA0 | (i % 16) as u8);
        }
        let mut w = args(Op::Write, &wl, &wr, "b");
        w.notif = Some(b"four parts");
        let mut small = args(Op::Write, &sl, &sr, "b");
        small.notif = Some(b"after");
        let (mut hw, mut hr, mut hs) = (0, 0, 0);
        a.post_xfer(&w, &mut hw).unwrap();
        a.post_xfer(&args(Op::Read, &rl, &rr, "b"), &mut hr)
            .unwrap();
        a.post_xfer(&small, &mut hs).unwrap();
        for h in [hw, hr, hs] {
            assert_eq!(finish(&a, h).unwrap(), Status::Success);
        }
        for i in 0..N {
            let at = i * 128;
            assert_eq!(dst[at..at + 64], src[at..at + 64], "WRITE descriptor {i}");
            assert!(dst[at + 64..at + 128].iter().all(|&v| v == 0), "gap {i}");
            let at = (N + i) * 128;
            assert!(
                src[at..at + 64].iter().all(|&v| v == 0xA0 | (i % 16) as u8),
                "READ descriptor {i}"
            );
        }
        let at = 2 * N * 128;
        assert_eq!(dst[at..at + 64], src[at..at + 64]);
        // Each WRITE's notification came once its data landed (the multi-part one's is sent
        // when every part is acknowledged; the small WRITE, posted while it ran, may come
        // first).
        let got = notifs(&b);
        let mut got: Vec<&[u8]> = got.iter().map(|(_, m)| m.as_slice()).collect();
        got.sort();
        assert_eq!(got, [&b"after"[..], &b"four parts"[..]]);
        for h in [hw, hr, hs] {
            a.release_req(h).unwrap();
        }
        undo_dram_pair(&a, &b, (ms, mt, rt));
    }

    #[test]
    fn a_refused_write_fails_alone_and_the_conn_keeps_serving() {
        let (a, b) = linked_with(&[("inline_write_bytes", "0")]);
        const N: usize = 8 << 20;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 247) as u8).collect();
        let mut dst = vec![0u8; N];
        let mut gone = vec![0x77u8; 1 << 20];
        let (s, t, g) = (
            src.as_mut_ptr() as u64,
            dst.as_mut_ptr() as u64,
            gone.as_mut_ptr() as u64,
        );
        let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
        let mg = b.register_mem(&d(g, 1 << 20, 0), MEM_DRAM).unwrap();
        let rg = a
            .load_remote_md(
                &d(g, 1 << 20, 0),
                &b.public_data(mg).unwrap(),
                MEM_DRAM,
                "b",
            )
            .unwrap();
        b.deregister_mem(mg).unwrap();
        // A healthy 8 MiB WRITE in flight, then one into the region b no longer has (a
        // thousand descriptors, so two parts), then READ from it.
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let mut h = 0;
        a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        let conn = a.remote.outgoing_id("b");
        let (bl, br) = (strided(s, ms, 0, 1500), strided(g, rg, 0, 1500));
        let mut bad = args(Op::Write, &bl, &br, "b");
        bad.notif = Some(b"never");
        let mut hb = 0;
        a.post_xfer(&bad, &mut hb).unwrap();
        let e = finish(&a, hb).unwrap_err();
        assert_eq!(e.status(), Status::InvalidParam, "{e}");
        assert!(e.to_string().contains("unknown region"), "{e}");
        let (rl, rr) = ([d(s, 4096, ms)], [d(g, 4096, rg)]);
        let mut hr = 0;
        a.post_xfer(&args(Op::Read, &rl, &rr, "b"), &mut hr)
            .unwrap();
        assert_eq!(finish(&a, hr).unwrap_err().status(), Status::InvalidParam);
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert!(dst == src, "the healthy WRITE landed whole");
        assert!(
            gone.iter().all(|&v| v == 0x77),
            "nothing of the refused WRITE landed"
        );
        assert!(b.drained_writes() >= 1);
        assert_eq!(a.remote.outgoing_id("b"), conn, "the conn stayed up");
        assert!(
            notifs(&b).is_empty(),
            "the refused WRITE's notification was not delivered"
        );
        // The conn serves the next transfer.
        dst.fill(0);
        a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert!(dst == src);
        for x in [h, hb, hr] {
            a.release_req(x).unwrap();
        }
        src[0] = 1;
    }

    /// Notification size in the full-queue test, and how many fit its 64 KiB queue.
    const NOTE: usize = 4096;
    const FIT: usize = (64 * 1024) / (NOTE + NotifQueue::ENTRY_OVERHEAD as usize);

    #[test]
    fn a_full_notification_queue_holds_the_peer_back_and_loses_nothing() {
        for inline_bytes in ["0", "16384"] {
            // A short timeout: the held WRITE outlives it three times over, kept alive by the
            // target's keepalives (every timeout / 4). Not shorter: on a loaded 2-core CI box
            // a 300 ms bound saw a scheduling stall longer than its 225 ms of slack.
            let (a, b) = linked_with(&[
                ("notif_queue_bytes", "65536"),
                ("max_notif_bytes", "4096"),
                ("timeout_ms", "500"),
                ("inline_write_bytes", inline_bytes),
            ]);
            const N: usize = 8192;
            let mut src: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
            let mut dst = vec![0u8; N];
            let mut own = vec![0u8; N];
            let (s, t, o) = (
                src.as_mut_ptr() as u64,
                dst.as_mut_ptr() as u64,
                own.as_mut_ptr() as u64,
            );
            let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);
            let mo = b.register_mem(&d(o, N as u64, 0), MEM_DRAM).unwrap();
            let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
            let note = |i: usize| -> Vec<u8> { vec![i as u8; NOTE] };
            let post = |n: Option<&[u8]>| {
                let mut w = args(Op::Write, &l, &r, "b");
                w.notif = n;
                let mut h = 0;
                a.post_xfer(&w, &mut h).unwrap();
                h
            };
            let write = |n: Option<&[u8]>| {
                let h = post(n);
                let st = finish(&a, h);
                a.release_req(h).unwrap();
                st
            };
            // WRITEs with notifications until the target's queue is full: each succeeds.
            for i in 0..FIT {
                assert_eq!(write(Some(&note(i))).unwrap(), Status::Success, "WRITE {i}");
            }
            let conn = a.remote.outgoing_id("b").expect("a conn to b");
            // The next one waits (its data not written), and so does everything after it on
            // the conn, for several timeouts: never refused, never timed out.
            dst.fill(0);
            src[0] = 0xEE;
            let held = post(Some(&note(FIT)));
            let behind = post(None);
            a.gen_notif("b", &note(FIT + 1)).unwrap();
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            while std::time::Instant::now() < until {
                assert_eq!(a.check_xfer(held).unwrap(), Status::InProgress);
                assert_eq!(a.check_xfer(behind).unwrap(), Status::InProgress);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(dst.iter().all(|&v| v == 0), "a held WRITE wrote nothing");
            // The application's own notifications are never held back.
            b.gen_notif("b", b"own").unwrap();
            let (bl, br) = ([d(t, N as u64, mt)], [d(o, N as u64, mo)]);
            let mut own_w = args(Op::Write, &bl, &br, "b");
            own_w.notif = Some(b"own write");
            let mut h = 0;
            assert_eq!(b.post_xfer(&own_w, &mut h).unwrap(), Status::Success);
            b.release_req(h).unwrap();
            assert_eq!(own, dst, "the self WRITE copied");
            // Taken: the conn resumes, everything lands in order, nothing lost.
            let got = notifs(&b);
            assert_eq!(got.len(), FIT + 2);
            for (i, (from, m)) in got[..FIT].iter().enumerate() {
                assert_eq!((from.as_str(), m), ("a", &note(i)), "notification {i}");
            }
            assert_eq!(got[FIT].1, b"own");
            assert_eq!(got[FIT + 1].1, b"own write");
            assert_eq!(finish(&a, held).unwrap(), Status::Success);
            assert_eq!(finish(&a, behind).unwrap(), Status::Success);
            assert_eq!(dst, src, "the held WRITE landed once taken");
            a.release_req(held).unwrap();
            a.release_req(behind).unwrap();
            assert_eq!(write(None).unwrap(), Status::Success);
            // (sender, length, first byte) of each: the notifications are 4 KiB.
            let got: Vec<(String, usize, u8)> = notifs(&b)
                .into_iter()
                .map(|(from, m)| (from, m.len(), m[0]))
                .collect();
            assert_eq!(
                got,
                [
                    ("a".to_owned(), NOTE, FIT as u8),
                    ("a".to_owned(), NOTE, FIT as u8 + 1)
                ],
                "the held WRITE's notification, then the one sent after it (inline {inline_bytes})"
            );
            assert_eq!(
                a.remote.outgoing_id("b"),
                Some(conn),
                "the conn stayed up throughout"
            );
            // A notification longer than the peer takes is refused at the initiator, naming
            // the bound, before anything is sent.
            let e = a.gen_notif("b", &[0u8; NOTE + 1]).unwrap_err();
            assert!(e.to_string().contains("max_notif_bytes"), "{e}");
            drop((src, own));
        }
    }

    #[test]
    fn peers_configured_differently_are_refused_naming_the_setting() {
        for (mine, theirs, what) in [
            (("channels", "3"), ("channels", "2"), "channels"),
            (
                ("chunk_bytes", "131072"),
                ("chunk_bytes", "1048576"),
                "chunk_bytes",
            ),
        ] {
            let (a, b) = linked_each(&[mine], &[theirs]);
            const N: usize = 1 << 20;
            let mut src = vec![7u8; N];
            let mut dst = vec![0u8; N];
            let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
            let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
            let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
            let mut h = 0;
            // The session is refused when it is made, before any transfer is posted on it.
            let err = a
                .post_xfer(&args(Op::Write, &l, &r, "b"), &mut h)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(what) && err.contains("configured alike"),
                "{what}: {err}"
            );
            assert!(dst.iter().all(|&v| v == 0), "{what}: nothing moved");
            drop((src, dst));
        }
    }

    #[test]
    fn small_writes_travel_inline_and_are_acknowledged_in_announce_order() {
        let (a, b) = linked_with(&[]);
        const N: usize = 8 << 20;
        let mut src: Vec<u8> = (0..N).map(|i| (i * 13 % 251) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
        let post = |a: &Backend, ms, pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
            let l: Vec<Desc> = pieces.iter().map(|&(lo, _, n)| d(s + lo, n, ms)).collect();
            let r: Vec<Desc> = pieces.iter().map(|&(_, ro, n)| d(t + ro, n, rt)).collect();
            let mut x = args(Op::Write, &l, &r, "b");
            x.notif = note;
            let mut h = 0;
            a.post_xfer(&x, &mut h).unwrap();
            h
        };
        let write = |pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
            let h = post(&a, ms, pieces, note);
            let st = finish(&a, h);
            a.release_req(h).unwrap();
            st
        };
        // Three pieces, 8 KiB + 1 in all: one inline announce, data in order.
        let small = [(100, 0, 1), (4096, 64, 4095), (20_001, 8000, 4096)];
        assert_eq!(write(&small, Some(b"w1")).unwrap(), Status::Success);
        assert_eq!(b.inline_writes(), 1, "8 KiB WRITE taken inline");
        for &(lo, ro, n) in &small {
            let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
            assert_eq!(dst[ro..ro + n], src[lo..lo + n], "piece at {ro}");
        }
        assert!(
            dst[1..64].iter().all(|&v| v == 0),
            "bytes outside the pieces moved"
        );
        // The Ack follows the notification: it is already queued.
        assert_eq!(notifs(&b), [("a".to_owned(), b"w1".to_vec())]);
        // Over the limit (16 KiB): the data session.
        dst.fill(0);
        assert_eq!(
            write(&[(0, 0, 16 * 1024 + 1)], None).unwrap(),
            Status::Success
        );
        assert_eq!(b.inline_writes(), 1, "16 KiB + 1 went through the engine");
        assert_eq!(dst[..16 * 1024 + 1], src[..16 * 1024 + 1]);
        // A small WRITE announced behind a large one: its notification and Ack wait for the
        // large one's data, so notifications arrive in announce order.
        for round in 0..5u8 {
            let big = post(&a, ms, &[(0, 0, N as u64 - 8192)], Some(&[b'B', round]));
            let tiny = post(
                &a,
                ms,
                &[(N as u64 - 100, N as u64 - 100, 100)],
                Some(&[b'T', round]),
            );
            assert_eq!(finish(&a, tiny).unwrap(), Status::Success);
            assert_eq!(finish(&a, big).unwrap(), Status::Success);
            a.release_req(tiny).unwrap();
            a.release_req(big).unwrap();
            assert_eq!(
                notifs(&b),
                [
                    ("a".to_owned(), vec![b'B', round]),
                    ("a".to_owned(), vec![b'T', round])
                ],
                "round {round}"
            );
        }
        assert_eq!(b.inline_writes(), 6);
        assert!(dst[..N - 8192] == src[..N - 8192], "large WRITE data");
        assert!(dst[N - 100..] == src[N - 100..], "small WRITE data");
        // An initiator with inline_write_bytes 0 never goes inline.
        let (c, e) = linked_each(&[("inline_write_bytes", "0")], &[]);
        let (mc, _, re) = dram_pair(&c, &e, s, t, N as u64);
        dst.fill(0);
        let (l, r) = ([d(s, 4096, mc)], [d(t, 4096, re)]);
        let mut h = 0;
        c.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&c, h).unwrap(), Status::Success);
        assert_eq!(e.inline_writes(), 0);
        assert_eq!(dst[..4096], src[..4096]);
        drop((src, dst));
    }

    #[test]
    fn small_reads_travel_inline_and_large_ones_through_the_engine() {
        let (a, b) = linked_with(&[("inline_read_bytes", "8192")]);
        const N: usize = 64 * 1024;
        let mut src: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        // a reads from b: a's `dst` is local, b's `src` is remote.
        let (md, _, rs) = dram_pair(&a, &b, t, s, N as u64);
        let read = |pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
            let l: Vec<Desc> = pieces.iter().map(|&(lo, _, n)| d(t + lo, n, md)).collect();
            let r: Vec<Desc> = pieces.iter().map(|&(_, ro, n)| d(s + ro, n, rs)).collect();
            let mut x = args(Op::Read, &l, &r, "b");
            x.notif = note;
            let mut h = 0;
            a.post_xfer(&x, &mut h).unwrap();
            let st = finish(&a, h);
            a.release_req(h).unwrap();
            st
        };
        // Three pieces, 8 KiB in all: inline, one frame, data in request order.
        let small = [(0, 100, 1), (64, 4096, 4095), (8000, 20_000, 4096)];
        assert_eq!(read(&small, Some(b"r1")).unwrap(), Status::Success);
        assert_eq!(b.inline_answers(), 1, "8 KiB READ answered inline");
        for &(lo, ro, n) in &small {
            let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
            assert_eq!(dst[lo..lo + n], src[ro..ro + n], "piece at {lo}");
        }
        assert!(
            dst[1..64].iter().all(|&v| v == 0),
            "bytes outside the pieces moved"
        );
        // A READ's notification follows its completion: wait for it (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = notifs(&b);
        while got.is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            got = notifs(&b);
        }
        assert_eq!(got, [("a".to_owned(), b"r1".to_vec())]);
        // One byte over: the engine path, same result.
        dst.fill(0);
        let big = [(0, 0, 8193)];
        assert_eq!(read(&big, None).unwrap(), Status::Success);
        assert_eq!(b.inline_answers(), 1, "8 KiB + 1 went through the engine");
        assert_eq!(dst[..8193], src[..8193]);
        // Reposts of an inline READ.
        for i in 0..50u64 {
            dst[..4096].fill(0);
            assert_eq!(read(&[(0, i * 64, 4096)], None).unwrap(), Status::Success);
            let o = (i * 64) as usize;
            assert_eq!(dst[..4096], src[o..o + 4096], "repost {i}");
        }
        assert_eq!(b.inline_answers(), 51);
        // An initiator that offers inline to a target that never answers inline (its own
        // setting 0): the READ goes through the data session.
        let (c, e) = linked_each(&[], &[("inline_read_bytes", "0")]);
        let (mc, _, re) = dram_pair(&c, &e, t, s, N as u64);
        dst.fill(0);
        let (l, r) = ([d(t, 4096, mc)], [d(s, 4096, re)]);
        let mut h = 0;
        c.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&c, h).unwrap(), Status::Success);
        assert_eq!(e.inline_answers(), 0);
        assert_eq!(dst[..4096], src[..4096]);
        drop((c, e));
        drop(src);
    }

    /// Reads one whole frame from a blocking stream.
    fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        let mut f = vec![0u8; tcpx_core::wire::HEADER_LEN];
        s.read_exact(&mut f).unwrap();
        let len = tcpx_core::wire::peek_frame(&f).unwrap().unwrap();
        f.resize(len, 0);
        s.read_exact(&mut f[tcpx_core::wire::HEADER_LEN..]).unwrap();
        f
    }

    fn frame(m: &tcpx_core::wire::Message<'_>) -> Vec<u8> {
        let mut v = vec![0u8; m.buffer_len()];
        m.emit(&mut v).unwrap();
        v
    }

    #[test]
    fn an_inline_answer_of_the_wrong_size_fails_the_read_and_closes_the_conn() {
        use std::io::{Read, Write};
        use tcpx::engine::{Config as EngineConfig, Session};
        use tcpx_core::wire::{self, Message, ReadData, RegionToken};
        let (a, _b) = linked();
        // A fake target: the real handshake, then a ReadData 3 bytes long for a 4 KiB READ.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let _hello = read_frame(&mut s);
            let theirs = read_frame(&mut s);
            let cfg = EngineConfig {
                timeout: std::time::Duration::from_secs(5),
                ..EngineConfig::default()
            };
            let lis = Session::listen(Session::open_net(&cfg).unwrap(), cfg).unwrap();
            s.write_all(lis.conn_info()).unwrap();
            s.write_all(&frame(&Message::Limits(wire::Limits { max_notif: 4096 })))
                .unwrap();
            let _sess = lis.connect(&theirs).unwrap();
            let req = read_frame(&mut s);
            let Ok(Message::ReadRequest(r)) = wire::parse(&req) else {
                panic!("expected a ReadRequest");
            };
            assert!(r.inline_ok, "a 4 KiB READ into host memory offers inline");
            s.write_all(&frame(&Message::ReadData(ReadData {
                xfer: r.xfer,
                data: b"abc",
            })))
            .unwrap();
            // Until the initiator closes the conn (0) or gives up waiting (error).
            let mut one = [0u8; 1];
            s.read(&mut one).unwrap_or(1)
        });
        a.load_remote_conn_info("fake", &blob::encode_conn_info("fake", addr, 2).unwrap())
            .unwrap();
        let token = RegionToken {
            base: 0x1000_0000,
            len: 1 << 20,
            mem: MemKind::Dram,
            device: 0,
            region: 7,
            key: 99,
        };
        let rt = a
            .load_remote_md(
                &d(0x1000_0000, 1 << 20, 0),
                &blob::encode_token(&token).unwrap(),
                MEM_DRAM,
                "fake",
            )
            .unwrap();
        let mut dst = vec![0x5au8; 4096];
        let md = a
            .register_mem(&d(dst.as_mut_ptr() as u64, 4096, 0), MEM_DRAM)
            .unwrap();
        let (l, r) = (
            [d(dst.as_mut_ptr() as u64, 4096, md)],
            [d(0x1000_0000, 4096, rt)],
        );
        let mut h = 0;
        a.post_xfer(&args(Op::Read, &l, &r, "fake"), &mut h)
            .unwrap();
        let e = finish(&a, h).unwrap_err();
        assert_eq!(e.status(), Status::Mismatch, "{e}");
        assert!(e.to_string().contains("ReadData of 3 bytes"), "{e}");
        assert!(
            dst.iter().all(|&v| v == 0x5a),
            "nothing of the bad answer was written"
        );
        assert_eq!(fake.join().unwrap(), 0, "the initiator closed the conn");
        a.release_req(h).unwrap();
    }

    #[test]
    fn deregistering_waits_for_a_released_read_to_finish_into_memory() {
        let (a, b) = linked();
        const N: usize = 32 << 20;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 249) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        // a READs b's `src` into its `dst`, through the data session (32 MiB).
        let (md, _, rs) = dram_pair(&a, &b, t, s, N as u64);
        let (l, r) = ([d(t, N as u64, md)], [d(s, N as u64, rs)]);
        let mut h = 0;
        a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
        // Wait until the READ is under way, then release it in flight.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // SAFETY: reads of one byte the engine may be writing (volatile, so each is a fresh
        // read); `dst` outlives the transfer.
        let landed = || unsafe { std::ptr::read_volatile((t + 1) as *const u8) } != 0;
        while !landed() && std::time::Instant::now() < deadline {
            let _ = a.check_xfer(h);
        }
        a.release_req(h).unwrap();
        // Once deregistration returns, nothing may land in the memory any more: the released
        // READ finished into it first.
        a.deregister_mem(md).unwrap();
        assert!(
            dst == src,
            "the released READ finished into memory before deregistration returned"
        );
        let snapshot = dst.clone();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(dst == snapshot, "bytes landed after deregisterMem returned");
        drop((src, dst));
    }

    #[test]
    fn remote_write_read_refusal_and_dead_peer() {
        let (a, b) = linked();
        const N: usize = 1 << 20;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);

        // WRITE with a notification: delivered to b once the data is there.
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let mut w = args(Op::Write, &l, &r, "b");
        w.notif = Some(b"w");
        let mut h = 0;
        assert_eq!(a.post_xfer(&w, &mut h).unwrap(), Status::InProgress);
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert_eq!(dst, src);
        assert_eq!(notifs(&b), [("a".to_owned(), b"w".to_vec())]);
        a.release_req(h).unwrap();

        // READ of a sub-range back into a different place.
        dst[..4096].fill(0x5a);
        let (l, r) = ([d(s + 8192, 4096, ms)], [d(t, 4096, rt)]);
        let mut h = 0;
        a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert!(src[8192..8192 + 4096].iter().all(|&x| x == 0x5a));
        a.release_req(h).unwrap();

        // b drops the region a still holds a token for: b refuses. A refused READ leaves the
        // conn usable; a refused WRITE (its data already sent) closes it, and the next
        // transfer reconnects.
        b.deregister_mem(mt).unwrap();
        let mut h = 0;
        a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&a, h).unwrap_err().status(), Status::InvalidParam);
        a.release_req(h).unwrap();
        let mut h = 0;
        a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        let st = finish(&a, h).unwrap_err().status();
        assert!(
            matches!(st, Status::InvalidParam | Status::RemoteDisconnect),
            "{st:?}"
        );
        a.release_req(h).unwrap();
        let mt = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
        a.unload_md(rt).unwrap();
        let rt = a
            .load_remote_md(
                &d(t, N as u64, 0),
                &b.public_data(mt).unwrap(),
                MEM_DRAM,
                "b",
            )
            .unwrap();
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        dst.fill(0);
        let mut h = 0;
        a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert_eq!(dst, src);
        a.release_req(h).unwrap();

        // b goes away: a's transfers fail with REMOTE_DISCONNECT, none hangs.
        b.deregister_mem(mt).unwrap();
        drop(b);
        let mut h = 0;
        let st = match a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h) {
            Err(e) => e.status(),
            Ok(_) => finish(&a, h).unwrap_err().status(),
        };
        assert_eq!(st, Status::RemoteDisconnect);
        if h != 0 {
            a.release_req(h).unwrap();
        }
        a.unload_md(rt).unwrap();
        a.deregister_mem(ms).unwrap();
        dst[0] = 1;
    }

    /// A prepared request is reposted after its conn died under it: the reused flight moves
    /// to the new conn (its segments remapped to the new session) and the data lands.
    #[test]
    fn repost_after_a_dead_conn_moves_to_the_new_one() {
        let (a, b) = linked();
        const N: usize = 256 * 1024;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 249) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let ms = a.register_mem(&d(s, N as u64, 0), MEM_DRAM).unwrap();
        let mt = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
        let token = b.public_data(mt).unwrap();
        let rt = a
            .load_remote_md(&d(t, N as u64, 0), &token, MEM_DRAM, "b")
            .unwrap();
        for op in [Op::Write, Op::Read] {
            let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
            let x = args(op, &l, &r, "b");
            let mut h = a.prep_xfer(&x).unwrap();
            assert_eq!(a.post_xfer(&x, &mut h).unwrap(), Status::InProgress);
            assert_eq!(
                a.post_xfer(&x, &mut h).unwrap_err().status(),
                Status::RepostActive
            );
            // Kill the conn while the transfer may still be in flight: it either finished
            // first or fails as a disconnect; either way the handle can be posted again.
            a.remote.disconnect("b");
            match finish(&a, h) {
                Ok(st) => assert_eq!(st, Status::Success),
                Err(e) => assert_eq!(e.status(), Status::RemoteDisconnect),
            }
            dst.fill(0);
            if op == Op::Read {
                dst.copy_from_slice(&src);
                src.fill(0);
            }
            assert_eq!(a.post_xfer(&x, &mut h).unwrap(), Status::InProgress);
            assert_eq!(finish(&a, h).unwrap(), Status::Success);
            assert_eq!(src, dst, "{op:?}");
            a.release_req(h).unwrap();
        }
        undo_dram_pair(&a, &b, (ms, mt, rt));
    }

    #[test]
    fn concurrent_self_transfers_each_land_whole() {
        let b = backend("a");
        const N: usize = 4;
        const LEN: usize = 64 * 1024;
        let mut src = vec![0u8; N * LEN];
        let mut dst = vec![0u8; N * LEN];
        for (i, x) in src.iter_mut().enumerate() {
            *x = (i / LEN + 1) as u8;
        }
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let ms = b
            .register_mem(&d(s, (N * LEN) as u64, 0), MEM_DRAM)
            .unwrap();
        let mt = b
            .register_mem(&d(t, (N * LEN) as u64, 0), MEM_DRAM)
            .unwrap();
        let at = b.load_local_md(mt).unwrap();
        std::thread::scope(|scope| {
            for i in 0..N {
                let b = &b;
                scope.spawn(move || {
                    let off = (i * LEN) as u64;
                    let l = [d(s + off, LEN as u64, ms)];
                    let r = [d(t + off, LEN as u64, at)];
                    let a = args(Op::Write, &l, &r, "a");
                    let mut h = b.prep_xfer(&a).unwrap();
                    for _ in 0..20 {
                        assert_eq!(b.post_xfer(&a, &mut h).unwrap(), Status::Success);
                    }
                    b.release_req(h).unwrap();
                });
            }
        });
        assert_eq!(dst, src);
        assert_eq!(b.live_requests(), 0);
    }

    #[test]
    fn the_agents_gpu_is_known_at_creation_and_must_exist() {
        let gpus = if vram_supported() {
            cudarc::driver::CudaContext::device_count().unwrap() as u32
        } else {
            0
        };
        let b = backend("a");
        // The default: the device current on this thread (device 0 with a driver), none
        // without one.
        assert_eq!(b.config().gpu.is_some(), gpus > 0);
        assert!(b.config().gpu.is_none_or(|g| g < gpus));
        // A GPU the machine does not have fails creation, naming the parameter.
        let n = gpus.to_string();
        let e =
            Backend::new("a", [("listen_addr", "127.0.0.1:0"), ("gpu", n.as_str())]).unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, .. } if key == "gpu"),
            "gpu={gpus}: {e}"
        );
        // The effective GPU is reported (empty without one) and parses back.
        let params = b.config().to_params(b.control().advertised());
        let (_, g) = params.iter().find(|(k, _)| *k == "gpu").unwrap();
        assert_eq!(
            *g,
            b.config().gpu.map(|g| g.to_string()).unwrap_or_default()
        );
    }

    #[test]
    fn registrations_of_no_bytes_and_of_any_size_up_to_the_limit() {
        let b = backend("a");
        if !vram_supported() {
            let e = b.register_mem(&d(0x1000, 16, 0), MEM_VRAM).unwrap_err();
            assert_eq!(e.status(), Status::NotSupported);
        }
        // No bytes: accepted (as UCX does), with a token; at address 0 too.
        let z = b.register_mem(&d(0x1000, 0, 0), MEM_DRAM).unwrap();
        assert_eq!(
            blob::decode_token(&b.public_data(z).unwrap()).unwrap().len,
            0
        );
        let z0 = b.register_mem(&d(0, 0, 0), MEM_DRAM).unwrap();
        b.deregister_mem(z).unwrap();
        b.deregister_mem(z0).unwrap();
        // Past the limit: refused, naming it; nothing recorded.
        let e = b
            .register_mem(&d(0x1000, MAX_REGION_BYTES + 1, 0), MEM_DRAM)
            .unwrap_err();
        assert_eq!(e.status(), Status::InvalidParam);
        assert!(e.to_string().contains("2^48"), "{e}");
        assert_eq!(b.live_metadata(), 0);
    }

    #[test]
    fn identical_registrations_share_one_token_and_the_last_one_releases_it() {
        let (a, b) = linked();
        const N: usize = 64 * 1024;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 241) as u8).collect();
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);
        let again = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
        assert_eq!(again, mt);
        assert_eq!(b.public_data(again).unwrap(), b.public_data(mt).unwrap());
        // One of the two goes: the region stays, transfers into it still land.
        b.deregister_mem(mt).unwrap();
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let mut h = 0;
        a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert_eq!(dst, src);
        a.release_req(h).unwrap();
        // The last one goes: the token no longer names anything.
        b.deregister_mem(again).unwrap();
        assert!(b.public_data(again).is_err());
        assert_eq!(b.live_metadata(), 0);
        src[0] = 1;
    }
}
