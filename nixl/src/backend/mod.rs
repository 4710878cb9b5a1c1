//! The TCPX backend behind one NIXL engine: configuration, control listener, metadata table,
//! peers, requests and notifications.
//!
//! Every method takes `&self`: NIXL's RW sync mode runs the data-path methods concurrently, so
//! state sits behind locks (never held across a call into NIXL). Transfers an agent makes to
//! itself are served here with memcpy; transfers to other agents go to [`RemotePath`].

mod notifs;
mod peers;
mod registration;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::HashMap;
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use tcpx_core::mem::MemKind;
use tcpx_core::wire::MAX_NAME;

use crate::blob;
use crate::config::Config;
use crate::control::Control;
use crate::error::{Arg, Error};
use crate::registry::{MemTable, MEM_DRAM, MEM_VRAM};
use crate::remote::{self, CostModel, Mem, NotifQueue, Notifs, RemotePath};

pub use transfer::XferArgs;

use peers::Peer;
use transfer::Requests;

/// The value NIXL holds as an `nixlBackendReqH*`: never 0.
pub type ReqId = usize;

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
        MEM_DRAM => Ok(MemKind::Host),
        MEM_VRAM if vram_supported() => Ok(MemKind::Device),
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
}
