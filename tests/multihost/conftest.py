"""Several "hosts" on one machine: network namespaces joined through a bridge, an etcd server
for NIXL's metadata, and NIXL agents (TCPX backend) running in those namespaces, each driven
over a pipe (see agent.py).

Topology (K = a per-run subnet number, so parallel runs do not collide):

    ns <run>sw : bridge mhbr (10.78.K.254/24, etcd listens here), ports mhp0..mhpN-1
    ns <run>h<i>: veth mhv<i> (10.78.K.<i+1>/24) <-> mhp<i> in the switch namespace

Nothing is created in the root namespace: the veth pairs are created inside the switch
namespace with their peer end placed straight into the host namespace. Faults on host i's
link: `impair` = `tc netem` loss + delay on both ends of its veth pair; kernels built without
sch_netem (like this sandbox's, CONFIG_NET_SCH_NETEM unset) get both from a user-space relay
instead (delay_link.py: the host's switch port leaves the bridge and a process holds and
drops the frames between it and a TAP device on the bridge), or, without /dev/net/tun, the
loss alone from nftables (`numgen random mod 100 < N drop` in the host's input and output
hooks). `rate` = tbf on both ends (slow link, so a transfer can be caught in the
middle). `link(i, False)` = the switch-side port down (the cable pulled: the host's veth
loses carrier, nothing passes either way). All of it is undone after each test.

Where `ip netns add` is not permitted (or ip/tc is missing) every test skips with the reason;
without etcd the tests that need it skip (scripts/multihost.sh installs it).

Environment: TCPX_PLUGIN_DIR (default <repo>/target/plugins) holds libplugin_TCPX.so.
"""

import base64
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
PLUGIN_DIR = pathlib.Path(os.environ.get("TCPX_PLUGIN_DIR", REPO / "target" / "plugins"))
REPLY_BOUND_S = 60
ETCD_PORT = 2379


def run(*args, check=True):
    """Runs a command; raises with its stderr if it fails (when check)."""
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


# ------------------------------------------------------------------------------ network


class Net:
    """`hosts` namespaces on one bridge (in its own namespace); removed by `close()`."""

    def __init__(self, hosts=3):
        pid = os.getpid()
        self.k = 1 + pid % 250
        self.prefix = f"mh{pid}"
        self.switch = f"{self.prefix}sw"
        self.gateway = f"10.78.{self.k}.254"
        self.made = []
        self.hosts = []  # (namespace, veth name, address)
        self._netem = None
        self._relays = {}  # host index -> (delay_link.py process, its stats file)
        try:
            self._add_ns(self.switch)
            self.ip(self.switch, "link", "add", "mhbr", "type", "bridge")
            self.ip(self.switch, "addr", "add", f"{self.gateway}/24", "dev", "mhbr")
            self.ip(self.switch, "link", "set", "mhbr", "up")
            for i in range(hosts):
                ns = f"{self.prefix}h{i}"
                self._add_ns(ns)
                veth, port, addr = f"mhv{i}", f"mhp{i}", f"10.78.{self.k}.{i + 1}"
                self.ip(self.switch, "link", "add", port, "type", "veth",
                        "peer", "name", veth, "netns", ns)
                self.ip(self.switch, "link", "set", port, "master", "mhbr")
                self.ip(self.switch, "link", "set", port, "up")
                # One wire-sized packet per skb (no 64 KiB GSO bursts), so a 1 % loss is
                # 1 % of real packets, as on a wire.
                self.ip(ns, "link", "set", veth, "gso_max_segs", "1")
                self.ip(self.switch, "link", "set", port, "gso_max_segs", "1")
                self.ip(ns, "addr", "add", f"{addr}/24", "dev", veth)
                self.ip(ns, "link", "set", veth, "up")
                self.hosts.append((ns, veth, addr))
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns):
        run("ip", "netns", "add", ns)
        self.made.append(ns)
        self.ip(ns, "link", "set", "lo", "up")

    @staticmethod
    def ip(ns, *args):
        return run("ip", "-n", ns, *args)

    def port(self, i):
        return f"mhp{i}"

    def _tc(self, i, side, *args, check=True):
        ns, dev = (self.hosts[i][0], self.hosts[i][1]) if side == "host" else (
            self.switch, self.port(i))
        return run("ip", "netns", "exec", ns, "tc", "qdisc", *args[:1], "dev", dev,
                   *args[1:], check=check)

    def netem_available(self):
        """Whether this kernel has sch_netem (some sandbox kernels are built without it)."""
        if self._netem is None:
            p = self._tc(0, "switch", "replace", "root", "netem", "delay", "1ms", check=False)
            self._netem = p.returncode == 0
            self._tc(0, "switch", "del", "root", check=False)
        return self._netem

    def impair(self, i, loss_pct, delay_ms):
        """Loss and delay on both directions of host i's link. Returns what was applied:
        netem where the kernel has it; else a user-space relay between the host's switch port
        and the bridge (delay_link.py); else (no TUN device) the loss through nftables
        (random drop in the host's input and output hooks) and no delay."""
        if self.netem_available():
            for side in ("host", "switch"):
                self._tc(i, side, "replace", "root", "netem", "delay", f"{delay_ms}ms",
                         "loss", f"{loss_pct}%")
            return {"loss_pct": loss_pct, "delay_ms": delay_ms, "how": "netem"}
        if os.path.exists("/dev/net/tun"):
            self._relay(i, loss_pct, delay_ms)
            return {"loss_pct": loss_pct, "delay_ms": delay_ms,
                    "how": "user-space TAP relay (no sch_netem)"}
        if shutil.which("nft") is None:
            return None
        ns, veth, _ = self.hosts[i]
        rules = (
            "table inet mhloss {\n"
            f"  chain in {{ type filter hook input priority 0; iifname \"{veth}\" "
            f"numgen random mod 100 < {loss_pct} counter drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; oifname \"{veth}\" "
            f"numgen random mod 100 < {loss_pct} counter drop; }}\n"
            "}\n"
        )
        p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"nft: {p.stderr.strip()}")
        return {"loss_pct": loss_pct, "delay_ms": 0, "how": "nftables (no sch_netem)"}

    def _relay(self, i, loss_pct, delay_ms):
        """Puts delay_link.py between host i's switch port and the bridge: the port leaves
        the bridge, a TAP device owned by the relay takes its place. The host is untouched
        (same veth, address, MAC and connections)."""
        port, tap = self.port(i), f"mhd{i}"
        fd, stats = tempfile.mkstemp(prefix=f"{self.prefix}-link{i}-", suffix=".json")
        os.close(fd)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, sys.executable, str(HERE / "delay_link.py"),
             "--port", port, "--tap", tap, "--delay-ms", str(delay_ms),
             "--loss-pct", str(loss_pct), "--stats", stats],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._relays[i] = (proc, stats)
        lines = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        try:
            ready = lines.get(timeout=30).strip() == "ready"
        except queue.Empty:
            ready = False
        if not ready:
            self._stop_relay(i)
            raise RuntimeError(f"delay_link.py did not start: {proc.stderr.read().strip()}")
        self.ip(self.switch, "link", "set", tap, "master", "mhbr")
        self.ip(self.switch, "link", "set", tap, "up")
        self.ip(self.switch, "link", "set", port, "nomaster")

    def _stop_relay(self, i):
        """Ends host i's relay (its TAP goes with it) and puts the port back on the bridge."""
        proc, stats = self._relays.pop(i)
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=10)
        if os.path.exists(stats):
            os.unlink(stats)
        run("ip", "-n", self.switch, "link", "set", self.port(i), "master", "mhbr",
            check=False)

    def relay_stats(self, i):
        """The relay's counters for host i's link (None without a relay)."""
        if i not in self._relays:
            return None
        with open(self._relays[i][1]) as f:
            return json.load(f)

    def dropped(self, i):
        """Packets the impairment of host i dropped so far (netem's, the relay's or
        nftables' counters): proof that the fault really was there."""
        if i in self._relays:
            time.sleep(0.25)  # the relay rewrites its counters every 100 ms
            return self.relay_stats(i)["dropped"]
        if self.netem_available():
            ns, veth, _ = self.hosts[i]
            out = run("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", veth).stdout
            out += run("ip", "netns", "exec", self.switch, "tc", "-s", "qdisc", "show", "dev",
                       self.port(i)).stdout
            return sum(int(x) for x in re.findall(r"dropped (\d+)", out))
        out = run("ip", "netns", "exec", self.hosts[i][0], "nft", "list", "table", "inet",
                  "mhloss").stdout
        return sum(int(x) for x in re.findall(r"counter packets (\d+)", out))

    def rate(self, i, mbit):
        """Token-bucket rate limit on both directions of host i's link (so a transfer of a
        few MiB lasts seconds and can be interrupted in the middle)."""
        for side in ("host", "switch"):
            self._tc(i, side, "replace", "root", "tbf", "rate", f"{mbit}mbit",
                     "burst", "32kbit", "latency", "400ms")

    def wait_reachable(self, i, port, bound=20):
        """Waits (bounded) until host i opens a TCP connection to the gateway's `port`: after
        a link is restored (a relay's port put back on the bridge, a cable plugged back), so the
        next test does not start on a link that is not forwarding yet."""
        ns = self.hosts[i][0]
        probe = (f"import socket; socket.create_connection(('{self.gateway}', {port}), 1)"
                 ".close()")
        deadline = time.monotonic() + bound
        while run("ip", "netns", "exec", ns, sys.executable, "-c", probe,
                  check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {i} cannot reach {self.gateway}:{port} after "
                                   f"{bound} s with its link restored")
            time.sleep(0.1)

    def clear_impairments(self, i):
        if i in self._relays:
            self._stop_relay(i)
        for side in ("host", "switch"):
            self._tc(i, side, "del", "root", check=False)
        if shutil.which("nft"):
            run("ip", "netns", "exec", self.hosts[i][0], "nft", "delete", "table", "inet",
                "mhloss", check=False)

    def link(self, i, up):
        """Pulls (or plugs back) host i's cable: its switch port goes down, so the host's
        veth loses carrier and nothing passes either way."""
        self.ip(self.switch, "link", "set", self.port(i), "up" if up else "down")

    def kill_leftovers(self, hosts_only=False):
        """Kills any process still running in our namespaces (only ours can be there); with
        hosts_only, spares the switch namespace (etcd)."""
        for ns in self.made:
            if hosts_only and ns == self.switch:
                continue
            p = run("ip", "netns", "pids", ns, check=False)
            for pid in p.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def close(self):
        for i in list(self._relays):
            self._stop_relay(i)
        self.kill_leftovers()
        for ns in reversed(self.made):  # deleting a namespace deletes its veth ends
            run("ip", "netns", "del", ns, check=False)
        self.made = []


def netns_unavailable():
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install -y iproute2)"
    probe = f"mhprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns add not permitted here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# ------------------------------------------------------------------------------- etcd


class Etcd:
    """Debian's etcd in the switch namespace, on the bridge address; data in a temp dir."""

    def __init__(self, net):
        self.net = net
        self.dir = tempfile.mkdtemp(prefix="mh-etcd-")
        self.url = f"http://{net.gateway}:{ETCD_PORT}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", net.switch, "etcd",
             "--name", "mh", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             # peer traffic stays on the switch namespace's own loopback
             "--listen-peer-urls", "http://127.0.0.1:2380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "mh=http://127.0.0.1:2380"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while self.ctl("endpoint", "health", check=False).returncode != 0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not come up; see {self.log.name}")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    def ctl(self, *args, check=True):
        """etcdctl (v3 API) run inside the switch namespace against this server."""
        return run("ip", "netns", "exec", self.net.switch, "env", "ETCDCTL_API=3",
                   "etcdctl", "--endpoints", self.url, "--command-timeout=5s", *args,
                   check=check)

    def revision(self, key_part):
        """mod_revision of the first key containing key_part (0: none)."""
        kvs = json.loads(self.ctl("get", "--prefix", "", "-w", "json").stdout).get("kvs", [])
        for kv in kvs:
            if key_part in base64.b64decode(kv["key"]).decode():
                return int(kv["mod_revision"])
        return 0

    def keys(self, prefix=""):
        return self.ctl("get", "--prefix", prefix, "--keys-only").stdout.split()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ agents


class AgentError(RuntimeError):
    """The agent answered a command with an error."""


class Agent:
    """An agent.py process in host namespace `i`, bound to that namespace's address."""

    def __init__(self, net, i, name, etcd=None, timeout_ms=3000, params=None):
        ns, veth, addr = net.hosts[i]
        self.name, self.host, self.addr = name, i, addr
        params = {"listen_addr": f"{addr}:0", "timeout_ms": str(timeout_ms), **(params or {})}
        env = {**os.environ, "NIXL_PLUGIN_DIR": str(PLUGIN_DIR),
               "TCPX_SOCK_IFNAME": f"={veth}", "PYTHONUNBUFFERED": "1"}
        env.pop("NIXL_ETCD_ENDPOINTS", None)
        if etcd is not None:
            env["NIXL_ETCD_ENDPOINTS"] = etcd.url
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "agent.py"), name,
             json.dumps({"params": params})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
        )
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._reply(REPLY_BOUND_S)

    def _read(self):
        for line in self.proc.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def _reply(self, bound):
        try:
            line = self.replies.get(timeout=bound)
        except queue.Empty:
            raise AssertionError(f"agent {self.name} gave no answer within {bound}s") from None
        if line is None:
            raise AssertionError(f"agent {self.name} exited (rc {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise AgentError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, cmd, bound=REPLY_BOUND_S, **args):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self._reply(bound + 30 if "bound" in args else bound)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self):
        """Asks the agent to quit; kills it if it does not within a bound. Never raises."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def net():
    why = netns_unavailable()
    if why:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    if not (PLUGIN_DIR / "libplugin_TCPX.so").is_file():
        pytest.fail(f"no libplugin_TCPX.so in {PLUGIN_DIR} (scripts/multihost.sh builds it)")
    n = Net(hosts=3)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture(scope="session")
def etcd(net):
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd not installed (apt-get install -y etcd-server etcd-client)")
    e = Etcd(net)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def agents(net, etcd):
    """Factory: `agents(host, name)` starts an agent there; all are closed after the test,
    and the links are restored (netem removed, cables plugged back)."""
    made = []

    def start(i, name, **kw):
        a = Agent(net, i, name, etcd=etcd, **kw)
        made.append(a)
        return a

    try:
        yield start
    finally:
        for i in range(len(net.hosts)):
            net.clear_impairments(i)
            net.link(i, True)
        for a in made:
            a.close()
        net.kill_leftovers(hosts_only=True)
        for i in range(len(net.hosts)):
            net.wait_reachable(i, ETCD_PORT)
