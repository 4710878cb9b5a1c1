//! The ncclNet plugin loader and its one version-independent interface, [`Net`].
//!
//! A plugin is opened by path (or linked in, like the embedded `tcpxsock`), the newest
//! `ncclNetPlugin_v10` … `_v7` table it exports is adapted to one internal table, and every
//! call is wrapped: comms and registrations are RAII objects, "not ready yet" is `Ok(None)`,
//! and each failing call becomes an [`Error`] naming the plugin and the function.
//!
//! A plugin file is opened as a private copy by default, so that NCCL loading the same file
//! in this process cannot share (and re-`init`) our instance ([`Isolation`]; env
//! `TCPX_PLUGIN_ISOLATE=0` turns it off); within tcpx, loading one file again returns the
//! instance already loaded, so `init` runs once per instance as in NCCL. A plugin that calls
//! `exit()` from inside one of our calls is named on stderr on the way out (`exit.rs`).

mod comm;
mod exit;
mod isolate;
mod props;
mod table;

use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tcpx_core::abi::{result, v10, v7, v8, v9, NcclResult};

use crate::error::{Error, Result};
use crate::log;
use table::{GetProperties, Init, RegMr, Table};

pub use comm::{
    Comm, ConnectHandle, ListenComm, MemKind, MemReg, RecvBuf, RecvComm, Request, SendComm,
};
pub use isolate::{Isolation, ISOLATE_ENV};
pub use props::{DeviceProps, DeviceType, PtrSupport};
pub use table::MAX_RECVS;

/// An ncclNet ABI version tcpx can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    V7 = 7,
    V8 = 8,
    V9 = 9,
    V10 = 10,
}

impl AbiVersion {
    /// Every supported version, in the order they are probed (newest first).
    pub const NEWEST_FIRST: [AbiVersion; 4] = [
        AbiVersion::V10,
        AbiVersion::V9,
        AbiVersion::V8,
        AbiVersion::V7,
    ];

    /// The version number (7 … 10).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// Parses `7`, `v7`, … `10`.
    pub fn parse(s: &str) -> Option<AbiVersion> {
        match s.trim().trim_start_matches(['v', 'V']) {
            "7" => Some(AbiVersion::V7),
            "8" => Some(AbiVersion::V8),
            "9" => Some(AbiVersion::V9),
            "10" => Some(AbiVersion::V10),
            _ => None,
        }
    }

    /// The data symbol a plugin exports for this version.
    pub fn symbol(self) -> &'static str {
        match self {
            AbiVersion::V7 => "ncclNetPlugin_v7",
            AbiVersion::V8 => "ncclNetPlugin_v8",
            AbiVersion::V9 => "ncclNetPlugin_v9",
            AbiVersion::V10 => "ncclNetPlugin_v10",
        }
    }

    fn symbol_nul(self) -> &'static [u8] {
        match self {
            AbiVersion::V7 => v7::SYMBOL,
            AbiVersion::V8 => v8::SYMBOL,
            AbiVersion::V9 => v9::SYMBOL,
            AbiVersion::V10 => v10::SYMBOL,
        }
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.number())
    }
}

/// Where a plugin's table came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A shared object opened by path.
    Path(PathBuf),
    /// A table linked into this process (the embedded `tcpxsock`).
    Static,
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Path(p) => write!(f, "{}", p.display()),
            PluginSource::Static => f.write_str("(embedded)"),
        }
    }
}

/// A loaded plugin. Every wrapper holds an `Arc` of it, so the library stays mapped while
/// any function pointer taken from it can still be called.
pub(crate) struct Plugin {
    table: Table,
    name: Arc<str>,
    source: PluginSource,
    /// `init`'s result; NCCL calls `init` once per process and so do we.
    init: OnceLock<NcclResult>,
    /// Dropped last (after every `Arc<Plugin>`): unmaps the code `table` points into.
    /// `None` for a table linked into this process.
    lib: Option<isolate::Opened>,
}

impl Plugin {
    /// Runs one call into the plugin with this thread marked as inside `func`, so that an
    /// `exit()` in there is reported (no allocation: two thread-local writes).
    #[inline]
    fn call<R>(&self, func: &'static str, f: impl FnOnce() -> R) -> R {
        let _mark = exit::CallMark::enter(func, &self.name);
        f()
    }

    /// Maps a plugin result to `Ok` or an error naming `func`.
    #[inline]
    fn check(&self, func: &'static str, code: NcclResult) -> Result<()> {
        if code == result::SUCCESS {
            Ok(())
        } else {
            Err(Error::Plugin {
                plugin: Arc::clone(&self.name),
                func,
                code,
            })
        }
    }

    #[cold]
    fn missing(&self, func: &'static str) -> Error {
        Error::MissingFunction {
            plugin: Arc::clone(&self.name),
            func,
        }
    }
}

/// A loaded, version-adapted ncclNet plugin. Cheap to clone (shares the library).
#[derive(Clone)]
pub struct Net {
    plugin: Arc<Plugin>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("name", &&*self.plugin.name)
            .field("abi", &self.plugin.table.version)
            .field("source", &self.plugin.source)
            .finish()
    }
}

/// Plugins loaded by path, so loading a file again returns its instance (weak: a plugin
/// nobody uses any more is unloaded, and a dead entry is replaced by the next load).
static LOADED: Mutex<Vec<(LoadKey, Weak<Plugin>)>> = Mutex::new(Vec::new());

/// One file (by identity, and as it was when loaded) opened one way.
#[derive(PartialEq, Eq)]
struct LoadKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    abi: Option<AbiVersion>,
    isolation: Isolation,
}

impl LoadKey {
    fn of(path: &Path, abi: Option<AbiVersion>, isolation: Isolation) -> Option<LoadKey> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(isolate::locate(path)?).ok()?;
        Some(LoadKey {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            abi,
            isolation,
        })
    }
}

impl Net {
    /// Opens the plugin at `path` and adapts the newest table it exports.
    pub fn load(path: impl AsRef<Path>) -> Result<Net> {
        Net::load_with(path, None)
    }

    /// Opens the plugin at `path`; `abi = Some(v)` accepts only that version's table.
    /// Isolated as `TCPX_PLUGIN_ISOLATE` says ([`Isolation::from_env`]).
    pub fn load_with(path: impl AsRef<Path>, abi: Option<AbiVersion>) -> Result<Net> {
        Net::load_with_isolation(path, abi, Isolation::from_env()?)
    }

    /// Opens the plugin at `path` as a private copy or as the file itself ([`Isolation`]);
    /// a file tcpx already loaded the same way returns that instance.
    pub fn load_with_isolation(
        path: impl AsRef<Path>,
        abi: Option<AbiVersion>,
        isolation: Isolation,
    ) -> Result<Net> {
        let path = path.as_ref();
        // A bare file name is left to the dynamic loader's search path.
        let has_dir = path.components().count() > 1;
        if has_dir && !path.exists() {
            return Err(Error::PluginNotFound {
                path: path.to_path_buf(),
            });
        }
        let key = LoadKey::of(path, abi, isolation);
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|(_, p)| p.strong_count() > 0);
        if let Some(plugin) = key
            .as_ref()
            .and_then(|k| loaded.iter().find(|(lk, _)| lk == k))
            .and_then(|(_, p)| p.upgrade())
        {
            return Ok(Net { plugin });
        }
        let net = Net::open(path, abi, isolation)?;
        if let Some(k) = key {
            loaded.push((k, Arc::downgrade(&net.plugin)));
        }
        Ok(net)
    }

    fn open(path: &Path, abi: Option<AbiVersion>, isolation: Isolation) -> Result<Net> {
        let opened = isolate::open(path, isolation)?;
        let lib = &opened.lib;
        let versions: &[AbiVersion] = match abi {
            Some(ref v) => std::slice::from_ref(v),
            None => &AbiVersion::NEWEST_FIRST,
        };
        for &v in versions {
            // SAFETY: the symbol is a data object; we only take its address here.
            let sym = unsafe { lib.get::<*const c_void>(v.symbol_nul()) };
            let Ok(sym) = sym else { continue };
            let ptr: *const c_void = *sym;
            if ptr.is_null() {
                continue;
            }
            // SAFETY: a plugin exporting `ncclNetPlugin_vN` promises an `ncclNet_vN_t` there;
            // the tables are plain data, copied out while the library is loaded.
            let table = unsafe {
                match v {
                    AbiVersion::V7 => Table::from_v7(&*ptr.cast::<v7::Net>()),
                    AbiVersion::V8 => Table::from_v8(&*ptr.cast::<v8::Net>()),
                    AbiVersion::V9 => Table::from_v9(&*ptr.cast::<v9::Net>()),
                    AbiVersion::V10 => Table::from_v10(&*ptr.cast::<v10::Net>()),
                }
            };
            // SAFETY: `name` is the first field of every table version.
            let name = unsafe { *ptr.cast::<*const std::ffi::c_char>() };
            // SAFETY: NULL or a static C string inside the still-loaded library.
            let name = unsafe { plugin_name(name) };
            crate::log_info!(
                "net",
                "loaded ncclNet plugin {name} ({v}) from {}",
                path.display()
            );
            exit::install();
            return Ok(Net {
                plugin: Arc::new(Plugin {
                    table,
                    name,
                    source: PluginSource::Path(path.to_path_buf()),
                    init: OnceLock::new(),
                    lib: Some(opened),
                }),
            });
        }
        Err(Error::NoSymbol {
            path: path.to_path_buf(),
            tried: versions.iter().map(|v| v.symbol()).collect(),
        })
    }

    /// Wraps a v7 table linked into this process (no library to keep loaded).
    pub fn from_static_v7(table: &'static v7::Net) -> Net {
        // SAFETY: a `'static` table's name is NULL or a static C string.
        let name = unsafe { plugin_name(table.name) };
        exit::install();
        Net {
            plugin: Arc::new(Plugin {
                table: Table::from_v7(table),
                name,
                source: PluginSource::Static,
                init: OnceLock::new(),
                lib: None,
            }),
        }
    }

    /// The built-in `tcpxsock` plugin, shared process-wide (so it is initialised once).
    pub fn embedded() -> Net {
        static EMBEDDED: OnceLock<Net> = OnceLock::new();
        EMBEDDED
            .get_or_init(|| Net::from_static_v7(&tcpx_sock::ncclNetPlugin_v7))
            .clone()
    }

    /// The plugin named by `TCPX_PLUGIN`, or the embedded one when it is unset or empty.
    pub fn from_env(abi: Option<AbiVersion>) -> Result<Net> {
        match std::env::var_os("TCPX_PLUGIN") {
            Some(p) if !p.is_empty() => Net::load_with(PathBuf::from(p), abi),
            _ => Ok(Net::embedded()),
        }
    }

    /// The plugin's own name (its table's `name`).
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// The ABI version whose table is in use.
    pub fn abi(&self) -> AbiVersion {
        self.plugin.table.version
    }

    /// Where the plugin was loaded from.
    pub fn source(&self) -> &PluginSource {
        &self.plugin.source
    }

    /// Whether this instance is ours alone: [`Isolation::Private`] for a private copy and
    /// for a table linked into tcpx, [`Isolation::Shared`] for the file itself.
    pub fn isolation(&self) -> Isolation {
        self.plugin
            .lib
            .as_ref()
            .map_or(Isolation::Private, |o| o.isolation)
    }

    /// The address of `symbol` in this instance of the plugin (`None` for a table linked
    /// into tcpx and for a symbol it does not export). Tells instances of one file apart
    /// (`ncclNetPlugin_v7` differs between copies) and lets tests reach a fake plugin's
    /// own functions.
    pub fn symbol(&self, symbol: &str) -> Option<NonNull<c_void>> {
        let lib = &self.plugin.lib.as_ref()?.lib;
        // SAFETY: only the address is taken; calling or reading it is the caller's affair.
        let sym = unsafe { lib.get::<*mut c_void>(symbol.as_bytes()) }.ok()?;
        NonNull::new(*sym)
    }

    /// The largest size one `regMr` of this plugin's ABI accepts: `c_int::MAX` for v7's
    /// `int` size, `usize::MAX` for the `size_t` of v8 and later.
    pub fn max_reg_bytes(&self) -> usize {
        match self.plugin.table.reg_mr {
            Some(RegMr::Int(_)) => c_int::MAX as usize,
            Some(RegMr::Size(_)) => usize::MAX,
            // No regMr at all: the ABI version still says which size type it would take.
            None if self.plugin.table.version == AbiVersion::V7 => c_int::MAX as usize,
            None => usize::MAX,
        }
    }

    /// Initialises the plugin with tcpx's logger; later calls return the first result.
    pub fn init(&self) -> Result<()> {
        let p = &*self.plugin;
        let init = p.table.init.as_ref().ok_or_else(|| p.missing("init"))?;
        let code = *p.init.get_or_init(|| {
            let logger = log::nccl_logger();
            // SAFETY: the table's `init` with the NCCL-compatible logger (and no profiler).
            p.call("init", || unsafe {
                match init {
                    Init::V7(f) => f(logger),
                    Init::V10(f) => f(logger, None),
                }
            })
        });
        p.check("init", code)
    }

    /// Number of devices; zero devices is an error, since nothing can be done with them.
    pub fn devices(&self) -> Result<usize> {
        let p = &*self.plugin;
        let f = p.table.devices.ok_or_else(|| p.missing("devices"))?;
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer for the duration of the call.
        p.check("devices", p.call("devices", || unsafe { f(&mut n) }))?;
        match usize::try_from(n) {
            Ok(0) | Err(_) => Err(Error::NoDevices {
                plugin: Arc::clone(&p.name),
            }),
            Ok(n) => Ok(n),
        }
    }

    /// Properties of device `dev`, whatever the ABI version.
    pub fn properties(&self, dev: usize) -> Result<DeviceProps> {
        let p = &*self.plugin;
        let gp = p
            .table
            .get_properties
            .as_ref()
            .ok_or_else(|| p.missing("getProperties"))?;
        let d = dev_index(dev)?;
        const GP: &str = "getProperties";
        // Each arm passes a zeroed properties struct of the version its function pointer was
        // loaded for (the table is typed by the plugin's ABI version), so the plugin writes
        // within the struct; `d` is a plain index the plugin range-checks; `p` keeps it loaded.
        let raw: props::Raw = match gp {
            GetProperties::V7(f) => {
                let mut r = v7::Properties::zeroed();
                // SAFETY: as above: `r` is a `v7::Properties`, matching `f`'s signature.
                p.check(GP, p.call(GP, || unsafe { f(d, &mut r) }))?;
                (&r).into()
            }
            GetProperties::V8(f) => {
                let mut r = v8::Properties::zeroed();
                // SAFETY: as above: `r` is a `v8::Properties`, matching `f`'s signature.
                p.check(GP, p.call(GP, || unsafe { f(d, &mut r) }))?;
                (&r).into()
            }
            GetProperties::V9(f) => {
                let mut r = v9::Properties::zeroed();
                // SAFETY: as above: `r` is a `v9::Properties`, matching `f`'s signature.
                p.check(GP, p.call(GP, || unsafe { f(d, &mut r) }))?;
                (&r).into()
            }
        };
        // SAFETY: the strings belong to the plugin, which is still loaded.
        unsafe { raw.into_props() }.map_err(|props::UnknownOffload(t, v)| {
            Error::UnknownDeviceOffload {
                plugin: Arc::clone(&p.name),
                dev,
                device_type: t,
                version: v,
            }
        })
    }
}

/// Copies a table's `name`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn plugin_name(p: *const std::ffi::c_char) -> Arc<str> {
    if p.is_null() {
        return Arc::from("(unnamed)");
    }
    // SAFETY: non-NULL (checked above), so a NUL-terminated string valid for the call (this
    // function's contract); it is copied into the `Arc` before returning.
    Arc::from(unsafe { CStr::from_ptr(p) }.to_string_lossy().as_ref())
}

fn dev_index(dev: usize) -> Result<c_int> {
    c_int::try_from(dev).map_err(|_| Error::Invalid("device index does not fit a C int"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_versions_parse_and_name() {
        assert_eq!(AbiVersion::parse("v10"), Some(AbiVersion::V10));
        assert_eq!(AbiVersion::parse("7"), Some(AbiVersion::V7));
        assert_eq!(AbiVersion::parse("11"), None);
        assert_eq!(AbiVersion::V9.symbol(), "ncclNetPlugin_v9");
        for v in AbiVersion::NEWEST_FIRST {
            assert_eq!(&v.symbol_nul()[..v.symbol().len()], v.symbol().as_bytes());
        }
        assert!(AbiVersion::NEWEST_FIRST.windows(2).all(|w| w[0] > w[1]));
    }
}
