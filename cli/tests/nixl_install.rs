//! `tcpx nixl install | uninstall | status` run as a process against fake NIXL wheels: a
//! site-packages folder laid out like the 1.5 wheels (dist-info with RECORD, `.nixl_cuXX.
//! mesonpy.libs/{libnixl.so,plugins/}`) whose `nixl_cuXX` module lists and "loads" the
//! `libplugin_*.so` files found there, seen through an interpreter wrapper that puts only that
//! folder on `sys.path`. The real wheels, transfers included, are tested by
//! `tests/nixl_install/` (scripts/nixl-install-tests.sh).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

const PLUGIN: &str = "libplugin_TCPX.so";
const MANIFEST: &str = ".tcpx-installed";

/// A stand-in for a NIXL wheel's Python module: the plugin list is the folder's
/// `libplugin_*.so`, a plugin "loads" when its file starts with an ELF header.
const FAKE_MODULE: &str = r#"
import pathlib
_dir = pathlib.Path(__file__).resolve().parents[1] / ".MODULE.mesonpy.libs" / "plugins"

class nixl_agent_config:
    def __init__(self, backends=()):
        self.backends = backends

class nixl_agent:
    def __init__(self, name, conf=None):
        self._backends = {}

    def get_plugin_list(self):
        return sorted(p.name[len("libplugin_"):-3] for p in _dir.glob("libplugin_*.so"))

    def get_plugin_params(self, name):
        f = _dir / f"libplugin_{name}.so"
        return {"channels": "2"} if f.read_bytes().startswith(b"\x7fELF") else {}

    def create_backend(self, name, params):
        if not self.get_plugin_params(name):
            raise RuntimeError("NIXL_ERR_NOT_FOUND")
        self._backends[name] = {"channels": "2", "gpu": ""}

    def get_backend_params(self, name):
        return self._backends[name]
"#;

/// The machine's `python3` itself: a version manager's shim in front of it costs a few
/// hundred milliseconds per start, and each command starts the interpreter several times.
fn python3() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("these tests need python3");
        assert!(out.status.success(), "python3 does not run");
        PathBuf::from(text(&out.stdout).trim())
    })
}

/// A Python environment holding fake NIXL wheels.
struct FakeEnv {
    root: PathBuf,
    site: PathBuf,
    python: PathBuf,
}

impl FakeEnv {
    fn new(name: &str) -> FakeEnv {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nixl-install-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let site = root.join("site");
        fs::create_dir_all(&site).unwrap();
        let python = root.join("python");
        // -S: no site-packages of the machine's own, only the fake folder (PYTHONPATH).
        fs::write(
            &python,
            format!(
                "#!/bin/sh\nPYTHONPATH='{}' exec '{}' -S \"$@\"\n",
                site.display(),
                python3().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        FakeEnv { root, site, python }
    }

    /// Adds wheel `nixl-<variant>` (e.g. `cu12`) at `version`, with a UCX plugin of its own.
    fn wheel(&self, variant: &str, version: &str) -> &FakeEnv {
        let module = format!("nixl_{variant}");
        let libs = format!(".{module}.mesonpy.libs");
        fs::create_dir_all(self.site.join(&libs).join("plugins")).unwrap();
        fs::write(self.site.join(&libs).join("libnixl.so"), b"\x7fELF libnixl").unwrap();
        fs::write(
            self.site.join(&libs).join("plugins/libplugin_UCX.so"),
            b"\x7fELF ucx",
        )
        .unwrap();
        fs::create_dir_all(self.site.join(&module)).unwrap();
        fs::write(
            self.site.join(&module).join("__init__.py"),
            FAKE_MODULE.replace("MODULE", &module),
        )
        .unwrap();
        self.dist_info(&format!("nixl-{variant}"), &module, version, &libs);
        self
    }

    fn dist_info(&self, dist: &str, module: &str, version: &str, libs: &str) {
        let info = self.site.join(format!("{module}-{version}.dist-info"));
        fs::create_dir_all(&info).unwrap();
        fs::write(
            info.join("METADATA"),
            format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"),
        )
        .unwrap();
        fs::write(
            info.join("RECORD"),
            format!(
                "{libs}/libnixl.so,,\n{libs}/plugins/libplugin_UCX.so,,\n{module}/__init__.py,,\n\
                 {module}-{version}.dist-info/RECORD,,\n"
            ),
        )
        .unwrap();
    }

    /// What `pip install nixl-<variant>==<new>` over `<old>` does to our fake: a new
    /// dist-info; the plugin folder (and what install added to it) stays.
    fn upgrade(&self, variant: &str, old: &str, new: &str) {
        let module = format!("nixl_{variant}");
        fs::remove_dir_all(self.site.join(format!("{module}-{old}.dist-info"))).unwrap();
        self.dist_info(
            &format!("nixl-{variant}"),
            &module,
            new,
            &format!(".{module}.mesonpy.libs"),
        );
    }

    /// What `pip uninstall nixl-<variant>` leaves: the plugin folder with install's files.
    fn remove_wheel(&self, variant: &str, version: &str) {
        let module = format!("nixl_{variant}");
        fs::remove_dir_all(self.site.join(format!("{module}-{version}.dist-info"))).unwrap();
        fs::remove_dir_all(self.site.join(&module)).unwrap();
        let libs = self.site.join(format!(".{module}.mesonpy.libs"));
        fs::remove_file(libs.join("libnixl.so")).unwrap();
        fs::remove_file(libs.join("plugins/libplugin_UCX.so")).unwrap();
    }

    /// A `nixl` meta package that, like the real one with no CUDA stack, picks nixl_cu13.
    fn meta(&self, version: &str) {
        fs::create_dir_all(self.site.join("nixl")).unwrap();
        fs::write(
            self.site.join("nixl/__init__.py"),
            "import importlib, sys\nsys.modules['nixl._api'] = importlib.import_module('nixl_cu13')\n",
        )
        .unwrap();
        self.dist_info("nixl", "nixl", version, "none");
    }

    fn plugins(&self, variant: &str) -> PathBuf {
        self.site
            .join(format!(".nixl_{variant}.mesonpy.libs"))
            .join("plugins")
    }

    /// A shared-object-looking file of `len` bytes, different for each `seed`.
    fn source(&self, name: &str, seed: u8, len: usize) -> PathBuf {
        let mut b: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        b[..4].copy_from_slice(b"\x7fELF");
        let p = self.root.join(name);
        fs::write(&p, b).unwrap();
        p
    }

    fn tcpx(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpx"));
        cmd.arg("nixl")
            .args(args)
            .arg("--python")
            .arg(&self.python)
            .env_remove("NIXL_PLUGIN_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run tcpx")
    }

    /// Every file under the site folder with its content: "nothing changed" is equality.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.site, &mut out);
        out
    }
}

impl Drop for FakeEnv {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{o}\nstderr:\n{e}",
        out.status
    );
    o
}

#[track_caller]
fn fails(out: &Output) -> (String, String) {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout:\n{o}\nstderr:\n{e}");
    (o, e)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn install_is_idempotent_then_status_ready_then_uninstall_restores_the_folders() {
    let env = FakeEnv::new("roundtrip");
    env.wheel("cu12", "1.5.1").wheel("cu13", "1.5.1");
    env.meta("1.5.1");
    let src = env.source("libplugin_TCPX.so", 1, 4096);
    let before = env.snapshot();
    let src_s = src.to_str().unwrap();

    let first = ok(&env.tcpx(&["install", "--plugin", src_s], &[]));
    for v in ["cu12", "cu13"] {
        let dir = env.plugins(v);
        assert_eq!(fs::read(dir.join(PLUGIN)).unwrap(), fs::read(&src).unwrap());
        assert_eq!(names(&dir), [MANIFEST, PLUGIN, "libplugin_UCX.so"]);
        assert!(
            first.contains(&format!(
                "nixl-{v} 1.5.1: installed {}",
                dir.join(PLUGIN).display()
            )),
            "{first}"
        );
        assert!(
            first.contains(&format!("nixl-{v} 1.5.1: TCPX loads")),
            "{first}"
        );
    }
    let inode = |v: &str| fs::metadata(env.plugins(v).join(PLUGIN)).unwrap().ino();
    let inodes = (inode("cu12"), inode("cu13"));

    let second = ok(&env.tcpx(&["install", "--plugin", src_s], &[]));
    assert_eq!(
        second.matches("already installed, unchanged").count(),
        2,
        "{second}"
    );
    assert_eq!(
        (inode("cu12"), inode("cu13")),
        inodes,
        "an unchanged install rewrote the file"
    );

    let status = ok(&env.tcpx(&["status", "--plugin", src_s], &[("TCPX_GPU", "3")]));
    for line in [
        "nixl-cu12        1.5.1\n",
        "nixl-cu13        1.5.1\n",
        &format!("  plugins        {}\n", env.plugins("cu13").display()),
        "  loads          loads (plugins: TCPX UCX)\n",
        "  backend        created (backends=[\"TCPX\"], no options)\n",
        "import nixl      nixl_cu13 (meta package nixl 1.5.1;",
        "NIXL_PLUGIN_DIR  unset",
        "TCPX environment TCPX_GPU=3\n",
        "effective        channels=2 gpu= (get_backend_params in nixl_cu13)\n",
        "ready            yes",
    ] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    assert_eq!(status.matches(", current\n").count(), 2, "{status}");

    let removed = ok(&env.tcpx(&["uninstall"], &[]));
    assert_eq!(removed.matches(": removed ").count(), 2, "{removed}");
    assert_eq!(env.snapshot(), before, "uninstall left something behind");
    let again = ok(&env.tcpx(&["uninstall"], &[]));
    assert_eq!(again.matches(": not installed").count(), 2, "{again}");

    let (status, _) = fails(&env.tcpx(&["status", "--plugin", src_s], &[]));
    assert!(
        status.contains("  TCPX           not installed"),
        "{status}"
    );
    assert!(status.contains("ready            no"), "{status}");
}

#[test]
fn an_unknown_nixl_version_is_refused_by_name_and_nothing_is_written() {
    let env = FakeEnv::new("refuse");
    env.wheel("cu12", "1.5.1").wheel("cu13", "1.4.0");
    let src = env.source("p.so", 2, 1000);
    let before = env.snapshot();
    let (out, err) = fails(&env.tcpx(&["install", "--plugin", src.to_str().unwrap()], &[]));
    assert!(
        err.contains("refused, nothing was changed") && err.contains("nixl-cu13 1.4.0"),
        "{err}"
    );
    assert!(
        err.contains("NIXL 1.5.1"),
        "the accepted versions are named: {err}"
    );
    assert!(
        !err.contains("nixl-cu12 1.5.1"),
        "a good wheel is not blamed: {err}"
    );
    assert!(!out.contains("installed"), "{out}");
    assert_eq!(env.snapshot(), before);
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let env = FakeEnv::new("badinput");
    env.wheel("cu12", "1.5.1");
    let before = env.snapshot();
    let not_elf = env.root.join("notes.txt");
    fs::write(&not_elf, b"hello").unwrap();
    let (_, err) = fails(&env.tcpx(&["install", "--plugin", not_elf.to_str().unwrap()], &[]));
    assert!(err.contains("is not a shared object"), "{err}");
    let missing = env.root.join("missing.so");
    let (_, err) = fails(&env.tcpx(&["install", "--plugin", missing.to_str().unwrap()], &[]));
    assert!(
        err.contains("cannot read the plugin") && err.contains("missing.so"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before);

    let empty = FakeEnv::new("nonixl");
    let src = empty.source("p.so", 3, 100);
    let (_, err) = fails(&empty.tcpx(&["install", "--plugin", src.to_str().unwrap()], &[]));
    assert!(
        err.contains("no NIXL wheel (nixl-cu12, nixl-cu13)"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tcpx"))
        .args(["nixl", "install", "--python", "/nonexistent/python"])
        .args(["--plugin", src.to_str().unwrap()])
        .output()
        .unwrap();
    let (_, err) = fails(&out);
    assert!(err.contains("cannot run /nonexistent/python"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tcpx"))
        .args(["nixl", "reinstall"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_reader_of_the_old_file_keeps_it_and_the_final_path_is_never_partial() {
    let env = FakeEnv::new("atomic");
    env.wheel("cu12", "1.5.1");
    // Large enough that an in-place copy would be seen half written.
    let a = env.source("a.so", 0xa, 2 << 20);
    let b = env.source("b.so", 0xb, 3 << 19);
    let (a_bytes, b_bytes) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let target = env.plugins("cu12").join(PLUGIN);
    let install = |p: &Path| ok(&env.tcpx(&["install", "--plugin", p.to_str().unwrap()], &[]));

    install(&a);
    let mut held = fs::File::open(&target).unwrap();
    install(&b);
    let mut seen = Vec::new();
    held.read_to_end(&mut seen).unwrap();
    assert!(seen == a_bytes, "an open reader's file changed under it");
    assert!(fs::read(&target).unwrap() == b_bytes);

    // Readers racing repeated replacements see one whole version or the other, every time.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, target) = (stop.clone(), reads.clone(), target.clone());
        let (a_bytes, b_bytes) = (a_bytes.clone(), b_bytes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let got = fs::read(&target).expect("the plugin path always exists");
                assert!(
                    got == a_bytes || got == b_bytes,
                    "a reader saw a partial file ({} bytes)",
                    got.len()
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..4 {
        install(if round % 2 == 0 { &a } else { &b });
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(
        names(&env.plugins("cu12")),
        [MANIFEST, PLUGIN, "libplugin_UCX.so"]
    );
}

#[test]
fn uninstall_removes_only_what_install_wrote() {
    let env = FakeEnv::new("owned");
    env.wheel("cu12", "1.5.1");
    let dir = env.plugins("cu12");
    // A copy put there by hand (the old docs' `cp`): not ours to remove.
    fs::write(dir.join(PLUGIN), b"\x7fELF by hand").unwrap();
    let (out, _) = fails(&env.tcpx(&["uninstall"], &[]));
    assert!(
        out.contains("was not put there by tcpx nixl install: left alone"),
        "{out}"
    );
    assert_eq!(fs::read(dir.join(PLUGIN)).unwrap(), b"\x7fELF by hand");
    let (status, _) = fails(&env.tcpx(&["status"], &[]));
    assert!(
        status.contains("but not put there by tcpx nixl install"),
        "{status}"
    );

    // Install takes it over (same name, it is a TCPX plugin); a later edit is not ours.
    let src = env.source("p.so", 4, 2000);
    let out = ok(&env.tcpx(&["install", "--plugin", src.to_str().unwrap()], &[]));
    assert!(
        out.contains("replacing a copy tcpx had not put there"),
        "{out}"
    );
    fs::write(dir.join(PLUGIN), b"\x7fELF edited").unwrap();
    let (out, _) = fails(&env.tcpx(&["uninstall"], &[]));
    assert!(
        out.contains("changed since tcpx nixl install wrote it: left alone"),
        "{out}"
    );
    assert_eq!(fs::read(dir.join(PLUGIN)).unwrap(), b"\x7fELF edited");
    let (status, _) = fails(&env.tcpx(&["status", "--plugin", src.to_str().unwrap()], &[]));
    assert!(
        status.contains("changed since tcpx nixl install wrote it"),
        "{status}"
    );
}

#[test]
fn status_tells_stale_copies_and_uninstall_cleans_them() {
    let env = FakeEnv::new("stale");
    env.wheel("cu12", "1.5.1");
    let old = env.source("old.so", 5, 3000);
    let new = env.source("new.so", 6, 3000);
    ok(&env.tcpx(&["install", "--plugin", old.to_str().unwrap()], &[]));

    // Another tcpx build than the one installed.
    let (status, _) = fails(&env.tcpx(&["status", "--plugin", new.to_str().unwrap()], &[]));
    assert!(
        status.contains("  TCPX           stale: installed by tcpx"),
        "{status}"
    );
    assert!(status.contains(new.to_str().unwrap()), "{status}");

    // A NIXL upgrade left our copy behind.
    env.upgrade("cu12", "1.5.1", "1.6.0");
    let (status, _) = fails(&env.tcpx(&["status", "--plugin", old.to_str().unwrap()], &[]));
    assert!(
        status.contains("stale: installed for nixl-cu12 1.5.1, the wheel is now nixl-cu12 1.6.0"),
        "{status}"
    );
    assert!(status.contains("1.6.0 (not a version tcpx's backend is built for: 1.5.1)"));
    let (_, err) = fails(&env.tcpx(&["install", "--plugin", old.to_str().unwrap()], &[]));
    assert!(err.contains("nixl-cu12 1.6.0"), "{err}");
    // Uninstall works whatever the version: it is how the stale copy goes away.
    let out = ok(&env.tcpx(&["uninstall"], &[]));
    assert!(out.contains("nixl-cu12 1.6.0: removed"), "{out}");
    assert_eq!(names(&env.plugins("cu12")), ["libplugin_UCX.so"]);

    // The wheel removed by pip with our files still in its folder.
    env.upgrade("cu12", "1.6.0", "1.5.1");
    ok(&env.tcpx(&["install", "--plugin", old.to_str().unwrap()], &[]));
    env.remove_wheel("cu12", "1.5.1");
    let (status, _) = fails(&env.tcpx(&["status", "--plugin", old.to_str().unwrap()], &[]));
    assert!(
        status.contains("no NIXL wheel (nixl-cu12, nixl-cu13)"),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "left behind      {}",
            env.plugins("cu12").display()
        )),
        "{status}"
    );
    let out = ok(&env.tcpx(&["uninstall"], &[]));
    assert!(out.contains("(no NIXL wheel): removed"), "{out}");
    assert!(names(&env.plugins("cu12")).is_empty());
}

#[test]
fn status_names_nixl_plugin_dir_when_it_overrides_the_wheel_folders() {
    let env = FakeEnv::new("plugindir");
    env.wheel("cu12", "1.5.1");
    let src = env.source("p.so", 7, 100);
    ok(&env.tcpx(&["install", "--plugin", src.to_str().unwrap()], &[]));
    let elsewhere = env.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let (out, _) = fails(&env.tcpx(
        &["status", "--plugin", src.to_str().unwrap()],
        &[("NIXL_PLUGIN_DIR", elsewhere.to_str().unwrap())],
    ));
    assert!(
        out.contains(&format!(
            "NIXL_PLUGIN_DIR  {} is set: NIXL loads plugins from there instead",
            elsewhere.display()
        )) && out.contains("TCPX is NOT there"),
        "{out}"
    );
    assert!(
        out.contains("import nixl      the nixl meta package is not installed"),
        "{out}"
    );
}
