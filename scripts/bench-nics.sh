#!/usr/bin/env bash
# `tcpx bench` two-host mode over 1, 2 and 4 NICs: for each count N, two network namespaces
# joined by N veth pairs (one subnet per pair, so each pair is its own "NIC"), the listener
# in one, the connector in the other, TCPX_DEVICES=all so the channels stripe over every NIC.
# Prints GB/s side by side per size, the bytes each interface carried during the bench (from
# /sys/class/net/*/statistics), and an iperf3 baseline over the same veths in the same run
# (one iperf3 client per veth pair, the same total number of streams as tcpx has channels).
#
# What this is: a spread proof. Veths are memory copies in one kernel, so the CPU (both
# "hosts" share this machine's cores) is the limit, not the links: more NICs do not add
# bandwidth here, and the figures say nothing about real NICs.
#
#   scripts/bench-nics.sh                       # 1, 2, 4 NICs; 1M,16M,64M; 4 channels
#   scripts/bench-nics.sh --json > out.json     # one JSON object on stdout
#   scripts/bench-nics.sh --install             # apt-get install iperf3 if it is missing
#   scripts/bench-nics.sh --nics "1 2 4" --sizes 1M,16M,64M --channels 4 --iters 20
#   scripts/bench-nics.sh --no-build            # use the tcpx already in target/release
#   scripts/bench-nics.sh --iperf3-secs 5       # iperf3 time per NIC count (default 2)
#
# Needs root (ip netns). Exits 0 with a SKIP line when network namespaces are not permitted.
set -euo pipefail
cd "$(dirname "$0")/.."

json=0 install=0 build=1 nics="1 2 4" sizes="1M,16M,64M" channels=4 iters="" secs=2
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --json) json=1 ;;
        --install) install=1 ;;
        --no-build) build=0 ;;
        --nics) nics=$2; shift ;;
        --sizes) sizes=$2; shift ;;
        --channels) channels=$2; shift ;;
        --iters) iters=$2; shift ;;
        --iperf3-secs) secs=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-nics: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
    esac
    shift
done
for n in $nics; do
    [[ $n =~ ^[1-9]$ ]] || { echo "bench-nics: --nics: $n is not 1..9" >&2; exit 2; }
done

say() { echo "$*" >&2; }

if ((install)) && ! command -v iperf3 >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y iperf3 >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y iperf3 >/dev/null; } ||
        say "warning: could not install iperf3; the baseline is reported absent"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if ((build)); then
    cargo build --release -p tcpx-cli --bin tcpx >&2
fi
tcpx="$PWD/$CARGO_TARGET_DIR/release/tcpx"
[[ $CARGO_TARGET_DIR = /* ]] && tcpx="$CARGO_TARGET_DIR/release/tcpx"
[[ -x $tcpx ]] || { say "bench-nics: no $tcpx (build it, or drop --no-build)"; exit 1; }

# Everything made here is named after this process and removed on exit, whatever happens.
id=$(($$ % 100000))
work=$(mktemp -d)
made=()
cleanup() {
    # Only this script's own background jobs that are still running.
    for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
    for n in "${made[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Namespaces bna<id>n<N> (listener) and bnb<id>n<N> (connector) joined by N veth pairs: pair
# j has ends bna<id><N><j> (10.<90+j>.<N>.1) and bnb<id><N><j> (10.<90+j>.<N>.2).
setup() {
    local n=$1 a=bna${id}n$1 b=bnb${id}n$1 j
    ip netns add "$a" || return 1
    made+=("$a")
    ip netns add "$b" || return 1
    made+=("$b")
    ip -n "$a" link set lo up && ip -n "$b" link set lo up || return 1
    for ((j = 0; j < n; j++)); do
        ip link add "bna$id$n$j" type veth peer name "bnb$id$n$j" || return 1
        ip link set "bna$id$n$j" netns "$a" && ip link set "bnb$id$n$j" netns "$b" || return 1
        ip -n "$a" addr add "10.$((90 + j)).$n.1/24" dev "bna$id$n$j" || return 1
        ip -n "$b" addr add "10.$((90 + j)).$n.2/24" dev "bnb$id$n$j" || return 1
        ip -n "$a" link set "bna$id$n$j" up && ip -n "$b" link set "bnb$id$n$j" up || return 1
    done
}

# "name rx_bytes tx_bytes" for each veth of namespace $1 whose name starts with $2.
counters() {
    ip netns exec "$1" sh -c 'for d in /sys/class/net/'"$2"'*; do
        echo "${d##*/} $(cat "$d/statistics/rx_bytes") $(cat "$d/statistics/tx_bytes")"; done'
}

have_iperf3=0
command -v iperf3 >/dev/null && have_iperf3=1
((have_iperf3)) || say "iperf3 absent: no baseline (--install fetches it from Debian)"

load0=$(cut -d' ' -f1-3 /proc/loadavg)
port=17390
iter_args=()
[[ -n $iters ]] && iter_args=(--iters "$iters")
for n in $nics; do
    a=bna${id}n$n b=bnb${id}n$n d=$work/$n
    mkdir -p "$d"
    if ! setup "$n" 2>"$d/setup.err"; then
        say "SKIP: network namespaces not permitted here ($(tr '\n' ' ' <"$d/setup.err"))"
        exit 0
    fi
    say "== $n NIC(s): tcpx bench --channels $channels --size $sizes, TCPX_DEVICES=all"
    counters "$a" "bna$id" >"$d/rx0"
    counters "$b" "bnb$id" >"$d/tx0"
    TCPX_DEVICES=all TCPX_CHANNELS="$channels" TCPX_SOCK_IFNAME="bna$id" ip netns exec "$a" timeout 600 "$tcpx" bench \
        --listen "$port" --size "$sizes" "${iter_args[@]}" --json \
        >"$d/listen.json" 2>"$d/listen.err" &
    lp=$!
    sleep 0.3
    ok=1
    TCPX_DEVICES=all TCPX_CHANNELS="$channels" TCPX_SOCK_IFNAME="bnb$id" ip netns exec "$b" timeout 600 "$tcpx" bench \
        --connect "10.90.$n.1:$port" --json >"$d/connect.json" 2>"$d/connect.err" || ok=0
    wait "$lp" || ok=0
    if ((!ok)); then
        say "bench with $n NIC(s) failed:"
        cat "$d/listen.err" "$d/connect.err" >&2
        exit 1
    fi
    counters "$a" "bna$id" >"$d/rx1"
    counters "$b" "bnb$id" >"$d/tx1"

    if ((have_iperf3)); then
        # One server per veth pair in the listener's namespace, one client per pair in the
        # connector's, all at once; streams split so the total matches the channel count.
        per=$(((channels + n - 1) / n))
        say "== $n NIC(s): iperf3, $n client(s) x -P $per, ${secs}s"
        srv=()
        for ((j = 0; j < n; j++)); do
            ip netns exec "$a" iperf3 -s -1 -p $((5201 + j)) >/dev/null 2>&1 &
            srv+=($!)
        done
        sleep 0.3
        cli=()
        for ((j = 0; j < n; j++)); do
            ip netns exec "$b" iperf3 -c "10.$((90 + j)).$n.1" -p $((5201 + j)) -P "$per" \
                -t "$secs" --json >"$d/iperf3.$j.json" 2>&1 &
            cli+=($!)
        done
        for p in "${cli[@]}" "${srv[@]}"; do wait "$p" || true; done
    fi
    ip netns del "$a"
    ip netns del "$b"
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work" "$json" "$channels" "$load0" "$load" "$(nproc)" "$nics" <<'PY'
import json, os, sys

work, as_json, channels, load0, load, cores, nics = sys.argv[1:8]
nics = [int(n) for n in nics.split()]

def counters(path):
    out = {}
    with open(path) as f:
        for line in f:
            name, rx, tx = line.split()
            out[name] = (int(rx), int(tx))
    return out

def iperf3(d, n):
    total, per = 0.0, []
    for j in range(n):
        p = os.path.join(d, f"iperf3.{j}.json")
        if not os.path.exists(p):
            return None
        doc = None
        try:
            with open(p) as f:
                doc = json.load(f)
            bps = doc["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError, TypeError) as e:
            why = doc.get("error", e) if isinstance(doc, dict) else e
            return {"error": f"iperf3 client {j}: {why}"}
        per.append(bps / 8e9)
        total += bps / 8e9
    return {"gbps": total, "gbps_per_nic": per}

runs = []
for n in nics:
    d = os.path.join(work, str(n))
    with open(os.path.join(d, "listen.json")) as f:
        listen = json.load(f)
    rx0, rx1 = counters(os.path.join(d, "rx0")), counters(os.path.join(d, "rx1"))
    tx0, tx1 = counters(os.path.join(d, "tx0")), counters(os.path.join(d, "tx1"))
    ifaces = []
    for name in sorted(rx1):
        peer = "bnb" + name[3:]
        ifaces.append({
            "listener_if": name,
            "rx_bytes": rx1[name][0] - rx0[name][0],
            "connector_if": peer,
            "tx_bytes": tx1[peer][1] - tx0[peer][1],
        })
    rows = [{k: r[k] for k in ("bytes", "iters", "gbps", "gbps_aggregate", "p50_us", "cpu_us")}
            for r in listen["rows"]]
    # Every NIC carried at least half of an even share of what the listener received.
    total = sum(i["rx_bytes"] for i in ifaces)
    spread = total > 0 and all(2 * n * i["rx_bytes"] >= total for i in ifaces)
    runs.append({"nics": n, "devices": listen.get("devices"), "rows": rows,
                 "interfaces": ifaces, "spread_ok": spread, "iperf3": iperf3(d, n)})

machine = {"cores": int(cores), "loadavg_start": load0, "loadavg_end": load,
           "kernel": os.uname().release}
caveat = ("veth pairs between two namespaces of one machine: every byte is a memory copy on "
          "the same CPUs, so the CPU is the limit and more NICs cannot add bandwidth; this "
          "shows the channels spread over every NIC, not what real NICs would carry")
if as_json == "1":
    json.dump({"machine": machine, "channels": int(channels), "devices_env": "all",
               "timing": "listener's rows (gbps: p50; gbps_aggregate: all iterations)",
               "caveat": caveat, "runs": runs}, sys.stdout)
    print()
    sys.exit(0)

def size(b):
    for unit, s in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << s and b % (1 << s) == 0:
            return f"{b >> s} {unit}"
    return f"{b} B"

print(f"\nmachine: {cores} cores, load {load0} at the start, {load} at the end,"
      f" kernel {machine['kernel']}")
print(f"tcpx bench --listen/--connect, {channels} channels, TCPX_DEVICES=all, host memory;"
      " GB/s = 1e9 B/s at p50 (aggregate over all iterations in parentheses)\n")
head = ["size"] + [f"{r['nics']} NIC{'s' if r['nics'] > 1 else ''}" for r in runs]
table = [head]
for i, row in enumerate(runs[0]["rows"]):
    cells = [size(row["bytes"])]
    for r in runs:
        x = r["rows"][i]
        cells.append(f"{x['gbps']:.2f} ({x['gbps_aggregate']:.2f})")
    table.append(cells)
cells = ["iperf3"]
for r in runs:
    ip = r["iperf3"]
    if ip is None:
        cells.append("absent")
    elif "error" in ip:
        cells.append("failed")
    else:
        per = -(-int(channels) // r["nics"])
        cells.append(f"{ip['gbps']:.2f} ({r['nics']}x -P {per})")
table.append(cells)
w = [max(len(t[c]) for t in table) for c in range(len(head))]
for k, t in enumerate(table):
    print("| " + " | ".join(c.ljust(w[j]) for j, c in enumerate(t)) + " |")
    if k == 0:
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")

for r in runs:
    ok = "yes" if r["spread_ok"] else "NO"
    print(f"\n{r['nics']} NIC(s), channel -> device: {r['devices']}; every NIC carried at"
          f" least half an even share: {ok}")
    total = sum(i["rx_bytes"] for i in r["interfaces"]) or 1
    for i in r["interfaces"]:
        print(f"  {i['listener_if']:<12} rx {i['rx_bytes']:>13,} B ({100 * i['rx_bytes'] / total:5.1f} %)"
              f"   {i['connector_if']:<12} tx {i['tx_bytes']:>13,} B")
    ip = r["iperf3"]
    if ip and "error" in ip:
        print(f"  iperf3: {ip['error']}")
print(f"\ncaveat: {caveat}.")
PY
