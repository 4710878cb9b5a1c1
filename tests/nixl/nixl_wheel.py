"""Which NIXL the tests drive, and where it finds the TCPX plugin.

NIXL: `TCPX_NIXL_MODULE` names the module to import (`nixl`, `nixl_cu12` or `nixl_cu13`);
unset, the first importable of `nixl` (the meta package, what users import: it picks
`nixl_cu13` or `nixl_cu12` by the CUDA it finds), `nixl_cu12`, `nixl_cu13`. The choice is
written back to the environment so peer processes import the same one.

The plugin, in this order:
1. `NIXL_PLUGIN_DIR` set: used as it is (it *replaces* the wheel's own plugin folder: UCX
   needs the links `ucx_env` makes, docs/NIXL.md);
2. `TCPX_PLUGIN_DIR` set: NIXL_PLUGIN_DIR is pointed at it;
3. `libplugin_TCPX.so` in the wheel's own plugin folder (put there by `tcpx nixl install`):
   nothing is set, NIXL finds TCPX beside UCX the way users get it;
4. otherwise NIXL_PLUGIN_DIR is pointed at `<repo>/target/plugins`.
`TCPX_NIXL_PLUGIN=installed` makes the suite insist on 3 (conftest.py: a run meant to test the
installed plugin cannot fall back to another).

libnixl reads NIXL_PLUGIN_DIR when the first agent is created: importing this module settles
it before any agent exists.
"""

import atexit
import functools
import importlib
import importlib.util
import os
import pathlib
import shutil
import socket
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE_ENV = "TCPX_NIXL_MODULE"
CANDIDATES = ("nixl", "nixl_cu12", "nixl_cu13")
PLUGIN_FILE = "libplugin_TCPX.so"
# Where the build puts the plugins (scripts/collect-plugins.sh), tcpxsock included.
BUILT_DIR = pathlib.Path(os.environ.get("TCPX_PLUGIN_DIR") or REPO / "target" / "plugins")


def _importable(name):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    # A folder named like the module on sys.path is a namespace package (origin None), not
    # NIXL.
    return spec is not None and spec.origin is not None


def _pick():
    want = os.environ.get(MODULE_ENV, "").strip()
    if want:
        if want not in CANDIDATES:
            raise ImportError(f"{MODULE_ENV}={want!r}: expected one of {', '.join(CANDIDATES)}")
        return want
    for name in CANDIDATES:
        if _importable(name):
            return name
    raise ImportError(f"no NIXL to import (tried {', '.join(CANDIDATES)}); "
                      "scripts/nixl-venv.sh makes a venv with one")


MODULE = _pick()
os.environ[MODULE_ENV] = MODULE
_api = importlib.import_module(f"{MODULE}._api")
nixl_agent = _api.nixl_agent
nixl_agent_config = _api.nixl_agent_config
# The binding's exception classes (nixlBackendError, nixlNotFoundError, ...).
errors = importlib.import_module(f"{MODULE}._bindings")
# The wheel that really runs: `nixl` resolves to nixl_cu12 or nixl_cu13.
WHEEL = _api.__name__.partition(".")[0]
SITE = pathlib.Path(importlib.util.find_spec(WHEEL).origin).resolve().parents[1]
# libnixl.so and the plugin folder it scans when NIXL_PLUGIN_DIR is unset.
LIBS = SITE / f".{WHEEL}.mesonpy.libs"
WHEEL_PLUGINS = LIBS / "plugins"


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(WHEEL.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown version"


VERSION = _version()

if not os.environ.get("NIXL_PLUGIN_DIR") and os.environ.get("TCPX_PLUGIN_DIR"):
    os.environ["NIXL_PLUGIN_DIR"] = os.environ["TCPX_PLUGIN_DIR"]
if os.environ.get("NIXL_PLUGIN_DIR"):
    INSTALLED = False
    PLUGIN_DIR = pathlib.Path(os.environ["NIXL_PLUGIN_DIR"])
elif (WHEEL_PLUGINS / PLUGIN_FILE).is_file():
    INSTALLED = True
    PLUGIN_DIR = WHEEL_PLUGINS
else:
    INSTALLED = False
    PLUGIN_DIR = BUILT_DIR
    os.environ["NIXL_PLUGIN_DIR"] = str(PLUGIN_DIR)
PLUGIN = PLUGIN_DIR / PLUGIN_FILE


BIND_TRIES = 5


def free_port():
    """A loopback TCP port nobody listens on right now. It cannot be reserved: another socket
    may take it before NIXL binds it, which `listening_agent` survives."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_agent(name, backends=()):
    """A nixl_agent with NIXL's metadata listener on a free port; returns (agent, port).
    NIXL fails to create the agent when its port was taken after `free_port` chose it: a new
    port is tried then, `BIND_TRIES` times in all."""
    def create():
        port = free_port()
        config = nixl_agent_config(enable_listen_thread=True, listen_port=port,
                                   backends=list(backends))
        return nixl_agent(name, config), port

    for _ in range(BIND_TRIES - 1):
        try:
            return create()
        except RuntimeError as e:
            if "bind" not in str(e):
                raise
    return create()


def describe():
    """One line for reports: the NIXL imported and where TCPX comes from."""
    via = f"{MODULE} -> {WHEEL}" if MODULE != WHEEL else WHEEL
    where = (f"installed in the wheel's plugin folder {PLUGIN_DIR}" if INSTALLED
             else f"NIXL_PLUGIN_DIR={PLUGIN_DIR}")
    return f"NIXL {via} {VERSION}; TCPX plugin {where}"


def ucx_reason():
    """None when NIXL can load its UCX plugin in a peer (`ucx_env`), else why not."""
    if not (WHEEL_PLUGINS / "libplugin_UCX.so").is_file():
        return f"the {WHEEL} wheel has no UCX plugin"
    return None


@functools.lru_cache(maxsize=1)
def _ucx_links():
    d = pathlib.Path(tempfile.mkdtemp(prefix="nixl-test-plugins-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    (d / PLUGIN_FILE).symlink_to(PLUGIN.resolve())
    (d / "libplugin_UCX.so").symlink_to(WHEEL_PLUGINS / "libplugin_UCX.so")
    return str(d)


def ucx_env():
    """Environment for a process that runs NIXL's UCX backend over TCP (UCX_TLS=tcp, and
    cuda_copy where a GPU is present: NIXL's UCX backend refuses to start without it there).

    Installed plugin: NIXL finds UCX in its own folder, nothing else is needed. With
    NIXL_PLUGIN_DIR (which replaces that folder), a temporary folder gets links to our plugin
    and the wheel's UCX plugin, and UCX's libraries (found through the RPATH
    `$ORIGIN/..:$ORIGIN/../../<wheel>.libs`, which a link elsewhere breaks) go on
    LD_LIBRARY_PATH, read at process start (docs/NIXL.md)."""
    from cuda_mem import gpu_reason

    env = dict(os.environ)
    if not INSTALLED:
        env["NIXL_PLUGIN_DIR"] = _ucx_links()
        path = [str(LIBS), str(SITE / f"{WHEEL}.libs")]
        if env.get("LD_LIBRARY_PATH"):
            path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(path)
    env.setdefault("UCX_TLS", "tcp")
    if "cuda_copy" not in env["UCX_TLS"] and gpu_reason() is None:
        env["UCX_TLS"] += ",cuda_copy"
    env.setdefault("TCPX_SOCK_IFNAME", "lo")
    return env
