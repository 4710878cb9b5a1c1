"""`tcpx nixl install | status | uninstall` against the real NIXL wheels, each in a fresh venv
made by scripts/nixl-install-tests.sh (installed with --no-deps: no torch):

    cu12   nixl-cu12==1.5.1                          agents from `import nixl_cu12`
    nixl   nixl-cu12 + nixl-cu13 + nixl==1.5.1       agents from `import nixl` (picks nixl_cu13
           (what `pip install nixl` installs)         with no CUDA stack) and `import nixl_cu12`

For each venv: install twice (the second changes nothing), status, two processes with
`backends=["TCPX", "UCX"]` and no NIXL_PLUGIN_DIR doing WRITE and READ (with a notification)
over each backend, the plugin replaced while those processes have it loaded (they go on
transferring; a new process loads the new file), uninstall (TCPX gone, UCX still there), and
a NIXL version tcpx is not built for refused by name with nothing written.

Environment: NIXL_INSTALL_VENVS (folder holding the venvs, default .tools/nixl-install),
TCPX_BIN (default target/debug/tcpx), TCPX_PLUGIN_DIR (folder with libplugin_TCPX.so,
default target/plugins). No timing is asserted; every wait is bounded.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

from peer import Peer

REPO = pathlib.Path(__file__).resolve().parents[2]
VENVS = pathlib.Path(os.environ.get("NIXL_INSTALL_VENVS", REPO / ".tools" / "nixl-install"))
TCPX = pathlib.Path(os.environ.get("TCPX_BIN", REPO / "target" / "debug" / "tcpx"))
PLUGIN_DIR = pathlib.Path(os.environ.get("TCPX_PLUGIN_DIR", REPO / "target" / "plugins"))
PLUGIN = "libplugin_TCPX.so"
MANIFEST = ".tcpx-installed"
VERSION = "1.5.1"
BOUND_S = 300

# venv name -> (wheels installed, modules agents are created from, what `import nixl` picks)
CASES = {
    "cu12": (["nixl-cu12"], ["nixl_cu12"], None),
    "nixl": (["nixl-cu12", "nixl-cu13"], ["nixl", "nixl_cu12"], "nixl_cu13"),
}


def site_of(python):
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, timeout=BOUND_S, check=True,
    )
    return pathlib.Path(out.stdout.strip())


def plugin_folder(site, wheel):
    return site / f".{wheel.replace('-', '_')}.mesonpy.libs" / "plugins"


def peer_env():
    """The environment of a vLLM-like process: no NIXL_PLUGIN_DIR, tcpxsock on loopback."""
    env = {k: v for k, v in os.environ.items() if k != "NIXL_PLUGIN_DIR"}
    env["TCPX_SOCK_IFNAME"] = "lo"
    return env


def tcpx(*args, expect=0):
    r = subprocess.run(
        [str(TCPX), "nixl", *map(str, args)],
        capture_output=True, text=True, timeout=BOUND_S, env=peer_env(),
    )
    assert r.returncode == expect, f"tcpx nixl {args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout, r.stderr


@pytest.fixture(params=sorted(CASES))
def venv(request):
    python = VENVS / request.param / "bin" / "python"
    assert python.exists(), f"{python} missing: run scripts/nixl-install-tests.sh"
    return request.param, str(python)


@pytest.fixture
def plugin(tmp_path):
    """A private copy of the built plugin (a rebuild of target/ during the run cannot change
    what the test installs) and a second, different build of it (same code, extra bytes at
    the end, which the loader ignores) for the replace-while-loaded step."""
    src = PLUGIN_DIR / PLUGIN
    assert src.exists(), f"{src} missing: cargo build -p tcpx-nixl && scripts/collect-plugins.sh"
    a = tmp_path / "a" / PLUGIN
    b = tmp_path / "b" / PLUGIN
    a.parent.mkdir()
    b.parent.mkdir()
    shutil.copyfile(src, a)
    shutil.copyfile(src, b)
    with open(b, "ab") as f:
        f.write(b"another tcpx build" * 64)
    return a, b


def pair(python, module, rounds):
    """A target and an initiator agent in two processes, each with the buffers of `rounds`
    WRITE/READ rounds registered, then metadata exchanged both ways (metadata carries the
    registrations that exist when it is taken)."""
    env = peer_env()
    target = Peer(python, module, f"target-{module}", env)
    try:
        initiator = Peer(python, module, f"initiator-{module}", env)
    except BaseException:
        target.close()
        raise
    size = 1 << 20
    bufs = []
    for r in range(rounds):
        bufs.append({
            "sink": target.call("register", size=size),
            "source": target.call("register", size=size, seed=2 * r + 1),
            "src": initiator.call("register", size=size, seed=2 * r + 2),
            "dst": initiator.call("register", size=size),
        })
    for a, b in ((target, initiator), (initiator, target)):
        assert a.call("add", md=b.call("md")["md"])["name"] == b.name
    return target, initiator, bufs


def write_and_read(target, initiator, bufs, backend):
    """WRITE a pattern into the target (with a notification), READ another one back; both
    checked byte for byte."""
    notif = f"{backend}-{bufs['src']['id']}"
    w = initiator.call("xfer", op="WRITE", id=bufs["src"]["id"], addr=bufs["sink"]["addr"],
                       peer=target.name, backend=backend, notif=notif)
    assert w == {"state": "DONE", "backend": backend}
    assert target.call("notifs", count=1)["notifs"] == [notif]
    assert target.call("digest", id=bufs["sink"]["id"]) == \
        initiator.call("digest", id=bufs["src"]["id"])
    r = initiator.call("xfer", op="READ", id=bufs["dst"]["id"], addr=bufs["source"]["addr"],
                       peer=target.name, backend=backend)
    assert r == {"state": "DONE", "backend": backend}
    assert initiator.call("digest", id=bufs["dst"]["id"]) == \
        target.call("digest", id=bufs["source"]["id"])


def test_install_transfer_replace_uninstall(venv, plugin):
    name, python = venv
    wheels, modules, picked = CASES[name]
    site = site_of(python)
    folders = [plugin_folder(site, w) for w in wheels]
    a, b = plugin
    before = {f: sorted(p.name for p in f.iterdir()) for f in folders}
    assert all("libplugin_UCX.so" in names and PLUGIN not in names for names in before.values())

    out, _ = tcpx("install", "--python", python, "--plugin", a)
    for w, f in zip(wheels, folders):
        assert f"{w} {VERSION}: installed {f / PLUGIN}" in out, out
        assert f"{w} {VERSION}: TCPX loads" in out, out
        assert (f / PLUGIN).read_bytes() == a.read_bytes()
        assert (f / MANIFEST).exists()
    inodes = [(f / PLUGIN).stat().st_ino for f in folders]
    out, _ = tcpx("install", "--python", python, "--plugin", a)
    assert out.count("already installed, unchanged") == len(wheels), out
    assert [(f / PLUGIN).stat().st_ino for f in folders] == inodes

    status, _ = tcpx("status", "--python", python, "--plugin", a)
    assert status.count(", current\n") == len(wheels), status
    assert status.count("  loads          loads (plugins:") == len(wheels), status
    assert "ready            yes" in status, status
    if picked:
        assert f"import nixl      {picked} (meta package nixl {VERSION}; no CUDA version" in status
    else:
        assert "import nixl      the nixl meta package is not installed" in status

    for module in modules:
        target, initiator, bufs = pair(python, module, 3)
        try:
            for p in (target, initiator):
                assert p.ready["backends"] == ["TCPX", "UCX"], p.ready
                assert p.ready["module"] == (picked if module == "nixl" else module)
            for backend, round_bufs in zip(("TCPX", "UCX"), bufs):
                write_and_read(target, initiator, round_bufs, backend)

            # Replaced while both processes have it mapped: they keep the old file and go on.
            out, _ = tcpx("install", "--python", python, "--plugin", b)
            assert out.count(": updated ") == len(wheels), out
            assert all((f / PLUGIN).read_bytes() == b.read_bytes() for f in folders)
            write_and_read(target, initiator, bufs[2], "TCPX")
            fresh = Peer(python, module, f"fresh-{module}", peer_env())
            try:
                assert fresh.ready["backends"] == ["TCPX", "UCX"], fresh.ready
            finally:
                fresh.close()
            for p in (target, initiator):
                assert p.proc.poll() is None, f"{p.name} died (rc {p.proc.poll()})"
        finally:
            target.close()
            initiator.close()
        tcpx("install", "--python", python, "--plugin", a)

    out, _ = tcpx("uninstall", "--python", python)
    assert out.count(": removed ") == len(wheels), out
    assert {f: sorted(p.name for p in f.iterdir()) for f in folders} == before
    status, _ = tcpx("status", "--python", python, "--plugin", a, expect=1)
    assert status.count("  TCPX           not installed") == len(wheels), status
    gone = Peer(python, modules[0], "after-uninstall", peer_env())
    try:
        assert gone.ready["backends"] == ["UCX"], gone.ready
        assert "TCPX" not in gone.ready["plugins"] and "UCX" in gone.ready["plugins"]
    finally:
        gone.close()


def test_a_version_tcpx_is_not_built_for_is_refused(venv, plugin):
    """The wheel's metadata says 1.4.0 (what an older or newer NIXL looks like to install)."""
    name, python = venv
    wheels = CASES[name][0]
    site = site_of(python)
    meta = site / f"{wheels[0].replace('-', '_')}-{VERSION}.dist-info" / "METADATA"
    text = meta.read_text()
    assert f"\nVersion: {VERSION}\n" in text
    folders = [plugin_folder(site, w) for w in wheels]
    before = {f: sorted(p.name for p in f.iterdir()) for f in folders}
    meta.write_text(text.replace(f"\nVersion: {VERSION}\n", "\nVersion: 1.4.0\n"))
    try:
        _, err = tcpx("install", "--python", python, "--plugin", plugin[0], expect=1)
    finally:
        meta.write_text(text)
    assert "refused, nothing was changed" in err and f"{wheels[0]} 1.4.0" in err, err
    assert {f: sorted(p.name for p in f.iterdir()) for f in folders} == before
