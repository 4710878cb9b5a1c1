"""A NIXL agent in its own process, driven over a pipe: the far side of the two-process tests,
and (with `backend="UCX"`) either side of a comparison with NIXL's UCX backend.

Run as a script it is the *peer*: it creates one agent with NIXL's metadata listener and one
backend (TCPX, or UCX when started with the environment `ucx_env()` gives), then answers one
JSON command per stdin line with one JSON line on its original stdout (fd 1 is pointed at
stderr first, so nothing NIXL prints can corrupt the replies). It exits on `quit` or when stdin
closes (the test process died), so it never outlives the test. It leaves with `os._exit`:
the wheel's UCX libraries can crash in their exit handlers.

Imported, `Peer` starts and drives such a process: every reply is awaited with a bound (a
peer that stops answering fails the test; it never hangs it), and `close()` kills the process
if it does not quit by itself.

    python nixl_peer.py NAME '{"timeout_ms": "3000"}' [BACKEND]

The peer picks its metadata listener's port (nixl_wheel.listening_agent) and tells it in its
first reply and in the reply to `create`.

Params `null`: the agent is created with `nixl_agent_config(backends=[BACKEND])` and no
parameters, the way vLLM and SGLang create theirs (TCPX then reads only its environment).

Buffers are numpy arrays (`np.zeros`, so pages are only touched where written or read: a
3 GiB registration costs only what a test checks). Data is a position-dependent pattern
(`fill` / `check` name a seed and a range; a byte moved to the wrong offset or from the wrong
buffer is caught), computed in blocks so even 2 GiB ranges need no large temporaries.
"""

import base64
import functools
import gc
import hashlib
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref

HERE = pathlib.Path(__file__).resolve().parent
REPLY_BOUND_S = 120
# Pattern period: a block this long is computed once per seed, every other block of a range
# is it XOR a byte that depends on the block's index.
BLOCK = 16 << 20


def pattern(n, seed):
    import numpy as np

    return ((np.arange(n, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)


def ucx_reason():
    """None when the wheel has a UCX plugin, else why not (for SKIP messages)."""
    from nixl_wheel import ucx_reason

    return ucx_reason()


def ucx_env():
    """Environment for a peer that runs NIXL's UCX backend over TCP (UCX_TLS=tcp): the
    wheel's UCX plugin beside ours (nixl_wheel.ucx_env, docs/NIXL.md)."""
    from nixl_wheel import ucx_env

    return ucx_env()


# ---------------------------------------------------------------------------- client side


class PeerError(RuntimeError):
    """The peer answered a command with an error."""


class Peer:
    """A peer process running this file; `call` sends one command and waits (bounded) for its
    reply."""

    def __init__(self, name, params=None, env=None, backend="TCPX", no_params=False):
        self.name = name
        self.backend = backend
        cfg = None if no_params else (params or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "nixl_peer.py"), name, json.dumps(cfg), backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.replies = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.ready = self._reply(REPLY_BOUND_S)
            # NIXL's metadata listener: the peer picks its port (nixl_wheel.listening_agent).
            self.port = self.ready["port"]
        except BaseException:
            self.close()
            raise

    def _read(self):
        try:
            for line in self.proc.stdout:
                self.replies.put(line)
        except (OSError, ValueError):  # closed under us: the peer is gone either way
            pass
        self.replies.put(None)  # EOF: the peer exited

    def _reply(self, bound):
        try:
            line = self.replies.get(timeout=bound)
        except queue.Empty:
            raise AssertionError(f"peer {self.name} gave no answer within {bound}s") from None
        if line is None:
            raise AssertionError(f"peer {self.name} exited (rc {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise PeerError(reply["error"])
        return reply

    def call(self, cmd, bound=REPLY_BOUND_S, **args):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self._reply(bound)

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self):
        """Asks the peer to quit; kills it if it does not within a bound. Never raises."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        # The process is gone: its stdout ends, and the reader with it.
        self.reader.join(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def link(initiator, target, bound=REPLY_BOUND_S):
    """Metadata both ways through NIXL's listeners: the initiator fetches the target's and
    pushes its own; both wait until loaded."""
    initiator.call("fetch", peer=target.name, ip="127.0.0.1", port=target.port, bound=bound)
    initiator.call("send_md", ip="127.0.0.1", port=target.port)
    target.call("wait_md", peer=initiator.name, bound=bound)


# ------------------------------------------------------------------------------ peer side


@functools.lru_cache(maxsize=4)
def _block(seed):
    import numpy as np

    return ((np.arange(BLOCK, dtype=np.uint64) * 7 + seed * 13 + 1) % 251).astype(np.uint8)


def _pieces(off, n):
    """(block index, offset in the block, offset in the range, length) covering [off, off+n)."""
    at = off
    while at < off + n:
        b, o = divmod(at, BLOCK)
        k = min(BLOCK - o, off + n - at)
        yield b, o, at - off, k
        at += k


def _expected(seed, b, o, k):
    return _block(seed)[o : o + k] ^ ((b * 37 + seed) & 0xFF)


def fill_range(array, off, n, seed):
    """Writes the pattern of `seed` over array[off:off+n] (position-dependent: byte i holds a
    function of the absolute offset i)."""
    import numpy as np

    for b, o, r, k in _pieces(off, n):
        np.bitwise_xor(_block(seed)[o : o + k], np.uint8((b * 37 + seed) & 0xFF),
                       out=array[off + r : off + r + k])


def check_range(array, off, n, seed):
    """None if array[off:off+n] holds the pattern of `seed`, else the first differing
    offset."""
    import numpy as np

    for b, o, r, k in _pieces(off, n):
        got = array[off + r : off + r + k]
        want = _expected(seed, b, o, k)
        if not np.array_equal(got, want):
            return off + r + int(np.argmax(got != want))
    return None


def _serve(name, params, backend):
    import numpy as np
    from nixl_wheel import errors, listening_agent

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")

    state = {"agent": None, "bufs": {}, "regs": {}, "handles": {}, "prepped": []}

    def create():
        """A new agent; returns its metadata listener's port."""
        if params is None:
            # vLLM's way: no parameters, the backend configured by its environment alone.
            agent, port = listening_agent(name, [backend])
        else:
            # backends=[] then create_backend: the only way the Python API passes params.
            agent, port = listening_agent(name)
            agent.create_backend(backend, params)
        if backend not in agent.backends:
            raise RuntimeError(f"no {backend} backend was created")
        state["agent"] = agent
        state["bufs"] = {}
        state["regs"] = {}
        return port

    def destroy():
        """Deregisters everything and drops the agent; checks that it really went away (no
        reference left anywhere), so its backend was destroyed."""
        agent = state["agent"]
        for handle in state["regs"].values():
            agent.deregister_memory(handle)
        state["bufs"], state["regs"], state["handles"], state["prepped"] = {}, {}, {}, []
        state["agent"] = None
        ref = weakref.ref(agent)
        del agent
        gc.collect()
        if ref() is not None:
            raise RuntimeError("the agent is still referenced; it was not destroyed")

    def wait_md(agent, peer, bound):
        deadline = time.monotonic() + bound
        while not agent.check_remote_metadata(peer):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata from {peer} within {bound}s")
            time.sleep(0.005)

    def descs(agent, base, ranges):
        a = np.zeros((len(ranges), 3), dtype=np.uint64)
        a[:, 0] = [base + o for o, _ in ranges]
        a[:, 1] = [n for _, n in ranges]
        return a

    def finish(agent, h, bound):
        """{"state": DONE}, or ERR with the binding's error as "why" ("error" is the reply
        of a command that failed); bounded."""
        deadline = time.monotonic() + bound
        try:
            s = agent.check_xfer_state(h)
            while s == "PROC":
                if time.monotonic() > deadline:
                    return {"state": "PROC", "why": f"still in progress after {bound}s"}
                time.sleep(0)
                s = agent.check_xfer_state(h)
            return {"state": s}
        except Exception as e:  # the binding raises for an error status
            return {"state": "ERR", "why": f"{type(e).__name__}: {e}"}

    def post(agent, req):
        """Creates (initialize_xfer or, mode "prepped", prep_xfer_dlist + make_prepped_xfer
        as vLLM does) and posts a transfer (unless `post` is false); returns (handle, state
        or error)."""
        local = state["bufs"][req["local"]]
        lr = [tuple(r) for r in req["local_ranges"]]
        rr = [tuple(r) for r in req["remote_ranges"]]
        notif = bytes.fromhex(req.get("notif", ""))
        ld = descs(agent, local.ctypes.data, lr)
        rd = descs(agent, req["remote_addr"], rr)
        if req.get("mode", "init") == "prepped":
            lp = agent.prep_xfer_dlist("NIXL_INIT_AGENT", ld, "DRAM")
            rp = agent.prep_xfer_dlist(req["peer"], rd, "DRAM")
            state["prepped"] += [lp, rp]
            ids = np.arange(len(lr), dtype=np.int32)
            h = agent.make_prepped_xfer(req["op"], lp, ids, rp, ids, notif)
        else:
            h = agent.initialize_xfer(
                req["op"], agent.get_xfer_descs(ld, "DRAM"), agent.get_xfer_descs(rd, "DRAM"),
                req["peer"], notif,
            )
        if not req.get("post", True):
            return h, {"state": "PREPARED"}
        try:
            s = agent.transfer(h)
            return h, {"state": s}
        except Exception as e:
            return h, {"state": "ERR", "why": f"{type(e).__name__}: {e}"}

    try:
        port = create()
    except Exception as e:
        reply(error=f"{type(e).__name__}: {e}")
        out.flush()
        os._exit(0)
    reply(ok=True, pid=os.getpid(), port=port, params=state["agent"].get_backend_params(backend))
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        agent = state["agent"]
        try:
            if cmd == "quit":
                reply(ok=True)
                break
            elif cmd == "register":
                size, seed = req["size"], req.get("seed")
                array = np.zeros(size, np.uint8) if seed is None else pattern(size, seed)
                handle = agent.register_memory([(array.ctypes.data, size, 0, "")], "DRAM")
                bid = len(state["bufs"])
                state["bufs"][bid] = array
                state["regs"][f"{bid}"] = handle
                reply(id=bid, addr=array.ctypes.data, len=size, reg=f"{bid}")
            elif cmd == "register_range":
                # Another registration of (part of) a buffer: the same range again, or none.
                array = state["bufs"][req["id"]]
                off, n = req.get("off", 0), req.get("len", array.nbytes)
                handle = agent.register_memory([(array.ctypes.data + off, n, 0, "")], "DRAM")
                key = f"{req['id']}.{len(state['regs'])}"
                state["regs"][key] = handle
                reply(reg=key)
            elif cmd == "deregister":
                agent.deregister_memory(state["regs"].pop(req["reg"]))
                reply(ok=True)
            elif cmd == "fill":
                array = state["bufs"][req["id"]]
                seed = req.get("seed")
                if "off" in req:
                    fill_range(array, req["off"], req["len"], seed)
                else:
                    array[:] = 0 if seed is None else pattern(array.nbytes, seed)
                reply(ok=True)
            elif cmd == "check":
                array = state["bufs"][req["id"]]
                reply(bad=check_range(array, req["off"], req["len"], req["seed"]))
            elif cmd == "check_ranges":
                # The first of (off, len) ranges that does not hold the pattern of `seed`.
                array = state["bufs"][req["id"]]
                bad = None
                for off, n in req["ranges"]:
                    bad = check_range(array, off, n, req["seed"])
                    if bad is not None:
                        break
                reply(bad=bad)
            elif cmd == "gather_digest":
                # sha256 of the (off, len) ranges concatenated in order.
                array = state["bufs"][req["id"]]
                h = hashlib.sha256()
                for off, n in req["ranges"]:
                    h.update(memoryview(array[off : off + n]))
                reply(sha256=h.hexdigest())
            elif cmd == "zero":
                array = state["bufs"][req["id"]]
                array[req["off"] : req["off"] + req["len"]] = 0
                reply(ok=True)
            elif cmd == "digest":
                array = state["bufs"][req["id"]]
                n = req.get("len", array.nbytes)
                reply(sha256=hashlib.sha256(array[:n].tobytes()).hexdigest())
            elif cmd == "notifs":
                # Collects `count` notifications (bounded), as {sender: [hex message, ...]}.
                got, total = {}, 0
                deadline = time.monotonic() + req.get("bound", 60)
                while total < req["count"] and time.monotonic() < deadline:
                    for k, v in agent.get_new_notifs().items():
                        got.setdefault(k, []).extend(m.hex() for m in v)
                        total += len(v)
                    time.sleep(0.001)
                reply(notifs=got)
            elif cmd == "notifs_checked":
                # Collects `count` notifications (bounded) as [sender, length, sha256, ok]: a
                # notification that starts with b"CHECK id off len seed;" has that range of
                # that buffer checked at once, before any later one is taken (so a WRITE's
                # notification is seen to come after its data: ok is whether it held the
                # pattern); one that starts with b"GATHER id off stride len count;" gets the
                # sha256 of those `count` pieces (ok is that digest).
                got = []
                deadline = time.monotonic() + req.get("bound", 60)
                while len(got) < req["count"] and time.monotonic() < deadline:
                    for k, v in agent.get_new_notifs().items():
                        for m in v:
                            ok = None
                            if m.startswith(b"CHECK "):
                                head = m[6 : m.index(b";")].split()
                                bid, off, n, seed = (int(x) for x in head)
                                ok = check_range(state["bufs"][bid], off, n, seed) is None
                            elif m.startswith(b"GATHER "):
                                head = m[7 : m.index(b";")].split()
                                bid, off, stride, n, count = (int(x) for x in head)
                                array, h = state["bufs"][bid], hashlib.sha256()
                                for i in range(count):
                                    at = off + i * stride
                                    h.update(memoryview(array[at : at + n]))
                                ok = h.hexdigest()
                            got.append([k, len(m), hashlib.sha256(m).hexdigest(), ok])
                    time.sleep(0.001)
                reply(notifs=got)
            elif cmd == "send_notif":
                agent.send_notif(req["to"], bytes.fromhex(req["msg"]))
                reply(ok=True)
            elif cmd == "xfer":
                h, st = post(agent, req)
                if st["state"] == "PROC" and req.get("wait", True):
                    st = finish(agent, h, req.get("bound", 120))
                if req.get("keep"):
                    hid = len(state["handles"])
                    state["handles"][hid] = h
                    st["handle"] = hid
                else:
                    try:
                        agent.release_xfer_handle(h)
                    except Exception as e:  # a failed transfer's handle may say so again
                        st.setdefault("why", f"{type(e).__name__}: {e}")
                reply(**st)
            elif cmd == "wait":
                reply(**finish(agent, state["handles"][req["handle"]], req.get("bound", 120)))
            elif cmd == "states":
                # Current state of kept handles, without waiting.
                res = []
                for hid in req["handles"]:
                    try:
                        res.append(agent.check_xfer_state(state["handles"][hid]))
                    except Exception as e:
                        res.append(f"ERR {type(e).__name__}")
                reply(states=res)
            elif cmd == "release":
                try:
                    agent.release_xfer_handle(state["handles"].pop(req["handle"]))
                except Exception as e:  # a failed transfer's handle may say so again
                    reply(ok=True, error_on_release=f"{type(e).__name__}: {e}")
                    continue
                reply(ok=True)
            elif cmd == "estimate":
                d, m, method = agent.estimate_xfer_cost(state["handles"][req["handle"]])
                reply(duration_us=int(d), margin_us=int(m), method=str(method))
            elif cmd == "fetch":
                agent.fetch_remote_metadata(req["peer"], req["ip"], req["port"])
                wait_md(agent, req["peer"], req.get("bound", 60))
                reply(ok=True)
            elif cmd == "send_md":
                agent.send_local_metadata(req["ip"], req["port"])
                reply(ok=True)
            elif cmd == "wait_md":
                wait_md(agent, req["peer"], req.get("bound", 60))
                reply(ok=True)
            elif cmd == "forget":
                try:
                    agent.remove_remote_agent(req["peer"])
                except errors.nixlNotFoundError:
                    pass
                reply(ok=True)
            elif cmd == "metadata":
                reply(md=base64.b64encode(agent.get_agent_metadata()).decode())
            elif cmd == "add_md":
                name = agent.add_remote_agent(base64.b64decode(req["md"]))
                reply(name=name.decode() if isinstance(name, bytes) else name)
            elif cmd == "params":
                reply(params=agent.get_backend_params(backend))
            elif cmd == "destroy":
                agent = None  # this loop's reference would keep the agent alive
                destroy()
                reply(ok=True)
            elif cmd == "create":
                reply(ok=True, port=create())
            else:
                reply(error=f"unknown command {cmd!r}")
        except Exception as e:  # reported to the test, which fails with it
            reply(error=f"{type(e).__name__}: {e}")
    out.flush()
    if backend == "TCPX" and state["agent"] is not None:
        agent = None
        for h in state["handles"].values():
            state["agent"].release_xfer_handle(h)
        state["handles"] = {}
        destroy()
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "TCPX")
