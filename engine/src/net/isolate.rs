//! Opens a plugin file as an instance no other loader in the process can share.
//!
//! `dlopen` of a file that is already loaded returns the loaded instance, and NCCL in the
//! same process (vLLM and SGLang run their collectives on it) may load the very
//! `libnccl-net.so` tcpx is given. GPUDirect-TCPX's `init` is not idempotent: a second call
//! replaces the logger and re-initialises its global GPU and connection state under the
//! other user's feet. So tcpx opens a **private copy** of the file by default:
//!
//! 1. The file is read into memory; a bare name (no `/`) is looked up on `LD_LIBRARY_PATH`.
//! 2. Its `DT_SONAME` is renamed in the copy (same length, `tcpx-` prefix): the dynamic
//!    loader matches a later `dlopen("libnccl-net.so")` by soname, which would otherwise hand
//!    NCCL our copy when we loaded first.
//! 3. Dependencies that the file finds through `$ORIGIN` in its `RUNPATH`/`RPATH` are opened
//!    first from the original's directory (the copy's `$ORIGIN` is elsewhere); the copy then
//!    binds to them by soname. Dependencies are not copied: one already loaded (libcudart,
//!    libstdc++ …) is shared as always, so state kept in a dependency is not isolated.
//! 4. The copy is written to a fresh 0700 directory under the temp dir (`TMPDIR`) and
//!    opened, and the file and directory are removed at once (the mapping stays). Where
//!    that fails (e.g. a `noexec` temp dir) the copy goes to a `memfd` instead.
//!
//! If neither works, tcpx opens the file itself and warns that the instance is shared.
//! `TCPX_PLUGIN_ISOLATE=0` asks for that from the start (e.g. to debug the plugin with
//! symbols: a removed copy shows as `(deleted)` in `/proc/<pid>/maps`). A separate link
//! namespace (`dlmopen(LM_ID_NEWLM)`) was not chosen: it would load a second libc and a
//! second CUDA driver whose contexts and pointers are not the ones tcpx's memory belongs
//! to, and glibc allows only 16 namespaces. Whether the file was already loaded by someone
//! else (`RTLD_NOLOAD`) is logged either way.

use std::ffi::{c_char, c_int, c_uint, OsStr};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use libloading::os::unix::{Library as UnixLibrary, RTLD_LAZY, RTLD_LOCAL, RTLD_NOW};
use libloading::Library;

use crate::error::{Error, Result};

/// `RTLD_NOLOAD` (glibc, every Linux architecture): succeed only if already loaded.
const RTLD_NOLOAD: c_int = 0x4;
/// The environment switch: `0` (or `false`, `off`, `no`) opens the file itself.
pub const ISOLATE_ENV: &str = "TCPX_PLUGIN_ISOLATE";

/// Whether a loaded plugin's instance is ours alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// A private copy (or code linked into tcpx): no other loader reaches its globals.
    Private,
    /// The file itself: anyone in the process who `dlopen`s the same file shares it.
    Shared,
}

impl Isolation {
    /// What `TCPX_PLUGIN_ISOLATE` asks for: unset, empty or `1` = private, `0` = shared.
    pub fn from_env() -> Result<Isolation> {
        match std::env::var(ISOLATE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Isolation::Private),
            Ok(v) => Isolation::parse(&v).ok_or_else(|| {
                Error::Config(format!("{ISOLATE_ENV}={v:?}: use 1 (private copy) or 0"))
            }),
            Err(std::env::VarError::NotUnicode(v)) => Err(Error::Config(format!(
                "{ISOLATE_ENV}={v:?}: use 1 (private copy) or 0"
            ))),
        }
    }

    fn parse(v: &str) -> Option<Isolation> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "1" | "true" | "on" | "yes" => Some(Isolation::Private),
            "0" | "false" | "off" | "no" => Some(Isolation::Shared),
            _ => None,
        }
    }
}

/// An opened plugin and what must stay open with it. Fields drop in order: the plugin is
/// closed before its dependencies and its memfd.
pub(crate) struct Opened {
    pub lib: Library,
    pub isolation: Isolation,
    /// `$ORIGIN` dependencies opened before the private copy.
    _deps: Vec<Library>,
    /// The memfd a copy was opened from: the loader knows the copy by the name
    /// `/proc/self/fd/<n>`, so `<n>` must not be reused (by another copy) while it is loaded.
    _memfd: Option<File>,
}

/// Opens `path` as `want` asks, falling back to the file itself (with a warning).
pub(crate) fn open(path: &Path, want: Isolation) -> Result<Opened> {
    // A private copy is another file, so this never counts ours.
    let elsewhere = if is_loaded(path) {
        "; the file is also loaded in this process by another user"
    } else {
        ""
    };
    if want == Isolation::Shared {
        let lib = open_file(path)?;
        crate::log_info!(
            "net",
            "opened {} itself, as asked ({ISOLATE_ENV}=0 or Isolation::Shared): its instance \
             is shared with any other user of the file in this process{elsewhere}",
            path.display()
        );
        return Ok(shared(lib));
    }
    match private_copy(path) {
        Ok((opened, how)) => {
            crate::log_info!(
                "net",
                "opened a private copy of {} ({how}){elsewhere}{}",
                path.display(),
                if elsewhere.is_empty() {
                    ""
                } else {
                    ": the instances are separate"
                }
            );
            Ok(opened)
        }
        Err(NoCopy::NotElf) => open_file(path).map(shared),
        Err(NoCopy::Failed(why)) => {
            let lib = open_file(path)?;
            crate::log_warn!(
                "net",
                "could not open a private copy of {} ({why}); opened the file itself, whose \
                 instance (and globals: GPUDirect-TCPX's init is not idempotent) is shared \
                 with any other loader of it in this process{elsewhere}",
                path.display()
            );
            Ok(shared(lib))
        }
    }
}

fn shared(lib: Library) -> Opened {
    Opened {
        lib,
        isolation: Isolation::Shared,
        _deps: Vec::new(),
        _memfd: None,
    }
}

/// Opens a shared object, resolving every symbol now so a broken plugin fails here.
fn open_file(path: &Path) -> Result<Library> {
    dlopen(path, RTLD_NOW | RTLD_LOCAL).map_err(|reason| Error::NotSharedObject {
        path: path.to_path_buf(),
        reason,
    })
}

fn dlopen(path: &Path, flags: c_int) -> std::result::Result<Library, String> {
    // SAFETY: loading runs the library's initialisers; loading a plugin is the point.
    unsafe { UnixLibrary::open(Some(path), flags) }
        .map(Library::from)
        .map_err(|e| e.to_string())
}

/// Whether an object that `dlopen(name)` would return is loaded (a bare name matches a
/// loaded soname). LAZY: a probe must not force the binding of a lazily loaded object.
fn is_loaded(name: &Path) -> bool {
    // Dropping the handle only undoes the reference NOLOAD took.
    dlopen(name, RTLD_LAZY | RTLD_NOLOAD).is_ok()
}

enum NoCopy {
    /// Not an ELF file: opening the file itself reports the loader's own reason.
    NotElf,
    Failed(String),
}

/// Opens a private copy of `path`; says how.
fn private_copy(path: &Path) -> std::result::Result<(Opened, &'static str), NoCopy> {
    let file = locate(path).ok_or_else(|| {
        NoCopy::Failed(
            "a name without a directory that is not on LD_LIBRARY_PATH: give its path".into(),
        )
    })?;
    let mut bytes = std::fs::read(&file).map_err(|e| NoCopy::Failed(format!("reading: {e}")))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(NoCopy::NotElf);
    }
    let dynamic = elf::Dynamic::parse(&bytes);
    let deps = dynamic
        .as_ref()
        .map(|d| open_origin_deps(&file, d))
        .unwrap_or_default();
    if let Some(soname) = dynamic.as_ref().and_then(|d| d.soname.clone()) {
        let prefix = b"tcpx-";
        let n = prefix.len().min(soname.len());
        bytes[soname.start..soname.start + n].copy_from_slice(&prefix[..n]);
    }
    let name = file.file_name().unwrap_or(OsStr::new("plugin.so"));
    let (lib, memfd, how) = match via_temp_dir(name, &bytes) {
        Ok(lib) => (lib, None, "a removed file under the temp dir"),
        Err(dir_err) => match via_memfd(&bytes) {
            Ok((lib, fd)) => (lib, Some(fd), "a memfd"),
            Err(fd_err) => {
                return Err(NoCopy::Failed(format!(
                    "temp dir: {dir_err}; memfd: {fd_err}"
                )))
            }
        },
    };
    let opened = Opened {
        lib,
        isolation: Isolation::Private,
        _deps: deps,
        _memfd: memfd,
    };
    Ok((opened, how))
}

/// The file `dlopen(path)` would open, as far as tcpx can tell: `path` itself when it has a
/// `/`, else the first match on `LD_LIBRARY_PATH`.
pub(crate) fn locate(path: &Path) -> Option<PathBuf> {
    if path.as_os_str().as_bytes().contains(&b'/') {
        return Some(path.to_path_buf());
    }
    ld_library_path()
        .into_iter()
        .map(|dir| dir.join(path))
        .find(|p| p.is_file())
}

fn ld_library_path() -> Vec<PathBuf> {
    let v = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    std::env::split_paths(&v)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// Opens the direct dependencies that `file` finds through `$ORIGIN`, from `file`'s own
/// directory, so that a copy elsewhere binds to the same ones (by soname). Best effort: a
/// dependency that cannot be opened here makes the copy's own `dlopen` say what is missing.
fn open_origin_deps(file: &Path, d: &elf::Dynamic) -> Vec<Library> {
    let Some(origin) = std::path::absolute(file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let origin = origin.to_string_lossy();
    let dirs: Vec<PathBuf> = d
        .search_path
        .split(':')
        .filter(|e| e.contains("$ORIGIN") || e.contains("${ORIGIN}"))
        .map(|e| PathBuf::from(e.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let mut deps = Vec::new();
    for needed in d.needed.iter().filter(|n| !n.contains('/')) {
        // Already loaded (bound by soname) or found first on LD_LIBRARY_PATH (which a
        // RUNPATH does not override): the copy finds it the same way the original does.
        if is_loaded(Path::new(needed)) || (!d.rpath_first && locate(Path::new(needed)).is_some()) {
            continue;
        }
        if let Some(dep) = dirs
            .iter()
            .map(|dir| dir.join(needed))
            .find(|p| p.is_file())
        {
            match dlopen(&dep, RTLD_NOW | RTLD_LOCAL) {
                Ok(lib) => deps.push(lib),
                Err(e) => crate::log_debug!("net", "preloading {}: {e}", dep.display()),
            }
        }
    }
    deps
}

/// Writes the copy into a fresh private directory, opens it, removes both.
fn via_temp_dir(name: &OsStr, bytes: &[u8]) -> std::result::Result<Library, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    let mut dir = None;
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = base.join(format!("tcpx-plugin.{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {
                dir = Some(d);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", d.display())),
        }
    }
    let dir = dir.ok_or_else(|| format!("{}: no fresh directory name", base.display()))?;
    let copy = dir.join(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&copy)
        .and_then(|mut f| f.write_all(bytes));
    let lib = match written {
        Ok(()) => dlopen(&copy, RTLD_NOW | RTLD_LOCAL),
        Err(e) => Err(format!("{}: {e}", copy.display())),
    };
    // The mapping outlives the name; nothing is left behind, loaded or not.
    let _ = std::fs::remove_file(&copy);
    let _ = std::fs::remove_dir(&dir);
    lib
}

extern "C" {
    // glibc 2.27+.
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
}
const MFD_CLOEXEC: c_uint = 1;

/// Writes the copy into an anonymous memory file and opens it through `/proc/self/fd`;
/// the descriptor must stay open while the copy is loaded.
fn via_memfd(bytes: &[u8]) -> std::result::Result<(Library, File), String> {
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe { memfd_create(c"tcpx-plugin".as_ptr(), MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes).map_err(|e| e.to_string())?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    dlopen(&path, RTLD_NOW | RTLD_LOCAL).map(|lib| (lib, f))
}

/// Just enough of ELF64 (little-endian) to read a shared object's dynamic section.
mod elf {
    use std::ops::Range;

    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    const DT_STRSZ: u64 = 10;
    const DT_SONAME: u64 = 14;
    const DT_RPATH: u64 = 15;
    const DT_RUNPATH: u64 = 29;

    /// What the loader reads from a shared object's dynamic section.
    #[derive(Debug, Default, PartialEq)]
    pub struct Dynamic {
        /// Byte range of the `DT_SONAME` string in the file.
        pub soname: Option<Range<usize>>,
        pub needed: Vec<String>,
        /// `DT_RUNPATH`, else `DT_RPATH` (`:`-separated, unexpanded).
        pub search_path: String,
        /// The path is a `DT_RPATH`, searched before `LD_LIBRARY_PATH`.
        pub rpath_first: bool,
    }

    /// The `N` bytes at `base + off`, if the file has them.
    fn bytes<const N: usize>(b: &[u8], base: usize, off: usize) -> Option<[u8; N]> {
        let at = base.checked_add(off)?;
        b.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    fn u16_at(b: &[u8], base: usize, off: usize) -> Option<u16> {
        bytes(b, base, off).map(u16::from_le_bytes)
    }
    fn u32_at(b: &[u8], base: usize, off: usize) -> Option<u32> {
        bytes(b, base, off).map(u32::from_le_bytes)
    }
    fn u64_at(b: &[u8], base: usize, off: usize) -> Option<u64> {
        bytes(b, base, off).map(u64::from_le_bytes)
    }
    fn usize_at(b: &[u8], base: usize, off: usize) -> Option<usize> {
        usize::try_from(u64_at(b, base, off)?).ok()
    }

    impl Dynamic {
        /// `None` for anything but a well-formed 64-bit little-endian ELF with a dynamic
        /// section (every offset is bounds-checked).
        pub fn parse(b: &[u8]) -> Option<Dynamic> {
            if b.get(..6)? != b"\x7fELF\x02\x01" {
                return None;
            }
            let phoff = usize_at(b, 0, 0x20)?;
            let phentsize = usize::from(u16_at(b, 0, 0x36)?);
            let phnum = usize::from(u16_at(b, 0, 0x38)?);
            if phentsize < 56 {
                return None;
            }
            // (offset, vaddr, filesz) of each PT_LOAD, and the dynamic section's bytes.
            let mut loads = Vec::new();
            let mut dynamic = None;
            for i in 0..phnum {
                let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
                let ty = u32_at(b, ph, 0)?;
                let (off, vaddr, filesz) = (
                    usize_at(b, ph, 8)?,
                    u64_at(b, ph, 16)?,
                    usize_at(b, ph, 32)?,
                );
                match ty {
                    PT_LOAD => loads.push((off, vaddr, filesz)),
                    PT_DYNAMIC => dynamic = Some(b.get(off..off.checked_add(filesz)?)?),
                    _ => {}
                }
            }
            let dynamic = dynamic?;
            let (mut strtab, mut strsz) = (None, None);
            let mut entries = Vec::new();
            for e in dynamic.chunks_exact(16) {
                let (tag, val) = (u64_at(e, 0, 0)?, u64_at(e, 0, 8)?);
                match tag {
                    DT_NULL => break,
                    DT_STRTAB => strtab = Some(val),
                    DT_STRSZ => strsz = Some(usize::try_from(val).ok()?),
                    DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
                    _ => {}
                }
            }
            // DT_STRTAB is an address: find the file offset of the segment holding it.
            let strtab = strtab?;
            let start = loads.iter().find_map(|&(off, vaddr, filesz)| {
                let rel = usize::try_from(strtab.checked_sub(vaddr)?).ok()?;
                (rel < filesz).then(|| off.checked_add(rel)).flatten()
            })?;
            let table = b.get(start..start.checked_add(strsz?)?)?;
            let string = |val: u64| -> Option<Range<usize>> {
                let at = usize::try_from(val).ok()?;
                let len = table.get(at..)?.iter().position(|&c| c == 0)?;
                Some(start + at..start + at + len)
            };
            let text = |r: Range<usize>| String::from_utf8_lossy(&b[r]).into_owned();
            let mut d = Dynamic::default();
            let (mut rpath, mut runpath) = (None, None);
            for (tag, val) in entries {
                let r = string(val)?;
                match tag {
                    DT_NEEDED => d.needed.push(text(r)),
                    DT_SONAME => d.soname = Some(r),
                    DT_RPATH => rpath = Some(text(r)),
                    _ => runpath = Some(text(r)),
                }
            }
            // The loader ignores DT_RPATH when DT_RUNPATH is present.
            match (runpath, rpath) {
                (Some(p), _) => d.search_path = p,
                (None, Some(p)) => {
                    d.search_path = p;
                    d.rpath_first = true;
                }
                (None, None) => {}
            }
            Some(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_parse() {
        assert_eq!(Isolation::parse(""), Some(Isolation::Private));
        assert_eq!(Isolation::parse("1"), Some(Isolation::Private));
        assert_eq!(Isolation::parse(" Off "), Some(Isolation::Shared));
        assert_eq!(Isolation::parse("0"), Some(Isolation::Shared));
        assert_eq!(Isolation::parse("maybe"), None);
    }

    #[test]
    fn elf_parser_rejects_what_it_cannot_read() {
        assert_eq!(elf::Dynamic::parse(b""), None);
        assert_eq!(elf::Dynamic::parse(b"\x7fELF\x01\x01"), None); // 32-bit
        let mut truncated = b"\x7fELF\x02\x01".to_vec();
        truncated.resize(0x40, 0);
        // Program headers claimed far outside the file.
        truncated[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        truncated[0x36] = 56;
        truncated[0x38] = 1;
        assert_eq!(elf::Dynamic::parse(&truncated), None);
    }

    /// A minimal ELF64 shared object: one PT_LOAD over the whole file (vaddr 0x1000), a
    /// PT_DYNAMIC, and a string table holding a soname, a needed library and a run path.
    fn tiny_elf(runpath_tag: u64) -> Vec<u8> {
        let strtab = b"\0libtiny.so\0libdep.so\0$ORIGIN/lib:/opt\0";
        let (phoff, dynoff) = (64usize, 64 + 2 * 56);
        let dyn_entries: [(u64, u64); 6] = [
            (5, 0x1000 + (dynoff + 6 * 16) as u64), // DT_STRTAB (an address)
            (10, strtab.len() as u64),              // DT_STRSZ
            (14, 1),                                // DT_SONAME
            (1, 12),                                // DT_NEEDED
            (runpath_tag, 22),                      // DT_RUNPATH or DT_RPATH
            (0, 0),                                 // DT_NULL
        ];
        let total = dynoff + dyn_entries.len() * 16 + strtab.len();
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        for (ty, off, vaddr, size) in [
            (1u32, 0usize, 0x1000u64, total),
            (2, dynoff, 0x1000 + dynoff as u64, dyn_entries.len() * 16),
        ] {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&ty.to_le_bytes());
            ph[8..16].copy_from_slice(&(off as u64).to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&ph);
        }
        for (tag, val) in dyn_entries {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&val.to_le_bytes());
        }
        b.extend_from_slice(strtab);
        assert_eq!(b.len(), total);
        b
    }

    #[test]
    fn elf_parser_reads_soname_needed_and_search_path() {
        let b = tiny_elf(29);
        let d = elf::Dynamic::parse(&b).expect("parses");
        assert_eq!(&b[d.soname.clone().unwrap()], b"libtiny.so");
        assert_eq!(d.needed, ["libdep.so"]);
        assert_eq!(d.search_path, "$ORIGIN/lib:/opt");
        assert!(!d.rpath_first);
        let d = elf::Dynamic::parse(&tiny_elf(15)).expect("parses");
        assert!(d.rpath_first, "a DT_RPATH is searched first");
    }

    #[test]
    fn elf_parser_survives_truncated_and_corrupted_files() {
        let good = tiny_elf(29);
        for len in 0..good.len() {
            // Whatever it answers, it answers without reading out of bounds.
            let _ = elf::Dynamic::parse(&good[..len]);
        }
        // Every byte of the headers and tables set to a few hostile values.
        for i in 0..good.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Some(d) = elf::Dynamic::parse(&b) {
                    assert!(d.soname.is_none_or(|r| r.end <= b.len()));
                }
            }
        }
    }

    #[test]
    fn elf_parser_reads_a_real_shared_object() {
        // This test binary's libc: every system has one, with a soname and needed entries.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        let Some(libc) = libc else {
            eprintln!("SKIP: no libc.so.6 at a known path");
            return;
        };
        let b = std::fs::read(libc).unwrap();
        let d = elf::Dynamic::parse(&b).expect("libc parses");
        let soname = d.soname.clone().expect("libc has a soname");
        assert_eq!(&b[soname], b"libc.so.6");
        assert!(d.needed.iter().any(|n| n.starts_with("ld-linux")), "{d:?}");
    }
}
