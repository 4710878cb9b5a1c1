"""vLLM-shaped KV-cache pulls (benches/nixl/kv_pull.py) with every byte checked: a prefill
process holds layers x {K, V} regions of paged blocks, the decode agent (this process, or the
benchmark's own process for UCX) pulls each request with ONE prepped READ of regions x blocks
descriptors (`prep_xfer_dlist` on both sides, then `make_prepped_xfer` with descriptor index
lists, as vLLM's NixlConnector does), several requests in flight, one notification each.

TCPX runs here, in process. UCX runs through the benchmark's command line (its plugin needs
LD_LIBRARY_PATH at process start, see docs/NIXL.md) and skips when the wheel has no UCX.
The 2,048-descriptor READ (nothing to join: the backend carries it in two parts) is checked
for both.

No timing is asserted; every wait is bounded.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

# test_load sets NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo (inherited by the prefill processes).
from test_load import PLUGIN_DIR
from cuda_mem import gpu_reason, require_gpu

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH = REPO / "benches" / "nixl" / "kv_pull.py"
sys.path.insert(0, str(BENCH.parent))
import kv_pull  # noqa: E402
from kv_pull import Decode, Layout, Prefill  # noqa: E402

BOUND_S = 120
PARAMS = {"timeout_ms": "10000"}
WARMUP = 2
# 16 layers x K/V = 32 regions: a 16-block request is 512 descriptors.
LAYOUTS = {
    # 1 block = 32 x 4 KiB = 128 KiB: through the data session.
    "4KiB-blocks": Layout(16, 64, 4096),
    # 1 block = 32 x 256 B = 8 KiB: small enough to be answered inline.
    "256B-blocks": Layout(16, 64, 256),
}
# 32 layers x K/V = 64 regions: 32 blocks = 2,048 descriptors.
WIDE = Layout(32, 64, 4096)


def ucx_reason():
    from nixl_peer import ucx_reason as wheel_ucx_reason

    why = wheel_ucx_reason()
    if why is not None:
        return why
    # The UCX side does not depend on tcpxsock's mode: the suite's second run (TCPX mode)
    # leaves it out.
    if os.environ.get("TCPX_SOCK_UNPACK", "").strip() not in ("", "0"):
        return "UCX runs once, outside TCPX mode"
    return None


def run_bench(tmp_path, *argv):
    """The benchmark's command line; returns (exit status, JSON document, stderr).

    stdin is not a terminal here: the case where the wheel's UCX libraries crashed in their
    exit handlers (libnl-route's destructor, SIGSEGV) before the benchmark left with
    os._exit. A crash now fails the test."""
    out = tmp_path / "kv.json"
    env = {k: v for k, v in os.environ.items() if k != "NIXL_BENCH_PLUGIN_DIR"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tcpx-plugin", str(PLUGIN_DIR / "libplugin_TCPX.so"),
         "--json", str(out), "--timeout-ms", "10000", *argv],
        env=env, capture_output=True, text=True, timeout=BOUND_S * 2,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(out.read_text()) if out.is_file() else None
    return proc.returncode, doc, proc.stderr


def ucx_said(err):
    """The last error NIXL's UCX backend logged (its reason: NIXL's exception only says
    NIXL_ERR_BACKEND), with the known cause of "VRAM memory is detected as host"."""
    lines = [ln.strip() for ln in err.splitlines() if "ucx" in ln.lower() and ln[:1] == "E"]
    if not lines:
        return ""
    said = f"; UCX: {lines[-1]}"
    if "detected as host" in said:
        # Seen on a CUDA 13 machine: UCX's CUDA module (libucm_cuda) in the nixl-cu12 wheel
        # needs libcudart.so.12; without it UCX has no CUDA support.
        said += (" (the wheel's UCX CUDA module needs libcudart.so.12: a CUDA 12 runtime on "
                 "LD_LIBRARY_PATH gives UCX device memory)")
    return said


def ucx_declined(doc):
    """UCX's own refusal of a point, or None: refused at registration, preparation or
    make_prepped_xfer, or the transfer refused when posted. A transfer UCX accepted and then
    failed, or wrong data, is not a refusal."""
    for r in doc["results"]:
        if r["status"] == "refused" or (
            r["status"] == "failed" and r.get("message", "").startswith("transfer:")
        ):
            return f"{r['blocks']} blocks x{r['inflight']}: {r['status']}: {r['message']}"
    return None


def layout_args(layout):
    return ["--layers", str(layout.layers), "--num-blocks", str(layout.num_blocks),
            "--block-bytes", str(layout.block_bytes)]


def check_pull(decode, prefill, blocks, inflight, requests, pick="runs"):
    """Pulls with every block of every request checked, then checks each request's
    notification reached the prefill exactly once."""
    before = len(decode.sent)
    r = decode.run(blocks, inflight, requests, warmup=WARMUP, verify="all", pick=pick)
    assert r["status"] == "ok", f"{r['status']}: {r.get('message')}"
    regions = decode.layout.regions
    assert r["verified_region_blocks"] == (requests + WARMUP) * blocks * regions
    sent = decode.sent[before:]
    assert len(sent) == requests + WARMUP
    # Collected until every one arrived (bounded); a request abandoned by an earlier failed
    # run on the same pair may still deliver its own, which is ignored.
    seen, deadline = [], time.monotonic() + BOUND_S
    while not set(sent) <= set(seen) and time.monotonic() < deadline:
        for sender, msgs in prefill.notifs(len(sent), bound_s=1).items():
            assert sender == decode.name
            seen += msgs
    assert sorted(m for m in seen if m in set(sent)) == sorted(sent), "lost or repeated"
    return r


# A fresh pair per test: a connection a failed test broke cannot fail the next one.
@pytest.fixture(params=list(LAYOUTS), ids=list(LAYOUTS))
def tcpx(request):
    layout = LAYOUTS[request.param]
    prefill = Prefill("TCPX", PARAMS, layout, bound_s=BOUND_S)
    decode = None
    try:
        decode = Decode("TCPX", PARAMS, layout, bound_s=BOUND_S)
        decode.connect(prefill)
        yield decode, prefill
    finally:
        if decode is not None:
            decode.close()
        prefill.close()


# ----------------------------------------------------------------------- the workload


def test_pattern_tells_every_block_apart():
    """The check is only as good as the pattern: every (region, block) differs from every
    other, and from itself moved by one byte."""
    lay = LAYOUTS["256B-blocks"]
    blocks = np.concatenate(
        [kv_pull.expected_blocks(r, range(lay.num_blocks), lay.block_bytes)
         for r in range(lay.regions)]
    )
    assert len({row.tobytes() for row in blocks}) == lay.regions * lay.num_blocks
    assert len({row[: kv_pull.HEADER].tobytes() for row in blocks}) == len(blocks)
    body = blocks[:, kv_pull.HEADER :]
    assert not (body == kv_pull.POISON).any(), "the poison must never be a valid byte"
    assert not (body[:, 1:] == body[:, :-1]).all(axis=1).any()


def test_descriptor_ids_follow_vllm_order():
    lay = Layout(2, 10, 64)  # 4 regions
    ids = kv_pull.descriptor_ids(lay, [3, 4, 7])
    assert ids.dtype == np.int32
    assert ids.tolist() == [3, 4, 7, 13, 14, 17, 23, 24, 27, 33, 34, 37]


# ----------------------------------------------------------------------------- TCPX


@pytest.mark.parametrize(
    "blocks,inflight,requests", [(1, 8, 200), (16, 4, 48)], ids=["1x8", "16x4"]
)
def test_tcpx_pull_checks_every_byte(tcpx, blocks, inflight, requests):
    decode, prefill = tcpx
    r = check_pull(decode, prefill, blocks, inflight, requests)
    assert r["descriptors"] == decode.layout.regions * blocks
    assert r["inflight_used"] == inflight


def test_tcpx_requests_of_different_sizes_interleave(tcpx):
    """Back-to-back points on the same prepared lists and connection: a small request after
    big ones, then big again, all checked."""
    decode, prefill = tcpx
    for blocks, inflight in ((16, 2), (1, 4), (8, 8)):
        check_pull(decode, prefill, blocks, inflight, requests=8)


def test_tcpx_2048_descriptor_prepped_read():
    """One prepped READ of 64 regions x 32 blocks, none of them neighbours (nothing to merge):
    2,048 descriptors reach the backend, which carries them in two parts."""
    prefill = Prefill("TCPX", PARAMS, WIDE, bound_s=BOUND_S)
    decode = None
    try:
        decode = Decode("TCPX", PARAMS, WIDE, bound_s=BOUND_S)
        decode.connect(prefill)
        r = check_pull(decode, prefill, 32, 1, requests=2, pick="scattered")
        assert r["descriptors"] == 2048
    finally:
        if decode is not None:
            decode.close()
        prefill.close()


def test_a_wide_point_then_a_narrow_one_both_check_out(tmp_path):
    """Through the benchmark's command line: a 2,048-descriptor point, then a 1-block point
    on the same pair, every block checked; a point the backend refused would be reported with
    its reason and the next one would still run."""
    rc, doc, err = run_bench(
        tmp_path, "--backends", "TCPX", *layout_args(WIDE), "--blocks", "32,1",
        "--inflight", "1", "--requests", "3", "--pick", "scattered", "--verify",
    )
    assert rc == 0, err[-4000:]
    by = {r["blocks"]: r for r in doc["results"]}
    big, small = by[32], by[1]
    assert big["descriptors"] == 2048
    assert big["status"] == "ok", big
    assert big["verified_region_blocks"] == (3 + 2) * 32 * WIDE.regions
    assert small["status"] == "ok", small
    assert small["verified_region_blocks"] == (3 + 2) * WIDE.regions
    assert doc["notifications"]["TCPX"]["exact"]


# ------------------------------------------------------------------------------ UCX


@pytest.mark.skipif(ucx_reason() is not None, reason=str(ucx_reason()))
def test_ucx_pull_checks_every_byte(tmp_path):
    lay = LAYOUTS["4KiB-blocks"]
    rc, doc, err = run_bench(
        tmp_path, "--backends", "UCX", *layout_args(lay), "--blocks", "1,16",
        "--inflight", "4", "--requests", "12", "--verify",
    )
    assert rc == 0, err[-4000:]
    assert [(r["blocks"], r["status"]) for r in doc["results"]] == [(1, "ok"), (16, "ok")], (
        doc["results"]
    )
    for r in doc["results"]:
        assert r["verified_region_blocks"] == (12 + 2) * r["blocks"] * lay.regions
    n = doc["notifications"]["UCX"]
    assert n["exact"] and n["sent"] == 2 * (12 + 2), n


@pytest.mark.skipif(ucx_reason() is not None, reason=str(ucx_reason()))
def test_ucx_2048_descriptor_prepped_read(tmp_path):
    """What TCPX must match: UCX takes the 2,048-descriptor prepped READ."""
    rc, doc, err = run_bench(
        tmp_path, "--backends", "UCX", *layout_args(WIDE), "--blocks", "32",
        "--inflight", "1", "--requests", "2", "--pick", "scattered", "--verify",
    )
    assert rc == 0, err[-4000:]
    (r,) = doc["results"]
    assert r["status"] == "ok", r
    assert r["descriptors"] == 2048
    assert r["verified_region_blocks"] == (2 + 2) * 32 * WIDE.regions


# ----------------------------------------------------------------------------- VRAM


def test_tcpx_vram_pull_checks_every_byte():
    require_gpu(pytest)
    lay = LAYOUTS["4KiB-blocks"]
    prefill = Prefill("TCPX", PARAMS, lay, mem="VRAM", bound_s=BOUND_S)
    decode = None
    try:
        assert prefill.refused is None, prefill.refused
        decode = Decode("TCPX", PARAMS, lay, mem="VRAM", bound_s=BOUND_S)
        decode.connect(prefill)
        for blocks, inflight in ((1, 8), (16, 4)):
            check_pull(decode, prefill, blocks, inflight, requests=8)
    finally:
        if decode is not None:
            decode.close()
        prefill.close()


@pytest.mark.skipif(ucx_reason() is not None, reason=str(ucx_reason()))
def test_ucx_vram_pull_checks_every_byte(tmp_path):
    """The VRAM baseline: UCX with its CUDA transports (tcp alone cannot register or move
    device memory). Where UCX still refuses device memory on this machine, the test skips
    with UCX's message: the baseline's environment, not TCPX (whose VRAM pull above passes
    or fails on its own)."""
    require_gpu(pytest)
    lay = LAYOUTS["4KiB-blocks"]
    rc, doc, err = run_bench(
        tmp_path, "--backends", "UCX", "--mem", "VRAM", *layout_args(lay), "--blocks", "1,16",
        "--inflight", "4", "--requests", "8", "--verify",
    )
    assert doc is not None, err[-4000:]
    tls = doc["config"]["UCX_TLS"].split(",")
    assert "cuda_copy" in tls and "cuda_ipc" in tls, tls
    why = ucx_declined(doc)
    if why is not None:
        pytest.skip(f"UCX (UCX_TLS={','.join(tls)}) refused device memory, a baseline "
                    f"environment issue: {why}{ucx_said(err)}")
    assert rc == 0, err[-4000:]
    assert [(r["blocks"], r["status"]) for r in doc["results"]] == [(1, "ok"), (16, "ok")], (
        doc["results"]
    )
    for r in doc["results"]:
        assert r["verified_region_blocks"] == (8 + 2) * r["blocks"] * lay.regions
    n = doc["notifications"]["UCX"]
    assert n["exact"] and n["sent"] == 2 * (8 + 2), n


def test_ucx_tls_for_device_memory():
    """UCX's CUDA transports join whatever UCX_TLS the caller chose, once, for VRAM only."""
    assert kv_pull.ucx_tls("tcp", "VRAM") == "tcp,cuda_copy,cuda_ipc"
    assert kv_pull.ucx_tls("tcp,cuda_copy", "VRAM") == "tcp,cuda_copy,cuda_ipc"
    assert kv_pull.ucx_tls(None, "VRAM") == "tcp,cuda_copy,cuda_ipc"
    assert kv_pull.ucx_tls("tcp", "DRAM") == "tcp"
    assert kv_pull.ucx_tls("all", "VRAM") == "all"
    assert kv_pull.ucx_tls("^ib", "VRAM") == "^ib"


def test_vram_benchmark_skips_clearly_without_a_gpu(tmp_path):
    if gpu_reason() is None:
        pytest.skip("a GPU is present: the VRAM pulls above run instead")
    env = {k: v for k, v in os.environ.items() if k != "REQUIRE_GPU"}
    out = tmp_path / "kv.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--mem", "VRAM", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=BOUND_S,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SKIP: --mem VRAM needs a CUDA device" in proc.stderr
    assert json.loads(out.read_text())["skipped"].startswith("--mem VRAM needs a CUDA device")
    # REQUIRE_GPU=1 turns the skip into a failure.
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--mem", "VRAM"], env={**env, "REQUIRE_GPU": "1"},
        capture_output=True, text=True, timeout=BOUND_S,
    )
    assert proc.returncode == 1 and "SKIP:" in proc.stderr
