"""The runner itself, without torch or a GPU: a stand-in worker that prints what NCCL and
nccl_worker.py print shows that every run is bounded, that a hung or failed run names the
operation each rank was in, and that NCCL's log is read for the transport it must show."""

import json
import os
import shutil
import pathlib
import sys

import pytest

import run_nccl as rn

FAKE = r'''
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
for a in ("--rank", "--world", "--gpu", "--store", "--mode", "--result", "--timeout-s",
          "--bw-iters", "--lat-iters", "--plan"):
    p.add_argument(a)
a = p.parse_args()
rank, mode = int(a.rank), os.environ["FAKE_MODE"]
net = os.environ["NCCL_NET"]
# NCCL's own lines go to NCCL_DEBUG_FILE, flushed line by line, as NCCL writes them.
nccl = open(os.environ["NCCL_DEBUG_FILE"], "w", buffering=1)
def log(line):
    nccl.write(f"host:1:1 [0] NCCL {line}\n")
log("INFO NCCL version 2.28.9+cuda12.9")
if net == "tcpxsock":
    assert os.path.isabs(os.environ["NCCL_NET_PLUGIN"]) and os.environ["TCPX_SOCK_IFNAME"] == "lo"
    log("INFO NET/Plugin: Loaded net plugin tcpxsock (v7)")
    log("INFO Using NCCL_NET_DEVICE_UNPACK net plugin version 7")
else:
    assert "NCCL_NET_PLUGIN" not in os.environ and "TCPX_SOCK_ODD_FRAGMENTS" not in os.environ
log(f"INFO Using network {net}")
print(f"NCCL_HOSTID={os.environ['NCCL_HOSTID']}")
assert int(a.world) in (2, 4) and 0 <= rank < int(a.world)
print("NCCLTEST BEGIN init", flush=True)
print("NCCLTEST OK init", flush=True)
gdr = "/GDRDMA" if os.environ["NCCL_NET_GDR_LEVEL"] == "SYS" and mode != "nogdr" else ""
log(f"INFO Channel 00/0 : {1-rank}[0] -> {rank}[0] [receive] via NET/{net}/0{gdr}")
ops = []
for n in range(5):
    print(f"NCCLTEST BEGIN {n} op=all_reduce dtype=float32 count={7 * (n + 1)} bytes=4", flush=True)
    if mode == "hang" and n == 2:
        # As PyTorch's watchdog does: abort the rank once its collective timeout has passed.
        time.sleep(float(a.timeout_s))
        os.abort()
    if mode == "crash" and n == 3 and rank == 1:
        print("RuntimeError: CUDA error: an illegal memory access was encountered", flush=True)
        sys.exit(1)
    if mode == "crash" and n == 3:
        time.sleep(600)
    ok = not (mode == "wrong" and n == 1)
    ops.append({"n": n, "op": "all_reduce", "dtype": "float32", "count": 7, "bytes": 28,
                "seconds": 0.0, "ok": ok, **({} if ok else {"mismatch": {"first_bad": 5}})})
    print(f"NCCLTEST {'OK' if ok else 'MISMATCH'} {n}", flush=True)
if mode in ("warn", "otherwarn"):
    log("WARN Cuda failure 'operation not supported'")
if mode == "warn":
    log("WARN tcpxsock: more than 16 outstanding requests")
doc = {"rank": rank, "torch": "fake", "gpu_name": "none", "ops": ops, "ok": True}
with open(a.result, "w") as f:
    json.dump(doc, f)
print("NCCLTEST BEGIN destroy", flush=True)
print("NCCLTEST OK destroy", flush=True)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE)
    plugin = tmp_path / rn.PLUGIN_FILE
    plugin.write_bytes(b"")
    monkeypatch.setattr(rn, "WORKER", worker)
    monkeypatch.setattr(rn, "GRACE_S", 1)

    def run(mode, cfg, timeout_s=30):
        monkeypatch.setenv("FAKE_MODE", mode)
        # Inherited NCCL settings must not reach the ranks.
        monkeypatch.setenv("NCCL_NET_PLUGIN", "/elsewhere/libnccl-net.so")
        monkeypatch.setenv("TCPX_SOCK_ODD_FRAGMENTS", "1")
        return rn.run_config(cfg, plugin, tmp_path / "logs", timeout_s)

    return run


TCPX = rn.CHECKS[2]
SOCKET = rn.CHECKS[0]
HOST = next(c for c in rn.CHECKS if not c.gdr)


@pytest.mark.parametrize("cfg", [SOCKET, TCPX, HOST], ids=lambda c: c.name)
def test_a_clean_run_passes_and_reads_the_log(fake, cfg):
    out = fake("nogdr" if not cfg.gdr else "pass", cfg)
    assert out.ok, out.summary()
    assert out.returncodes == [0, 0] and not out.killed
    assert out.stuck_in == [None, None]
    assert out.facts["using network"] == [cfg.transport]
    assert out.facts["nccl"] == "2.28.9+cuda12.9"
    if cfg is TCPX:
        assert out.facts["loaded plugin"] == "tcpxsock v7"
        assert out.facts["receive channels with GDRDMA"] == out.facts["receive channels"] == 2
    saved = json.loads((out.logdir / "outcome.json").read_text())
    assert saved["ok"] and saved["config"]["name"] == cfg.name


def test_four_ranks_each_a_host(fake):
    cfg = next(c for c in rn.CHECKS if c.ranks == 4 and c.transport == rn.PLUGIN_NAME)
    out = fake("pass", cfg)
    assert out.ok, out.summary()
    assert out.returncodes == [0] * 4 and len(out.results) == 4
    hosts = {
        line.split("NCCL_HOSTID=")[1].strip()
        for r in range(4)
        for line in (out.logdir / f"rank{r}.log").read_text().splitlines()
        if line.startswith("NCCL_HOSTID=")
    }
    assert len(hosts) == 4


def test_a_hang_is_killed_at_the_bound_and_named(fake):
    out = fake("hang", TCPX, timeout_s=4)
    assert out.killed and not out.ok
    # Killed by the runner (SIGKILL), not aborted by the ranks' own watchdog while their
    # stacks were being taken.
    assert out.returncodes == [-9, -9], out.summary()
    assert out.seconds < 20 + (2 * rn.STACK_DUMP_S if shutil.which("gdb") or shutil.which("cuda-gdb") else 0)
    # Before the kill, each hung rank's stacks were taken where a debugger is installed.
    if os.environ.get("TCPX_NCCL_STACKS", "1") != "0" and (shutil.which("cuda-gdb") or shutil.which("gdb")):
        for r in range(2):
            stacks = (out.logdir / f"rank{r}.stacks.txt").read_text()
            assert "Thread" in stacks or "did not finish" in stacks, stacks[-2000:]
    assert out.stuck_in == ["#2 op=all_reduce dtype=float32 count=21 bytes=4"] * 2
    assert any("killed at the time bound in #2 op=all_reduce" in p for p in out.problems)
    # The same shape is what the LL probe expects.
    assert rn.probe_verdict(out) == "hung"


def test_a_failed_rank_ends_the_run_after_the_grace_period(fake):
    out = fake("crash", TCPX, timeout_s=60)
    assert out.returncodes[1] == 1 and out.killed
    assert out.seconds < 20, "the surviving rank waited for the full bound"
    assert "rank 1: exit code 1 in #3 op=all_reduce" in " ".join(out.problems)
    assert "illegal memory access" in out.summary()
    assert rn.probe_verdict(out) == "failed"


def test_a_run_stuck_outside_a_collective_is_no_probe_hang(tmp_path):
    out = rn.Outcome(rn.PROBE, tmp_path, returncodes=[-9, -9], killed=True)
    out.stuck_in = ["#destroy", "#0 op=all_reduce dtype=float32 count=1 bytes=4"]
    out.problems = [f"rank {r}: killed at the time bound in {s}" for r, s in enumerate(out.stuck_in)]
    assert rn.probe_verdict(out) == "failed"
    out.stuck_in[0] = out.stuck_in[1]
    assert rn.probe_verdict(out) == "hung"


def test_pat_verdict_needs_pat_in_the_log_and_only_wrong_data(tmp_path):
    wrong = 'rank 0: all_gather float32 count=1 wrong: {"bad_elements": 1}'
    out = rn.Outcome(rn.PAT_PROBE, tmp_path, returncodes=[1, 1])
    out.problems = [wrong, "rank 0: exit code 1"]
    out.facts = {"algorithms in TUNING lines": ["PAT", "RING"]}
    assert rn.pat_verdict(out) == "pat"
    out.facts = {"algorithms in TUNING lines": ["RING"]}
    assert rn.pat_verdict(out) == "failed", "wrong data without PAT chosen is a real failure"
    out.facts = {"algorithms in TUNING lines": ["PAT"]}
    out.problems = [wrong, "tcpxsock warned (1 lines): x"]
    assert rn.pat_verdict(out) == "failed", "a tcpxsock warning is a real failure"
    out.problems, out.killed = [wrong], True
    assert rn.pat_verdict(out) == "failed", "a hang is a real failure"
    assert rn.pat_verdict(rn.Outcome(rn.PAT_PROBE, tmp_path, returncodes=[0, 0])) == "passed"


def test_wrong_data_warnings_and_missing_gdr_fail(fake):
    wrong = fake("wrong", TCPX)
    assert any("wrong" in p and "first_bad" in p for p in wrong.problems)
    warned = fake("warn", TCPX)
    assert any("tcpxsock warned" in p for p in warned.problems)
    other = fake("otherwarn", TCPX)
    assert other.ok and other.facts["NCCL WARN lines"] == 2, "only tcpxsock's warnings fail a run"
    nogdr = fake("nogdr", TCPX)
    assert any("lack GDRDMA" in p for p in nogdr.problems)


def test_a_missing_plugin_fails_before_starting_anything(tmp_path):
    out = rn.run_config(TCPX, tmp_path / "none.so", tmp_path / "logs", 5)
    assert not out.ok and out.returncodes == []
    assert "does not exist" in out.problems[0]


def test_bench_table_ratio():
    sock = {
        "allreduce_64MiB": {"busbw_GBps": 2.0},
        "allreduce_256MiB": {"busbw_GBps": 2.0},
        "allreduce_4KiB": {"median_us": 100.0},
    }
    tcpx = {
        "allreduce_64MiB": {"busbw_GBps": 3.0},
        "allreduce_256MiB": {"busbw_GBps": 1.0},
        "allreduce_4KiB": {"median_us": 50.0},
    }
    lines, ratio = rn.bench_table({"Socket": sock, rn.PLUGIN_NAME: tcpx})
    assert ratio == {"allreduce_64MiB": 1.5, "allreduce_256MiB": 0.5, "allreduce_4KiB": 0.5}
    assert len(lines) == 4 and "1.50x" in lines[1]


def test_worker_plans_cover_the_sizes():
    sys.path.insert(0, str(pathlib.Path(rn.WORKER).parent))
    import nccl_worker as w

    full = w.plan_ops("full")
    ops = {op for op, _, _ in full}
    assert ops == {"all_reduce", "all_gather", "broadcast", "sendrecv", "alltoall", "burst"}
    nbytes = {(op, c * (4 if d == "float32" else 1)) for op, d, c in full}
    for op in ("all_reduce", "all_gather", "broadcast", "sendrecv"):
        for b in (4, 1, 7, 1023, 4097, (1 << 20) + 3, 64 << 20, 256 << 20):
            assert (op, b) in nbytes, (op, b)
    for b in (4, 1, 7, 1023, 4097, (1 << 20) + 3):
        assert ("alltoall", b) in nbytes, b
    quick = [c * (4 if d == "float32" else 1) for _, d, c in w.plan_ops("quick")]
    assert max(quick) == 64 << 20
    assert {op for op, _, _ in w.plan_ops("multi")} == ops


def test_settings_reach_tcpxsock_runs_only_and_win(tmp_path):
    settings = rn.parse_settings(["NCCL_NET_GDR_READ=0", "TCPX_SOCK_LINEAR_BYTES=0"])
    assert settings == (("NCCL_NET_GDR_READ", "0"), ("TCPX_SOCK_LINEAR_BYTES", "0"))
    odd = next(c for c in rn.CHECKS if c.name == "tcpxsock-simple-odd")
    env = rn.config_env(rn.with_settings(odd, settings), 0, tmp_path / "p.so", tmp_path / "l", base={})
    # After the configuration's own knobs (3000 linear bytes) and NCCL's GDR read default.
    assert env["TCPX_SOCK_LINEAR_BYTES"] == "0" and env["NCCL_NET_GDR_READ"] == "0"
    assert env["TCPX_SOCK_ODD_FRAGMENTS"] == "1"
    assert rn.with_settings(SOCKET, settings) is SOCKET
    env = rn.config_env(rn.with_settings(SOCKET, settings), 0, tmp_path / "p.so", tmp_path / "l", base={})
    assert env["NCCL_NET_GDR_READ"] == "1" and "TCPX_SOCK_LINEAR_BYTES" not in env
    for bad in ("FOO=1", "NCCL_PROTO", "PATH=/x"):
        with pytest.raises(ValueError, match="expected TCPX_SOCK_NAME=VALUE"):
            rn.parse_settings([bad])
    with pytest.raises(SystemExit) as e:
        rn.main(["--set", "FOO=1", "--list"])
    assert e.value.code == 2
