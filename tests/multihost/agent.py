"""One NIXL agent (TCPX backend only) in its own process, usually inside a network namespace:

    ip netns exec NS python agent.py NAME '{"params": {"listen_addr": "10.78.1.1:0", ...}}'

It answers one JSON command per stdin line with one JSON reply line on its *original* stdout
(fd 1 is pointed at stderr first, so nothing NIXL prints can corrupt the replies). It exits on
`quit` or when stdin closes (the test process died), so it never outlives the test.

The environment chooses the rest: NIXL_PLUGIN_DIR (our plugin), TCPX_SOCK_IFNAME (=veth of
this namespace, for the data sockets), NIXL_ETCD_ENDPOINTS (metadata through etcd).

Commands (`{"cmd": ..., args}` -> reply; a failure replies `{"error": "..."}`):

    register size seed?          -> id addr len      a zeroed (or patterned) DRAM buffer
    fill id seed?                -> ok               zero it / write pattern(seed)
    digest id len?               -> sha256
    deregister id                -> ok
    send_md                      -> ok               our metadata to etcd (no address)
    invalidate_md                -> ok               remove it from etcd
    fetch_md peer bound?         -> ok               from etcd, waits until loaded
    has_md peer                  -> loaded
    metadata                     -> md (base64)      get_agent_metadata()
    add_md md                    -> name             add_remote_agent(b64decode(md))
    remove peer                  -> removed          remove_remote_agent (False: not known)
    post op peer local remote notif? -> xid state    local: [buffer id, [[off, len], ...]]
                                                     remote: [[addr, len], ...]
    poll xid bound?              -> state elapsed_s  until it leaves PROC (bounded)
    xfer (post's args) bound?    -> state elapsed_s  post + poll
    release xid                  -> ok
    notifs count bound?          -> notifs {sender: [hex, ...]}
    send_notif to msg(hex)       -> ok
    quit                         -> ok

Transfer states: "DONE", "PROC" (the bound ran out), "ERR" (check_xfer_state said so) or
"ERR:<exception>" (the binding raised, e.g. nixlRemoteDisconnectError).
"""

import base64
import hashlib
import importlib
import json
import os
import sys
import time


def pattern(n, seed):
    import numpy as np

    return ((np.arange(n, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)


def main(name, config):
    # Replies go to the original stdout; everything else (NIXL's logs included, even those
    # printed while importing it) goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import numpy as np
    from nixl_cu12 import nixl_agent, nixl_agent_config

    errors = importlib.import_module("nixl_cu12._bindings")
    nixl_errors = tuple(
        getattr(errors, n)
        for n in dir(errors)
        if n.startswith("nixl") and n.endswith("Error") and isinstance(getattr(errors, n), type)
    )

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")

    agent = nixl_agent(name, nixl_agent_config(backends=[]))
    if "TCPX" not in agent.get_plugin_list():
        reply(error=f"no TCPX plugin in {os.environ.get('NIXL_PLUGIN_DIR')}")
        return
    agent.create_backend("TCPX", config.get("params", {}))
    if "TCPX" not in agent.backends:
        reply(error="TCPX plugin found but no TCPX backend was created")
        return

    bufs = {}  # id -> (array, registration handle)
    xfers = {}  # xid -> handle
    counter = iter(range(1 << 30))

    def state_of(fn, *a):
        try:
            return fn(*a)
        except nixl_errors as e:
            return f"ERR:{type(e).__name__}"

    def wait_state(handle, state, bound):
        t0 = time.monotonic()
        deadline = t0 + bound
        while state == "PROC" and time.monotonic() < deadline:
            time.sleep(0.0005)
            state = state_of(agent.check_xfer_state, handle)
        return state, time.monotonic() - t0

    def wait_md(peer, bound):
        deadline = time.monotonic() + bound
        while not agent.check_remote_metadata(peer):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata from {peer} within {bound}s")
            time.sleep(0.005)

    def post(req):
        bid, ranges = req["local"]
        base = bufs[bid][0].ctypes.data
        local = agent.get_xfer_descs([(base + o, n, 0) for o, n in ranges], "DRAM")
        remote = agent.get_xfer_descs([(a, n, 0) for a, n in req["remote"]], "DRAM")
        notif = bytes.fromhex(req["notif"]) if req.get("notif") is not None else b""
        handle = agent.initialize_xfer(req["op"], local, remote, req["peer"], notif)
        xid = next(counter)
        xfers[xid] = handle
        return xid, handle, state_of(agent.transfer, handle)

    reply(ok=True, pid=os.getpid(), params=agent.get_backend_params("TCPX"))
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "quit":
                reply(ok=True)
                break
            elif cmd == "register":
                size, seed = req["size"], req.get("seed")
                array = np.zeros(size, np.uint8) if seed is None else pattern(size, seed)
                handle = agent.register_memory([(array.ctypes.data, size, 0, "")], "DRAM")
                bid = next(counter)
                bufs[bid] = (array, handle)
                reply(id=bid, addr=array.ctypes.data, len=size)
            elif cmd == "fill":
                array = bufs[req["id"]][0]
                seed = req.get("seed")
                array[:] = 0 if seed is None else pattern(array.nbytes, seed)
                reply(ok=True)
            elif cmd == "digest":
                array = bufs[req["id"]][0]
                n = req.get("len", array.nbytes)
                reply(sha256=hashlib.sha256(array[:n].tobytes()).hexdigest())
            elif cmd == "deregister":
                array, handle = bufs.pop(req["id"])
                agent.deregister_memory(handle)
                reply(ok=True)
            elif cmd == "send_md":
                agent.send_local_metadata()
                reply(ok=True)
            elif cmd == "invalidate_md":
                agent.invalidate_local_metadata()
                reply(ok=True)
            elif cmd == "fetch_md":
                agent.fetch_remote_metadata(req["peer"])
                wait_md(req["peer"], req.get("bound", 30))
                reply(ok=True)
            elif cmd == "has_md":
                reply(loaded=bool(agent.check_remote_metadata(req["peer"])))
            elif cmd == "metadata":
                reply(md=base64.b64encode(agent.get_agent_metadata()).decode())
            elif cmd == "add_md":
                got = agent.add_remote_agent(base64.b64decode(req["md"]))
                reply(name=got.decode() if isinstance(got, bytes) else str(got))
            elif cmd == "remove":
                try:
                    agent.remove_remote_agent(req["peer"])
                    reply(removed=True)
                except errors.nixlNotFoundError:
                    reply(removed=False)
            elif cmd == "post":
                xid, _, state = post(req)
                reply(xid=xid, state=state)
            elif cmd == "poll":
                state, dt = wait_state(xfers[req["xid"]], "PROC", req.get("bound", 60))
                reply(state=state, elapsed_s=dt)
            elif cmd == "xfer":
                t0 = time.monotonic()
                xid, handle, state = post(req)
                state, _ = wait_state(handle, state, req.get("bound", 60))
                reply(xid=xid, state=state, elapsed_s=time.monotonic() - t0)
            elif cmd == "release":
                handle = xfers.pop(req["xid"])
                state_of(agent.release_xfer_handle, handle)
                reply(ok=True)
            elif cmd == "notifs":
                got, total = {}, 0
                deadline = time.monotonic() + req.get("bound", 30)
                while total < req["count"] and time.monotonic() < deadline:
                    for k, v in agent.get_new_notifs().items():
                        got.setdefault(k, []).extend(m.hex() for m in v)
                        total += len(v)
                    time.sleep(0.001)
                reply(notifs=got)
            elif cmd == "send_notif":
                agent.send_notif(req["to"], bytes.fromhex(req["msg"]))
                reply(ok=True)
            else:
                reply(error=f"unknown command {cmd!r}")
        except Exception as e:  # reported to the test, which fails with it
            reply(error=f"{type(e).__name__}: {e}")
    # Leave without tearing anything down in order: the test may have cut the links, and a
    # clean destroy only waits (bounded) for peers that are gone anyway.
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
