"""One NIXL agent in its own process, created the way vLLM creates it:
`nixl_agent(name, nixl_agent_config(backends=["TCPX", "UCX"]))`: no NIXL_PLUGIN_DIR, no
backend options, the plugin found in the wheel's own folder where `tcpx nixl install` put it.

Run with the interpreter of the venv under test (it needs only NIXL and numpy):

    python peer.py MODULE NAME       # MODULE: nixl, nixl_cu12 or nixl_cu13

It answers one JSON command per stdin line with one JSON line on its original stdout (fd 1 is
pointed at stderr first, so nothing NIXL prints corrupts the replies) and exits on `quit` or
when stdin closes. The first line describes the agent: the module `import MODULE` resolved to,
the backends created and the plugins listed.

Imported (by the tests, under another interpreter), `Peer` starts and drives such a process:
every reply is awaited with a bound, and `close()` kills a process that does not quit.
"""

import base64
import hashlib
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time

REPLY_BOUND_S = 120
XFER_BOUND_S = 60


class Peer:
    """A process running this file under `python`; `call` sends a command, waits (bounded)."""

    def __init__(self, python, module, name, env):
        self.name = name
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), module, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._reply()

    def _read(self):
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def _reply(self):
        try:
            line = self.replies.get(timeout=REPLY_BOUND_S)
        except queue.Empty:
            raise AssertionError(f"{self.name} gave no answer within {REPLY_BOUND_S}s") from None
        if line is None:
            raise AssertionError(f"{self.name} exited (rc {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, cmd, **args):
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            self.proc.wait(timeout=REPLY_BOUND_S)
            raise AssertionError(f"{self.name} exited (rc {self.proc.returncode})") from None
        return self._reply()

    def close(self):
        """Asks the process to quit; kills it past a bound. Never raises."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except OSError:
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


def _serve(module, name):
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")

    import numpy as np

    nixl = importlib.import_module(module)
    agent = nixl.nixl_agent(name, nixl.nixl_agent_config(backends=["TCPX", "UCX"]))
    resolved = sys.modules[nixl.nixl_agent.__module__].__name__.split(".")[0]
    reply(
        module=resolved,
        backends=sorted(agent.backends),
        plugins=sorted(agent.get_plugin_list()),
        pid=os.getpid(),
    )
    bufs = []
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "quit":
                reply(ok=True)
                break
            elif cmd == "md":
                reply(md=base64.b64encode(agent.get_agent_metadata()).decode())
            elif cmd == "add":
                peer = agent.add_remote_agent(base64.b64decode(req["md"]))
                reply(name=peer.decode() if isinstance(peer, bytes) else peer)
            elif cmd == "register":
                n, seed = req["size"], req.get("seed")
                if seed is None:
                    array = np.zeros(n, np.uint8)
                else:
                    array = ((np.arange(n, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)
                agent.register_memory([(array.ctypes.data, n, 0, "")], "DRAM")
                bufs.append(array)
                reply(id=len(bufs) - 1, addr=array.ctypes.data, len=n)
            elif cmd == "digest":
                reply(sha=hashlib.sha256(bufs[req["id"]].tobytes()).hexdigest())
            elif cmd == "xfer":
                array = bufs[req["id"]]
                local = agent.get_xfer_descs([(array.ctypes.data, array.nbytes, 0)], "DRAM")
                remote = agent.get_xfer_descs([(req["addr"], array.nbytes, 0)], "DRAM")
                handle = agent.initialize_xfer(
                    req["op"], local, remote, req["peer"], req.get("notif", "").encode(),
                    backends=[req["backend"]],
                )
                used = agent.query_xfer_backend(handle)
                state = agent.transfer(handle)
                deadline = time.monotonic() + XFER_BOUND_S
                while state == "PROC" and time.monotonic() < deadline:
                    state = agent.check_xfer_state(handle)
                agent.release_xfer_handle(handle)
                reply(state=state, backend=used)
            elif cmd == "notifs":
                got = []
                deadline = time.monotonic() + XFER_BOUND_S
                while len(got) < req["count"] and time.monotonic() < deadline:
                    for msgs in agent.get_new_notifs().values():
                        got += [m.decode() for m in msgs]
                    time.sleep(0.001)
                reply(notifs=got)
            else:
                reply(error=f"unknown command {cmd!r}")
        except Exception as e:  # reported to the test, which fails with it
            reply(error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
