"""benches/nixl/nixl_bench.py as a command: its --json carries every point's latency
distribution (p50, p90, p99, p99.9), CPU time per transfer, the load average and every raw
sample; the peers beside UCX (`--peer tcp`, `tcp-poll`, `mooncake`) run the same workload with the
data checked; and `--peer mooncake` without Mooncake installed fails at once, saying what to
install. No timing is asserted.

Run with the venv from scripts/nixl-venv.sh after building the plugin (TCPX_PLUGIN_DIR
overrides <repo>/target/plugins):
    .venv/bin/python -m pytest -q tests/bench
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH = REPO / "benches" / "nixl" / "nixl_bench.py"
PLUGIN_DIR = pathlib.Path(os.environ.get("TCPX_PLUGIN_DIR", REPO / "target" / "plugins"))
BOUND_S = 300
PERCENTILES = {"p50_us": 500, "p90_us": 900, "p99_us": 990, "p999_us": 999}


def run_bench(tmp_path, *argv, env_extra=None):
    """The benchmark's command line; returns (exit status, JSON document or None, stderr)."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "NIXL_BENCH_PLUGIN_DIR"}
    env.setdefault("TCPX_SOCK_IFNAME", "lo")
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tcpx-plugin", str(PLUGIN_DIR / "libplugin_TCPX.so"),
         "--json", str(out), "--timeout-ms", "10000", *argv],
        env=env, capture_output=True, text=True, timeout=BOUND_S,
        # Not a terminal: where the wheel's UCX libraries crash in their exit handlers.
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(out.read_text()) if out.is_file() else None
    return proc.returncode, doc, proc.stderr


def nearest_rank(sorted_samples, permille):
    n = len(sorted_samples)
    return sorted_samples[max(1, -(-permille * n // 1000)) - 1]


def check_point(r, iters):
    """A point's percentiles are those of its samples (samples rounded to 0.01 µs)."""
    s = r["samples_us"]
    assert len(s) == r["iters"] == iters, r["iters"]
    assert all(v > 0 for v in s)
    ss = sorted(s)
    for key, permille in PERCENTILES.items():
        assert abs(r[key] - nearest_rank(ss, permille)) < 0.01, (key, r[key])
    assert r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
    assert r["gbps"] > 0
    assert r["cpu_us_initiator"] > 0 and r["cpu_us_target"] >= 0
    assert len(r["loadavg_before"]) == len(r["loadavg_after"]) == 3
    # Per-thread CPU and runqueue wait of both processes, by thread name.
    for who in ("I", "T"):
        threads = r["sched"][who]
        assert threads, (who, r["backend"])
        for v in threads.values():
            assert set(v) == {"cpu_us", "wait_us", "runs"} and v["cpu_us"] >= 0


def test_json_carries_percentiles_and_raw_samples(tmp_path):
    assert (PLUGIN_DIR / "libplugin_TCPX.so").is_file(), f"build the plugin into {PLUGIN_DIR}"
    iters = 40
    rc, doc, err = run_bench(
        tmp_path, "--backends", "TCPX", "--peer", "tcp", "--ops", "WRITE,READ",
        "--sizes", "4K,64K", "--batches", "1,2", "--iters", str(iters), "--warmup", "2",
    )
    assert rc == 0, err
    assert doc["config"]["backends"] == ["TCPX", "TCP"]
    assert (doc["config"]["poll"], doc["config"]["poll_spin_us"]) == ("yield", 20)
    points = doc["results"]
    assert len(points) == 2 * 2 * 2 * 2, [(r["backend"], r["op"]) for r in points]
    for r in points:
        check_point(r, iters)
    # Every TCPX transfer carried a notification and the target saw each one.
    (tcpx,) = doc["notifications"]["TCPX"]
    assert tcpx["notifs_received"] == tcpx["notifs_sent"] == 8 * (2 + iters)
    summary = {(s["backend"], s["op"], s["batch"], s["size"]): s for s in doc["summary"]}
    assert len(summary) == len(points)
    s = summary[("TCPX", "READ", 2, 65536)]
    assert s["rounds"] == 1 and s["gbps_spread"] == 0
    for key in PERCENTILES:
        assert s[key] > 0


def test_rounds_are_interleaved_and_summarised(tmp_path):
    rc, doc, err = run_bench(
        tmp_path, "--backends", "TCP", "--ops", "WRITE", "--sizes", "4K", "--batches", "1",
        "--iters", "20", "--rounds", "2",
    )
    assert rc == 0, err
    assert [r["round"] for r in doc["results"]] == [0, 1]
    (s,) = doc["summary"]
    assert s["rounds"] == 2 and s["gbps_spread"] >= 0
    assert err.count("== TCP (round") == 2, err


def test_a_run_through_ucx_leaves_with_its_status(tmp_path):
    """With NIXL's UCX backend loaded and stdin not a terminal, the wheel's UCX libraries
    crash in their exit handlers (SIGSEGV, status -11 here) after the run is done; the
    benchmark leaves before them, with the run's own status."""
    rc, doc, err = run_bench(
        tmp_path, "--backends", "UCX", "--ops", "WRITE", "--sizes", "4K", "--batches", "1",
        "--iters", "5", "--warmup", "1",
    )
    assert rc == 0, (rc, err[-2000:])
    (r,) = doc["results"]
    check_point(r, 5)


@pytest.mark.parametrize("poll", ["yield", "spin"])
def test_polled_tcp_peer_moves_checked_data(tmp_path, poll):
    """TCP-POLL: the ping-pong on non-blocking sockets, polled as `--poll` says; a 1 MiB
    WRITE and READ go through partial sends and receives, and the data is checked."""
    rc, doc, err = run_bench(
        tmp_path, "--peer", "tcp-poll", "--backends", "", "--ops", "WRITE,READ",
        "--sizes", "4K,1M", "--batches", "1", "--iters", "20", "--poll", poll,
    )
    assert rc == 0, err
    assert doc["config"]["backends"] == ["TCP-POLL"]
    assert [(r["op"], r["size"]) for r in doc["results"]] == [
        ("WRITE", 4096), ("WRITE", 1 << 20), ("READ", 4096), ("READ", 1 << 20)]
    for r in doc["results"]:
        check_point(r, 20)
        assert not r["notified"]


def mooncake_blocked(tmp_path):
    """A PYTHONPATH entry under which `mooncake.engine` cannot be imported, as when the
    package is absent."""
    shim = tmp_path / "no-mooncake" / "mooncake"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ImportError(\"No module named 'mooncake.engine'\")\n"
    )
    paths = [str(shim.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    return {"PYTHONPATH": ":".join(paths)}


def test_mooncake_peer_without_the_package_fails_clearly(tmp_path):
    rc, doc, err = run_bench(
        tmp_path, "--peer", "mooncake", "--sizes", "4K", "--batches", "1", "--iters", "5",
        env_extra=mooncake_blocked(tmp_path),
    )
    assert rc != 0
    assert "--peer mooncake" in err, err
    assert "mooncake-transfer-engine-non-cuda" in err, err
    assert "libibverbs1" in err, err
    assert "Traceback" not in err, err
    # It failed before measuring anything.
    assert "== TCPX" not in err and doc is None, err


def test_unknown_peer_is_refused(tmp_path):
    rc, doc, err = run_bench(tmp_path, "--peer", "nccl", "--sizes", "4K")
    assert rc != 0 and "--peer 'nccl'" in err and doc is None, err


def mooncake_reason():
    if importlib.util.find_spec("mooncake") is None:
        return f"Mooncake is not installed ({sys.executable} -m pip install --no-deps " \
               "mooncake-transfer-engine-non-cuda; apt-get install libibverbs1)"
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as e:
        return f"Mooncake does not import: {e}"
    return None


def test_mooncake_peer_moves_checked_data(tmp_path):
    why = mooncake_reason()
    if why is not None:
        pytest.skip(why)
    rc, doc, err = run_bench(
        tmp_path, "--backends", "MOONCAKE", "--ops", "WRITE,READ", "--sizes", "4K,64K",
        "--batches", "1,2", "--iters", "20", "--warmup", "1",
    )
    assert rc == 0, err
    assert len(doc["results"]) == 8
    for r in doc["results"]:
        check_point(r, 20)
        assert r["notified"] == (r["batch"] == 1)
    (n,) = doc["notifications"]["MOONCAKE"]
    assert n["notifs_received"] == n["notifs_sent"] == 2 * 2 * (1 + 20)


def test_trace_lines_up_both_processes_stages(tmp_path):
    """--trace: both processes record tcpxsock's stages; --trace-report places them in each
    transfer (a 64 KiB WRITE goes through the data session: the initiator's isend and the
    target's receive show up)."""
    prefix = tmp_path / "trace"
    rc, doc, err = run_bench(
        tmp_path, "--backends", "TCPX", "--ops", "WRITE", "--sizes", "64K", "--batches", "1",
        "--iters", "30", "--poll", "spin", "--trace", str(prefix),
    )
    assert rc == 0, err
    (r,) = doc["results"]
    assert len(r["starts_ns"]) == 30 and set(r["pids"]) == {"I", "T"}
    assert doc["config"]["poll"] == "spin" and doc["config"]["poll_spin_us"] is None
    for who in ("I", "T"):
        assert pathlib.Path(f"{prefix}.{r['pids'][who]}").is_file(), who
    rep = subprocess.run(
        [sys.executable, str(BENCH), "--trace-report", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=BOUND_S,
    )
    assert rep.returncode == 0, rep.stderr
    assert "TCPX WRITE 64K x1: 30 transfers" in rep.stdout, rep.stdout
    for stage in ("I:sock.isend", "I:sock.send.done", "T:sock.irecv", "T:sock.recv.done"):
        assert stage in rep.stdout, (stage, rep.stdout)
