#!/usr/bin/env python3
"""Real NCCL (PyTorch's) through tcpxsock, with NCCL's own Socket transport as the baseline.

Each configuration starts its ranks (nccl_worker.py; two, or four for the *-4ranks ones) on the
GPU(s) named by --gpus (default all on GPU 0), each with its own NCCL_HOSTID: NCCL takes them
for separate hosts, so with P2P, SHM and NVLS off every byte goes through the network plugin.
tcpxsock runs in TCPX mode there (a CUDA machine): NCCL's own unpack kernel copies what
tcpxsock leaves in bounce pages.

Every run is bounded (--timeout-s per configuration, every rank killed at the end of it); a
killed or failed run names the operation each rank was in. NCCL's log is checked for the
plugin being loaded and used, for the UNPACK device, and (with GPUDirect) for GDRDMA on every
receive channel.

    run_nccl.py [--check [CONFIG ...]] [--bench --json PATH] [--plugin SO] [--logdir DIR]

Without torch or a GPU it prints SKIP and exits 0 (1 under REQUIRE_GPU=1).
Environment: TCPX_PLUGIN_DIR (default <repo>/target/plugins) holds libnccl-net-tcpxsock.so.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "nccl_worker.py"
PLUGIN_FILE = "libnccl-net-tcpxsock.so"
PLUGIN_NAME = "tcpxsock"  # the ncclNet name field, what NCCL_NET matches
MARK = "NCCLTEST"
# After one rank fails, the other is given this long to fail too before it is killed.
GRACE_S = 15


def default_plugin():
    return pathlib.Path(os.environ.get("TCPX_PLUGIN_DIR", REPO / "target" / "plugins")) / PLUGIN_FILE


@dataclasses.dataclass(frozen=True)
class Config:
    """One way of running NCCL. transport: the NCCL_NET name; proto: NCCL_PROTO or None for
    NCCL's own choice; gdr: GPUDirect on (NCCL_NET_GDR_LEVEL=SYS, the receive buffers are
    device memory, which tcpxsock receives through bounce pages + the unpack kernel) or off
    (LOC: host buffers, received in place); knobs: settings of a tcpxsock run (TCPX_SOCK_*, or
    the NCCL_* it is about); plan: nccl_worker.py's;
    ranks: processes, each its own "host"."""

    name: str
    transport: str
    proto: object
    gdr: bool
    knobs: tuple = ()
    plan: str = "full"
    why: str = ""
    ranks: int = 2


TCPX_FIDELITY = (("TCPX_SOCK_ODD_FRAGMENTS", "1"), ("TCPX_SOCK_LINEAR_BYTES", "3000"))

# NCCL's PAT algorithm (AllGather/ReduceScatter with one rank per node: exactly these runs)
# reads its receive FIFO directly (src/device/prims_simple.h, patCopy/patReduce): it never
# calls the unpack and never advances the UNPACK head, so with an UNPACK device it reads bytes
# still in bounce pages and leaves the connection's meta slots out of step for every later
# collective on it. NCCL means to turn PAT off for such devices (src/graph/tuning.cc,
# ncclPatEnable: `comm->netDeviceType != NCCL_NET_DEVICE_HOST`), but since 2.24 nothing sets
# `comm->netDeviceType` (ncclTopoGetSystem stopped copying it from getProperties; open NCCL
# PR #2121), so it reads HOST and PAT is chosen (PAT_PROBE shows it). A job with one GPU per
# node on TCPX (or tcpxsock) must turn PAT off or pin the ring (Google's A3 settings:
# NCCL_ALGO=Ring); every GPUDirect run below does one of the two.
PAT_OFF = (("NCCL_PAT_ENABLE", "0"),)

CHECKS = (
    Config("socket-simple", "Socket", "Simple", True, why="baseline: NCCL's Socket, Simple"),
    Config("socket-default", "Socket", None, True, plan="quick", why="baseline: NCCL's Socket, its own protocols"),
    Config("tcpxsock-simple", PLUGIN_NAME, "Simple", True, PAT_OFF, why="UNPACK path, whole-page fragments"),
    Config(
        "tcpxsock-simple-odd",
        PLUGIN_NAME,
        "Simple",
        True,
        TCPX_FIDELITY + PAT_OFF,
        why="UNPACK path, devmem-like odd fragments and plugin-written gaps",
    ),
    Config(
        "tcpxsock-simple-devbounce",
        PLUGIN_NAME,
        "Simple",
        True,
        TCPX_FIDELITY + PAT_OFF + (("TCPX_SOCK_BOUNCE_DEVICE", "1"),),
        "quick",
        why="as above with bounce pages in GPU memory (TCPX's RX pool)",
    ),
    Config(
        "tcpxsock-default-host",
        PLUGIN_NAME,
        None,
        False,
        plan="quick",
        why="every protocol, GPUDirect off: host receives in TCPX mode (cnt 0, held until consumed)",
    ),
    # Four hosts: NCCL's tree gives a node two network children, and all_to_all runs send/recv
    # with three peers in one kernel block, so one block unpacks from several receive
    # connections at once (with two ranks never more than one). NCCL keeps one bounce_buf per
    # block for all of them
    # (ncclShmem.devicePlugin.unpack.bounce_buf, set by every ncclNetDeviceUnpackSetup), as TCPX
    # has one receive pool per GPU.
    Config("socket-4ranks", "Socket", "Simple", True, plan="multi", ranks=4, why="baseline, 4 hosts"),
    Config(
        "tcpxsock-4ranks",
        PLUGIN_NAME,
        "Simple",
        True,
        # tcpxsock's bounce pool is per GPU and process (shared by all its receive connections,
        # as TCPX's RX pool), so its default size serves the few dozen connections of a rank.
        TCPX_FIDELITY + PAT_OFF,
        "multi",
        why="4 hosts: several UNPACK receive connections in one kernel block (tree, all_to_all)",
        ranks=4,
    ),
    Config(
        "tcpxsock-simple-ring",
        PLUGIN_NAME,
        "Simple",
        True,
        (("NCCL_ALGO", "Ring"),),
        "quick",
        why="PAT left to NCCL, every collective on NCCL's ring (Google's A3 setting)",
    ),
)

# NCCL's defaults with an UNPACK device and one rank per node: PAT is chosen (see PAT_OFF) and
# the first PAT collective leaves wrong data. Expected to fail that way; if it passes, NCCL no
# longer picks PAT here and PAT_OFF can go.
PAT_PROBE = Config(
    "tcpxsock-simple-pat",
    PLUGIN_NAME,
    "Simple",
    True,
    plan="quick",
    why="NCCL's defaults: PAT chosen for an UNPACK device (it cannot unpack)",
)


def pat_verdict(out):
    """For PAT_PROBE: 'passed', 'pat' (the expected outcome: NCCL's log shows PAT chosen, the
    ranks ended by themselves, and nothing is wrong but data and exit codes), or 'failed'."""
    if out.ok:
        return "passed"
    data = [p for p in out.problems if " wrong: " in p or "exit code" in p]
    pat = "PAT" in out.facts.get("algorithms in TUNING lines", ())
    if pat and not out.killed and data and len(data) == len(out.problems):
        return "pat"
    return "failed"


# NCCL's LL and LL128 kernels (src/device/prims_ll.h, prims_ll128.h) read their flags straight
# from the receive buffer and never call the unpack (only prims_simple.h does), while with
# GPUDirect that buffer is registered as CUDA memory (src/transport/net.cc, recvProxyConnect),
# which TCPX, and tcpxsock in TCPX mode, receive into bounce pages. So NCCL's own protocol choice
# (LL for small messages) cannot complete over GPUDirect; Google runs TCPX with
# NCCL_PROTO=Simple. This run says whether that still holds.
PROBE = Config(
    "tcpxsock-default-gdr",
    PLUGIN_NAME,
    None,
    True,
    plan="probe",
    why="NCCL's own protocols over GPUDirect (LL cannot be unpacked)",
)
PROBE_TIMEOUT_S = 45

BENCH = (
    Config("socket-bench", "Socket", "Simple", True, plan="bench", why="bench: NCCL's Socket, Simple"),
    Config("tcpxsock-bench", PLUGIN_NAME, "Simple", True, plan="bench", why="bench: tcpxsock, Simple, GPUDirect"),
)


def unavailable_reason():
    """None when torch with NCCL and a CUDA device are there, else why not. Asked of a child
    process, so the caller never creates a CUDA context."""
    code = (
        "import json, torch, torch.distributed as d; "
        "print(json.dumps([torch.cuda.is_available(), torch.cuda.device_count(), "
        "d.is_available() and d.is_nccl_available()]))"
    )
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return "importing torch took more than 300 s"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return f"{sys.executable} cannot import torch ({last})"
    cuda, ndev, nccl = json.loads(p.stdout.strip().splitlines()[-1])
    if not cuda or ndev == 0:
        return "torch sees no CUDA device"
    if not nccl:
        return "torch.distributed has no NCCL backend"
    return None


def parse_settings(items):
    """`--set NAME=VALUE` items as knobs: only TCPX_SOCK_* and NCCL_* names (ValueError
    otherwise, or without `=`)."""
    out = []
    for item in items or ():
        name, eq, value = item.partition("=")
        if not eq or not name.startswith(("TCPX_SOCK_", "NCCL_")):
            raise ValueError(f"--set {item!r}: expected TCPX_SOCK_NAME=VALUE or NCCL_NAME=VALUE")
        out.append((name, value))
    return tuple(out)


def with_settings(cfg, settings):
    """A tcpxsock configuration with `settings` applied after its own knobs (they win); NCCL's
    Socket baselines are left as they are."""
    if not settings or cfg.transport != PLUGIN_NAME:
        return cfg
    return dataclasses.replace(cfg, knobs=cfg.knobs + tuple(settings))


def config_env(cfg, rank, plugin, nccl_log, base=None):
    """The environment of one rank. Inherited NCCL_* and TCPX_SOCK_* are dropped so that every
    run is the configuration it names. NCCL logs into `nccl_log`, flushed line by line,
    so a rank killed at the time bound keeps every line (its stdout to a file is buffered)."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith(("NCCL_", "TCPX_SOCK_"))}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            # Two hosts to NCCL: its host hash is this string.
            "NCCL_HOSTID": f"tcpx-nccl-test-host{rank}",
            "NCCL_P2P_DISABLE": "1",
            "NCCL_SHM_DISABLE": "1",
            "NCCL_NVLS_ENABLE": "0",
            "NCCL_SOCKET_IFNAME": "lo",
            "NCCL_DEBUG": "INFO",
            # TUNING: the algorithm and protocol NCCL picked for each collective.
            "NCCL_DEBUG_SUBSYS": "INIT,NET,TUNING",
            "NCCL_DEBUG_FILE": str(nccl_log),
            "NCCL_NET": cfg.transport,
            # lo has no PCI path, so NCCL's distance rules would never allow GPUDirect.
            "NCCL_NET_GDR_LEVEL": "SYS" if cfg.gdr else "LOC",
            "NCCL_NET_GDR_READ": "1" if cfg.gdr else "0",
        }
    )
    if cfg.proto:
        env["NCCL_PROTO"] = cfg.proto
    if cfg.transport == PLUGIN_NAME:
        env["NCCL_NET_PLUGIN"] = str(pathlib.Path(plugin).resolve())
        env["TCPX_SOCK_IFNAME"] = "lo"
        env.update(dict(cfg.knobs))
    return env


@dataclasses.dataclass
class Outcome:
    config: Config
    logdir: pathlib.Path
    seconds: float = 0.0
    returncodes: list = dataclasses.field(default_factory=list)
    killed: bool = False  # the time bound ran out and the ranks were killed
    stuck_in: list = dataclasses.field(default_factory=list)  # per rank: last op not finished
    results: list = dataclasses.field(default_factory=list)  # per rank: worker JSON or None
    problems: list = dataclasses.field(default_factory=list)  # everything that is wrong
    facts: dict = dataclasses.field(default_factory=dict)  # what the NCCL log showed

    @property
    def ok(self):
        return not self.problems

    def summary(self, tail=20):
        lines = [
            f"{self.config.name}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f} s "
            f"(exit codes {self.returncodes}{', killed at the time bound' if self.killed else ''})"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        for k, v in self.facts.items():
            lines.append(f"  {k}: {v}")
        if not self.ok:
            for r in range(len(self.returncodes)):
                for log in (self.logdir / f"rank{r}.log", self.logdir / f"rank{r}.nccl.log"):
                    text = log.read_text(errors="replace").splitlines() if log.exists() else []
                    lines.append(f"  --- last lines of {log}")
                    lines += ["  | " + s for s in text[-tail:]]
        return "\n".join(lines)


def progress(text):
    """The operation a rank began and did not finish (None if it finished them all)."""
    begun = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == MARK:
            if parts[1] == "BEGIN":
                begun[parts[2]] = " ".join(parts[3:])
            elif parts[1] in ("OK", "MISMATCH"):
                begun.pop(parts[2], None)
    if not begun:
        return None
    n, what = list(begun.items())[-1]
    return f"#{n} {what}".strip()


RECV_CHANNEL = re.compile(r"\[receive\] via NET/([^/\s]+)/(\d+)(\S*)")


def read_log(text, cfg):
    """What NCCL's log says about the transport: facts, and the problems they show."""
    facts, problems = {}, []
    version = re.search(r"NCCL version (\S+)", text)
    facts["nccl"] = version.group(1) if version else "?"
    networks = sorted(set(re.findall(r"Using network (\S+)", text)))
    facts["using network"] = networks
    channels = RECV_CHANNEL.findall(text)
    facts["receive channels"] = len(channels)
    gdr = sum(1 for _, _, rest in channels if "/GDRDMA" in rest)
    facts["receive channels with GDRDMA"] = gdr
    loaded = re.search(r"NET/Plugin: Loaded net plugin (\S+) \(v(\d+)\)", text)
    facts["loaded plugin"] = f"{loaded.group(1)} v{loaded.group(2)}" if loaded else None
    unpack = "Using NCCL_NET_DEVICE_UNPACK net plugin version 7" in text
    facts["UNPACK device"] = unpack
    # TUNING lines name the algorithm of each collective ("... Algo RING proto SIMPLE ...";
    # the wording varies between versions, so this only collects what matches).
    facts["algorithms in TUNING lines"] = sorted(set(re.findall(r"\bAlgo\s+(\w+)", text)))
    warns = [line.strip() for line in text.splitlines() if "NCCL WARN" in line]
    if warns:
        facts["NCCL WARN lines"] = len(warns)
        facts["first NCCL WARN"] = warns[0]
    # tcpxsock's own warnings (every one names it) mean it refused or failed something; NCCL's
    # other warnings are shown, and a real failure also shows as an error or wrong data.
    ours = [w for w in warns if PLUGIN_NAME in w]
    if ours:
        problems.append(f"tcpxsock warned ({len(ours)} lines): {ours[0]}")
    if networks != [cfg.transport]:
        problems.append(f"NCCL used network {networks or 'none'}, not {cfg.transport}")
    if not channels:
        problems.append("no '[receive] via NET/...' channel line in NCCL's log")
    if any(name != cfg.transport for name, _, _ in channels):
        problems.append(f"a receive channel is not via NET/{cfg.transport}")
    if cfg.transport == PLUGIN_NAME:
        if not loaded or loaded.group(1) != PLUGIN_NAME:
            problems.append(f"no 'NET/Plugin: Loaded net plugin {PLUGIN_NAME} (v7)' line")
        if not unpack:
            problems.append("NCCL did not report the UNPACK device (no 'Using NCCL_NET_DEVICE_UNPACK')")
        if cfg.gdr and gdr != len(channels):
            problems.append(f"{len(channels) - gdr} of {len(channels)} receive channels lack GDRDMA")
        if not cfg.gdr and gdr:
            problems.append(f"{gdr} receive channels use GDRDMA with GPUDirect off")
    elif loaded and loaded.group(1) == PLUGIN_NAME:
        problems.append("the baseline loaded tcpxsock")
    return facts, problems


STACK_DUMP_S = 60


def worker_timeout_s(timeout_s, ranks):
    """The ranks' own collective timeout (PyTorch's watchdog, which aborts a rank): past this
    run's bound and the stack dumps taken before its kill, so a hang is always ended by the
    runner, named and with its stacks, never by a watchdog racing it."""
    return timeout_s + ranks * STACK_DUMP_S + GRACE_S


def dump_stacks(procs, d):
    """Before a hung run is killed: every live rank's threads' stacks into rank<r>.stacks.txt,
    by cuda-gdb (the GPU image has it, plain gdb not) or gdb, whichever is on PATH; nothing
    where neither is, or with TCPX_NCCL_STACKS=0. Each attach is bounded."""
    if os.environ.get("TCPX_NCCL_STACKS", "1") == "0":
        return
    dbg = shutil.which("cuda-gdb") or shutil.which("gdb")
    if dbg is None:
        return
    for rank, p in enumerate(procs):
        if p.poll() is not None:
            continue
        with open(d / f"rank{rank}.stacks.txt", "w") as f:
            try:
                subprocess.run(
                    [dbg, "-p", str(p.pid), "-batch", "-ex", "thread apply all bt"],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=STACK_DUMP_S,
                )
            except (subprocess.TimeoutExpired, OSError) as e:
                f.write(f"\n{dbg} did not finish: {e}\n")


def run_config(cfg, plugin, logdir, timeout_s=120, gpus=(0,), mode="check", bench_iters=(10, 200)):
    """Runs one configuration to the end or to the time bound; never raises for what the ranks
    do. Rank r runs on GPU gpus[r % len(gpus)]."""
    d = pathlib.Path(logdir) / cfg.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    out = Outcome(cfg, d)
    if cfg.transport == PLUGIN_NAME and not pathlib.Path(plugin).is_file():
        out.problems.append(f"{plugin} does not exist (scripts/collect-plugins.sh builds it)")
        return out
    store = d / "store"
    procs, logs = [], []
    t0 = time.monotonic()
    for rank in range(cfg.ranks):
        gpu = gpus[rank % len(gpus)]
        cmd = [
            sys.executable,
            str(WORKER),
            "--rank", str(rank),
            "--world", str(cfg.ranks),
            "--gpu", str(gpu),
            "--store", str(store),
            "--mode", mode,
            "--result", str(d / f"rank{rank}.json"),
            "--timeout-s", str(worker_timeout_s(timeout_s, cfg.ranks)),
            "--bw-iters", str(bench_iters[0]),
            "--lat-iters", str(bench_iters[1]),
        ]
        if mode == "check":
            cmd += ["--plan", cfg.plan]
        log = open(d / f"rank{rank}.log", "w")
        logs.append(log)
        # Its own session: a kill reaches the rank and anything it started, and nothing else.
        procs.append(
            subprocess.Popen(
                cmd,
                env=config_env(cfg, rank, plugin, d / f"rank{rank}.nccl.log"),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
                start_new_session=True,
            )
        )
    deadline = t0 + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        if any(c not in (None, 0) for c in codes):
            # min(): the first failure starts the grace period, later polls do not extend it.
            deadline = min(deadline, now + GRACE_S)
        if now >= deadline:
            out.killed = True
            dump_stacks(procs, d)
            for p in procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for p in procs:
                p.wait()
            break
        time.sleep(0.2)
    for log in logs:
        log.close()
    out.seconds = time.monotonic() - t0
    out.returncodes = [p.returncode for p in procs]

    text_all = ""
    for rank in range(len(procs)):
        text = (d / f"rank{rank}.log").read_text(errors="replace")
        nccl = d / f"rank{rank}.nccl.log"
        text_all += text + (nccl.read_text(errors="replace") if nccl.exists() else "")
        out.stuck_in.append(progress(text))
        res = d / f"rank{rank}.json"
        out.results.append(json.loads(res.read_text()) if res.exists() else None)
    for rank, (code, stuck) in enumerate(zip(out.returncodes, out.stuck_in)):
        if code != 0:
            where = f" in {stuck}" if stuck else ""
            how = "killed at the time bound" if out.killed and code == -signal.SIGKILL else f"exit code {code}"
            out.problems.append(f"rank {rank}: {how}{where}")
    for rank, res in enumerate(out.results):
        if res is None:
            continue
        for e in res.get("ops", []):
            if not e["ok"]:
                out.problems.append(
                    f"rank {rank}: {e['op']} {e['dtype']} count={e['count']} wrong: {json.dumps(e['mismatch'])}"
                )
        for name, e in res.get("bench", {}).items():
            if not e["ok"]:
                out.problems.append(f"rank {rank}: bench {name} wrong: {json.dumps(e['mismatch'])}")
    facts, problems = read_log(text_all, cfg)
    out.facts.update(facts)
    # A run that never got to a collective has no channel lines; its real failure is above.
    if out.problems and not facts["receive channels"]:
        problems = [p for p in problems if "channel" not in p]
    out.problems += problems
    if out.results and out.results[0]:
        out.facts["torch"] = out.results[0]["torch"]
        out.facts["gpu"] = out.results[0]["gpu_name"]
    (d / "outcome.json").write_text(
        json.dumps(
            {
                "config": dataclasses.asdict(cfg),
                "ok": out.ok,
                "seconds": out.seconds,
                "returncodes": out.returncodes,
                "killed": out.killed,
                "stuck_in": out.stuck_in,
                "problems": out.problems,
                "facts": out.facts,
            },
            indent=1,
        )
    )
    return out


def probe_verdict(out):
    """For PROBE: 'passed', 'hung' (the expected LL hang: killed at the bound, every rank still
    inside a collective, nothing else wrong), or 'failed'."""
    if out.ok:
        return "passed"
    others = [p for p in out.problems if "killed at the time bound" not in p]
    inside = all(s and " op=" in s for s in out.stuck_in)
    if out.killed and inside and not others:
        return "hung"
    return "failed"


def bench_table(res):
    """The side-by-side lines and the tcpxsock/Socket ratios of bench results
    {transport: worker bench}."""
    sock, tcpx = res.get("Socket"), res.get(PLUGIN_NAME)
    rows = [
        ("all_reduce 64 MiB bus bandwidth (GB/s)", "allreduce_64MiB", "busbw_GBps"),
        ("all_reduce 256 MiB bus bandwidth (GB/s)", "allreduce_256MiB", "busbw_GBps"),
        ("all_reduce 4 KiB latency, median (us)", "allreduce_4KiB", "median_us"),
    ]
    lines = [f"{'':44}{'Socket':>12}{'tcpxsock':>12}{'tcpxsock/Socket':>18}"]
    ratio = {}
    for label, case, field in rows:
        a = sock[case][field] if sock else None
        b = tcpx[case][field] if tcpx else None
        r = b / a if a and b else None
        ratio[case] = r
        fmt = (lambda v: f"{v:12.3f}") if field == "busbw_GBps" else (lambda v: f"{v:12.1f}")
        lines.append(
            f"{label:44}{fmt(a) if a is not None else '           -'}"
            f"{fmt(b) if b is not None else '           -'}{(f'{r:17.2f}x') if r else '                -'}"
        )
    return lines, ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", nargs="*", metavar="CONFIG", help="configurations to check (default: all)")
    p.add_argument(
        "--probe", action="store_true", help=f"also run {PROBE.name} ({PROBE.why}) and {PAT_PROBE.name} ({PAT_PROBE.why})"
    )
    p.add_argument("--bench", action="store_true", help="all_reduce bandwidth and latency, tcpxsock vs Socket")
    p.add_argument("--json", help="bench results as JSON into this file")
    p.add_argument("--plugin", default=str(default_plugin()), help="libnccl-net-tcpxsock.so")
    p.add_argument("--logdir", help="where each run's logs go (default: a new temporary folder)")
    p.add_argument("--timeout-s", type=float, default=120, help="bound of each configuration's run")
    p.add_argument("--gpus", default="0", help="GPU of rank r: the (r mod n)-th of this list (default 0: one GPU)")
    p.add_argument("--bw-iters", type=int, default=10, help="bench iterations at 64 MiB (256 MiB: half)")
    p.add_argument("--lat-iters", type=int, default=200, help="bench iterations at 4 KiB")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a TCPX_SOCK_* or NCCL_* setting for every tcpxsock run, after the configuration's "
        "own (repeatable; outcome.json records it): e.g. --set NCCL_NET_GDR_READ=0",
    )
    args = p.parse_args(argv)
    try:
        settings = parse_settings(args.set)
    except ValueError as e:
        p.error(str(e))

    if args.list:
        for c in CHECKS + (PROBE, PAT_PROBE) + BENCH:
            print(f"{c.name:28} {c.why}")
        return 0
    why = unavailable_reason()
    if why is not None:
        print(f"SKIP: {why}")
        return 1 if os.environ.get("REQUIRE_GPU") == "1" else 0
    gpus = tuple(int(g) for g in args.gpus.split(","))
    logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix="tcpx-nccl-"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logdir}; plugin: {args.plugin}", flush=True)
    failed = []

    run_checks = args.check is not None or not args.bench
    if run_checks:
        names = args.check or [c.name for c in CHECKS]
        by_name = {c.name: c for c in CHECKS + (PROBE, PAT_PROBE)}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            print(f"unknown configuration(s) {unknown}; --list shows them", file=sys.stderr)
            return 2
        for n in names:
            out = run_config(with_settings(by_name[n], settings), args.plugin, logdir, args.timeout_s, gpus)
            print(out.summary(), flush=True)
            if not out.ok:
                failed.append(n)
        if args.probe:
            out = run_config(with_settings(PROBE, settings), args.plugin, logdir, PROBE_TIMEOUT_S, gpus)
            verdict = probe_verdict(out)
            print(out.summary() if verdict == "failed" else f"{PROBE.name}: {verdict} ({PROBE.why})", flush=True)
            if verdict == "failed":
                failed.append(PROBE.name)
            out = run_config(with_settings(PAT_PROBE, settings), args.plugin, logdir, args.timeout_s, gpus)
            verdict = pat_verdict(out)
            print(out.summary() if verdict == "failed" else f"{PAT_PROBE.name}: {verdict} ({PAT_PROBE.why})", flush=True)
            if verdict == "failed":
                failed.append(PAT_PROBE.name)

    if args.bench:
        res, facts = {}, {}
        for cfg in BENCH:
            out = run_config(
                with_settings(cfg, settings),
                args.plugin,
                logdir,
                args.timeout_s,
                gpus,
                "bench",
                (args.bw_iters, args.lat_iters),
            )
            print(out.summary(), flush=True)
            facts[cfg.transport] = out.facts
            if out.ok and out.results[0]:
                res[cfg.transport] = out.results[0]["bench"]
            else:
                failed.append(cfg.name)
        lines, ratio = bench_table(res)
        print("\n".join(lines), flush=True)
        if args.json:
            doc = {
                "what": "torch.distributed all_reduce, float32, 2 ranks, NCCL_PROTO=Simple, median of "
                "per-iteration times (each synchronised); busbw = algbw * 2(n-1)/n",
                "gpus": list(gpus),
                "facts": facts,
                "results": res,
                "ratio_tcpxsock_over_socket": ratio,
                "logs": str(logdir),
            }
            pathlib.Path(args.json).write_text(json.dumps(doc, indent=1))
            print(f"JSON: {args.json}")

    if failed:
        print(f"failed: {' '.join(failed)}")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
