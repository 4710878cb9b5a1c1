"""A NIXL agent in its own process, driven over a pipe: the far side of the two-process tests.

Run as a script it is the *peer*: it creates one agent with the TCPX backend and NIXL's
metadata listener, then answers one JSON command per stdin line with one JSON line on its
original stdout (fd 1 is pointed at stderr first, so nothing NIXL prints can corrupt the
replies). It exits on `quit` or when stdin closes (the test process died), so it never
outlives the test.

Imported, `Peer` starts and drives such a process: every reply is awaited with a bound (a
peer that stops answering fails the test; it never hangs it), and `close()` kills the process
if it does not quit by itself.

    python nixl_peer.py NAME LISTEN_PORT '{"timeout_ms": "3000"}'
"""

import base64
import gc
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

HERE = pathlib.Path(__file__).resolve().parent
REPLY_BOUND_S = 120


def free_port():
    """A TCP port nobody listens on right now (NIXL's listener binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern(n, seed):
    import numpy as np

    return ((np.arange(n, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)


# ---------------------------------------------------------------------------- client side


class PeerError(RuntimeError):
    """The peer answered a command with an error."""


class Peer:
    """A peer process running this file; `call` sends one command and waits (bounded) for its
    reply."""

    def __init__(self, name, params=None, env=None):
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "nixl_peer.py"), name, str(self.port),
             json.dumps(params or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._reply(REPLY_BOUND_S)

    def _read(self):
        for line in self.proc.stdout:
            self.replies.put(line)
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
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# ------------------------------------------------------------------------------ peer side


def _serve(name, port, params):
    import hashlib

    import numpy as np
    from nixl_cu12 import nixl_agent, nixl_agent_config

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")

    state = {"agent": None, "bufs": {}}

    def create(port):
        # backends=[] then create_backend: the only way the Python API passes custom params.
        agent = nixl_agent(
            name,
            nixl_agent_config(enable_listen_thread=True, listen_port=port, backends=[]),
        )
        agent.create_backend("TCPX", params)
        assert "TCPX" in agent.backends
        state["agent"] = agent
        state["bufs"] = {}

    def destroy():
        """Deregisters everything and drops the agent; checks that it really went away (no
        reference left anywhere), so its backend was destroyed."""
        agent = state["agent"]
        for array, handle in state["bufs"].values():
            agent.deregister_memory(handle)
        state["bufs"] = {}
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

    create(port)
    reply(ok=True, pid=os.getpid(), params=state["agent"].get_backend_params("TCPX"))
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
                state["bufs"][bid] = (array, handle)
                reply(id=bid, addr=array.ctypes.data, len=size)
            elif cmd == "fill":
                array = state["bufs"][req["id"]][0]
                seed = req.get("seed")
                array[:] = 0 if seed is None else pattern(array.nbytes, seed)
                reply(ok=True)
            elif cmd == "digest":
                array = state["bufs"][req["id"]][0]
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
            elif cmd == "send_notif":
                agent.send_notif(req["to"], bytes.fromhex(req["msg"]))
                reply(ok=True)
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
            elif cmd == "metadata":
                reply(md=base64.b64encode(agent.get_agent_metadata()).decode())
            elif cmd == "destroy":
                agent = None  # this loop's reference would keep the agent alive
                destroy()
                reply(ok=True)
            elif cmd == "create":
                create(req.get("port", port))
                reply(ok=True)
            else:
                reply(error=f"unknown command {cmd!r}")
        except Exception as e:  # reported to the test, which fails with it
            reply(error=f"{type(e).__name__}: {e}")
    agent = None
    if state["agent"] is not None:
        destroy()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
