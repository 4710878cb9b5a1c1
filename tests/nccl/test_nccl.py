"""Real NCCL as a client of tcpxsock: PyTorch's NCCL moves all_reduce, all_gather, broadcast and
send/recv data (1 element ... 256 MiB, odd sizes, float32 and uint8) through tcpxsock, and
NCCL's own unpack kernel copies what tcpxsock's TCPX mode leaves in bounce pages. Every result
is compared exactly; NCCL's own Socket transport runs the same plan first as the baseline.
run_nccl.py holds the configurations and says what each one checks (`run_nccl.py --list`).

Skips without torch or a CUDA device; REQUIRE_GPU=1 turns the skip into a failure.
Environment: TCPX_PLUGIN_DIR (default <repo>/target/plugins) holds libnccl-net-tcpxsock.so;
TCPX_NCCL_LOGDIR keeps every run's logs (default: pytest's temporary folder);
TCPX_NCCL_GPUS = GPUs, rank r on the (r mod n)-th (default 0); TCPX_NCCL_TIMEOUT_S bounds
each run (120).
"""

import os
import pathlib

import pytest

import run_nccl as rn

TIMEOUT_S = float(os.environ.get("TCPX_NCCL_TIMEOUT_S", "120"))
GPUS = tuple(int(g) for g in os.environ.get("TCPX_NCCL_GPUS", "0").split(","))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(plugin path, log folder); skips (fails under REQUIRE_GPU=1) when NCCL cannot run here."""
    why = rn.unavailable_reason()
    if why is not None:
        if os.environ.get("REQUIRE_GPU") == "1":
            pytest.fail(f"REQUIRE_GPU=1 but {why}")
        pytest.skip(why)
    plugin = rn.default_plugin()
    assert plugin.is_file(), f"{plugin} is missing: build it (scripts/collect-plugins.sh)"
    logdir = os.environ.get("TCPX_NCCL_LOGDIR")
    logdir = pathlib.Path(logdir) if logdir else tmp_path_factory.mktemp("nccl")
    logdir.mkdir(parents=True, exist_ok=True)
    return plugin, logdir


@pytest.mark.parametrize("cfg", rn.CHECKS, ids=lambda c: c.name)
def test_collectives_exact(setup, cfg):
    plugin, logdir = setup
    out = rn.run_config(cfg, plugin, logdir, TIMEOUT_S, GPUS)
    print(out.summary())
    assert out.ok, out.summary()
    # The plan really ran on both ranks, every operation checked.
    for rank, res in enumerate(out.results):
        assert res is not None and res["ops"], f"rank {rank} wrote no results"
        assert all(e["ok"] for e in res["ops"])
    if cfg.transport == rn.PLUGIN_NAME:
        assert out.facts["loaded plugin"] == f"{rn.PLUGIN_NAME} v7"
        assert out.facts["UNPACK device"]
        if cfg.gdr:
            assert out.facts["receive channels with GDRDMA"] == out.facts["receive channels"] > 0


def test_default_protocols_over_gpudirect(setup):
    """NCCL's own protocol choice with GPUDirect receive buffers. NCCL's LL/LL128 kernels read
    the receive buffer itself and never unpack, so a receive that lands in bounce pages (as on
    TCPX) leaves them waiting: the expected outcome is that the first LL collective never
    completes, which is reported as an expected failure. If it passes, the limitation is gone
    and this becomes a plain check; any other failure (wrong data, an error) fails."""
    plugin, logdir = setup
    out = rn.run_config(rn.PROBE, plugin, logdir, rn.PROBE_TIMEOUT_S, GPUS)
    print(out.summary())
    verdict = rn.probe_verdict(out)
    assert verdict != "failed", out.summary()
    if verdict == "hung":
        pytest.xfail(
            f"NCCL's LL protocol over GPUDirect never completes, as with TCPX (stuck in "
            f"{out.stuck_in}); use NCCL_PROTO=Simple"
        )


def test_pat_with_an_unpack_device(setup):
    """NCCL's defaults with one rank per node: NCCL's check that keeps PAT away from UNPACK
    devices reads a field nothing sets since NCCL 2.24, so it picks PAT for AllGather, which
    cannot unpack (run_nccl.PAT_OFF says why). Expected: NCCL's log shows PAT chosen and the
    data goes wrong, nothing hangs and tcpxsock warns of nothing. If it passes, NCCL stopped
    choosing PAT for UNPACK devices and PAT_OFF can go."""
    plugin, logdir = setup
    out = rn.run_config(rn.PAT_PROBE, plugin, logdir, TIMEOUT_S, GPUS)
    print(out.summary())
    verdict = rn.pat_verdict(out)
    assert verdict != "failed", out.summary()
    if verdict == "pat":
        pytest.xfail("NCCL chose PAT for an UNPACK device (its comm->netDeviceType stays HOST); set NCCL_PAT_ENABLE=0")
