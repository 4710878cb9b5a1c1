//! The plugin file install copies, the manifest it writes beside it, and the atomic writes
//! (temporary file, fsync, rename) that keep a running NIXL process safe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{NixlResult, Options, MANIFEST_FILE, PLUGIN_FILE};

/// What install wrote into one plugin folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Manifest {
    /// [`fingerprint`] of the plugin file as written.
    pub(super) hash: String,
    /// `nixl-cu12 1.5.1`: the wheel it was installed into.
    pub(super) nixl: String,
    /// The tcpx version that wrote it.
    pub(super) tcpx: String,
    /// The file it was copied from.
    pub(super) source: String,
}

impl Manifest {
    pub(super) fn render(&self) -> String {
        format!(
            "# Written by `tcpx nixl install`. `tcpx nixl uninstall` removes {PLUGIN_FILE} while\n\
             # its hash is this one, then this file.\n\
             file={PLUGIN_FILE}\nhash={}\nnixl={}\ntcpx={}\nsource={}\n",
            self.hash, self.nixl, self.tcpx, self.source
        )
    }

    pub(super) fn parse(text: &str) -> Option<Manifest> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        if get("file").as_deref() != Some(PLUGIN_FILE) {
            return None;
        }
        let hash = get("hash")?;
        (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Manifest {
            hash: hash.to_ascii_lowercase(),
            nixl: get("nixl").unwrap_or_default(),
            tcpx: get("tcpx").unwrap_or_default(),
            source: get("source").unwrap_or_default(),
        })
    }

    pub(super) fn read(dir: &Path) -> io::Result<Option<Manifest>> {
        match fs::read_to_string(dir.join(MANIFEST_FILE)) {
            Ok(t) => Ok(Manifest::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file written and synced under a temporary name in its final folder, not yet renamed.
/// The temporary name starts with `.` and does not end in `.so`, so libnixl's folder scan
/// (`libplugin_*.so`) never sees it. Dropped uncommitted, it is removed.
pub(super) struct Staged {
    pub(super) tmp: PathBuf,
    pub(super) dst: PathBuf,
    pub(super) committed: bool,
}

impl Staged {
    pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<Staged> {
        let tmp = dir.join(format!(".{name}.tcpx-tmp.{}", std::process::id()));
        // A leftover of a killed run of this same pid; never a file of anyone else.
        let _ = fs::remove_file(&tmp);
        let staged = Staged {
            tmp,
            dst: dir.join(name),
            committed: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644) // as the wheel's own plugins
            .open(&staged.tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(staged)
    }

    /// Renames over the final name: a process that has the old file open or mapped keeps it.
    pub(super) fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.dst)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes renames and removals in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The plugin this tcpx installs: `--plugin`, else `<dir of this binary>/../plugins/`
/// (`target/plugins` for `target/*/tcpx`, where `scripts/collect-plugins.sh` puts it).
pub(super) fn default_plugin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("plugins").join(PLUGIN_FILE))
}

/// The plugin file to install, read and checked to be a shared object.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) bytes: Vec<u8>,
    pub(super) hash: String,
}

pub(super) fn read_source(path: &Path) -> NixlResult<Source> {
    let bytes = fs::read(path).map_err(|e| {
        format!(
            "cannot read the plugin {}: {e} (build it: cargo build -p tcpx-nixl && \
             scripts/collect-plugins.sh, or pass --plugin PATH)",
            path.display()
        )
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(format!(
            "{} is not a shared object (no ELF header)",
            path.display()
        ));
    }
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(Source {
        hash: fingerprint(&bytes),
        path,
        bytes,
    })
}

pub(super) fn plugin_source(o: &Options) -> NixlResult<Source> {
    match &o.plugin {
        Some(p) => read_source(p),
        None => read_source(&default_plugin().ok_or("cannot locate this tcpx binary's folder")?),
    }
}

/// FNV-1a (64-bit) of `data`, 16 hex digits: recognises the file install wrote and tells a
/// stale or changed copy. A fingerprint, not a security check (whoever can write the plugin
/// folder can write the manifest too); chosen over a cryptographic hash because it costs a
/// tenth of a second on a 40 MB debug build of the plugin, where SHA-256 unoptimised takes
/// seconds.
pub(super) fn fingerprint(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_fnv1a_64() {
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn manifest_round_trips_and_rejects_foreign_files() {
        let m = Manifest {
            hash: "ab".repeat(8),
            nixl: "nixl-cu12 1.5.1".into(),
            tcpx: "0.1.0".into(),
            source: "/x/libplugin_TCPX.so".into(),
        };
        assert_eq!(Manifest::parse(&m.render()), Some(m.clone()));
        assert_eq!(Manifest::parse("file=libplugin_UCX.so\nhash=00\n"), None);
        let short_hash = m.render().replace(&"ab".repeat(8), "abc");
        assert_eq!(Manifest::parse(&short_hash), None);
    }

    #[test]
    fn staged_file_is_invisible_until_committed_and_removed_if_dropped() {
        let dir = std::env::temp_dir().join(format!("tcpx-nixl-stage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), b"old").unwrap();
        let s = Staged::write(&dir, "f", b"new").unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"old");
        s.commit().unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");
        drop(Staged::write(&dir, "f", b"newer").unwrap());
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "a temporary file was left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
