#!/usr/bin/env python3
"""Two node containers sync a folder, with discosrv and relaysrv containers
beside them on one podman network (run by scripts/ship-check, section sync).

Mode "relay" (needs the node's discovery and relay clients): both nodes
listen ONLY on the relay (relay://…&token=…), announce to the discosrv
container and know each other as "dynamic", so the only way to meet is
discovery lookup → relay invitation. Mode "static": devices are configured
with their container DNS names (tcp://NAME:22000) and connect directly;
discosrv and relaysrv run but are not used by the nodes. "auto" tries
relay and falls back to static when the node refuses a relay:// listen
address (a build without the relay client); the mode that ran is printed.

Container names end in -ID so ship-check's cleanup removes them.

usage: ship-sync.py ID TAG WORKDIR [auto|relay|static]
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

ID, TAG, WORK = sys.argv[1:4]
MODE = sys.argv[4] if len(sys.argv) > 4 else "auto"
NET = f"ship-net-{ID}"
RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=4096:4096",
       "--ulimit", "nproc=1024:1024"]
LOG = open(os.path.join(WORK, "sync-podman.log"), "a")
TOKEN = "ship-sync-token"


def say(msg):
    print(f"ship-sync: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    say("FAILED: " + msg)
    for c in ("disco", "relay", "node-a", "node-b"):
        out = subprocess.run(["podman", "logs", "--tail", "15", f"ship-{c}-{ID}"],
                             capture_output=True, text=True)
        print(f"--- ship-{c}-{ID}\n{out.stdout}{out.stderr}", file=sys.stderr)
    sys.exit(1)


def podman(*args):
    r = subprocess.run(["podman", *args], stdout=subprocess.PIPE, stderr=LOG, text=True)
    if r.returncode != 0:
        fail(f"podman {' '.join(args[:3])}… exited {r.returncode} (log: {LOG.name})")
    return r.stdout.strip()


def until(what, limit, f):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                return v
        except Exception:  # noqa: BLE001 - retried until the limit
            pass
        time.sleep(0.5)
    fail(f"{what} (waited {limit} s)")


class Node:
    def __init__(self, name, port, key, data):
        self.name, self.port, self.key, self.data = name, port, key, data

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        # Never through a proxy: the published port is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            text = r.read().decode()
            return json.loads(text) if text.strip() else None


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def log_id(container, pattern):
    def find():
        logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
        m = re.search(pattern, logs.stdout + logs.stderr)
        return m and m.group(1)
    return until(f"{container} to log its device ID", 30, find)


podman("network", "create", NET)
disco = f"ship-disco-{ID}"
relay = f"ship-relay-{ID}"
podman(*RUN[1:], "-d", "--name", disco, "--network", NET, f"localhost/discosrv:{TAG}")
podman(*RUN[1:], "-d", "--name", relay, "--network", NET,
       "-e", f"RELAYSRV_TOKEN={TOKEN}", "-e", f"RELAYSRV_EXT_ADDRESS={relay}:22067",
       f"localhost/relaysrv:{TAG}")
disco_id = log_id(disco, r'"device_id":"([A-Z0-9-]{63})"')
relay_id = log_id(relay, r'"device_id":"([A-Z0-9-]{63})"')
disco_uri = f"https://{disco}:8443/?id={disco_id}"
relay_uri = f"relay://{relay}:22067/?id={relay_id}&token={TOKEN}"

nodes = []
for n in ("a", "b"):
    name = f"ship-node-{n}-{ID}"
    data = os.path.join(WORK, f"data-{n}")
    os.makedirs(os.path.join(data, "shared"), exist_ok=True)
    for d in (data, os.path.join(data, "shared")):
        os.chown(d, 10001, 10001)
    port, key = free_port(), f"key-{n}-{ID}"
    podman(*RUN[1:], "-d", "--name", name, "--network", NET,
           "-p", f"127.0.0.1:{port}:8384", "-v", f"{data}:/data",
           "-e", f"NODE_GUI_APIKEY={key}", "-e", f"NODE_NAME=node-{n}",
           "-e", "NODE_LISTEN=tcp://0.0.0.0:22000", f"localhost/node:{TAG}")
    nodes.append(Node(name, port, key, data))
a, b = nodes
for n in nodes:
    n.id = until(f"{n.name} REST API", 60, lambda n=n: n.call("GET", "/rest/system/status")["myID"])

mode = MODE
if mode in ("auto", "relay"):
    # Relay only: no TCP listener, so a direct connection is impossible.
    opts = {"listenAddresses": [relay_uri], "globalAnnounceServers": [disco_uri],
            "globalAnnounceEnabled": True, "localAnnounceEnabled": False,
            "relaysEnabled": True}
    try:
        for n in nodes:
            n.call("PATCH", "/rest/config/options", opts)
        mode = "relay"
    except Exception as e:  # noqa: BLE001
        if mode == "relay":
            fail(f"the node refuses relay/discovery options: {e}")
        say(f"this node build refuses a relay:// listen address ({e}): static addresses instead")
        mode = "static"
if mode == "relay":
    # Listen addresses apply at the next start.
    for n in nodes:
        podman("restart", "-t", "10", n.name)
    for n in nodes:
        until(f"{n.name} back after restart", 60, lambda n=n: n.call("GET", "/rest/system/status"))

    # Pair the nodes only once both have announced: a lookup of a device
    # that has not announced yet gets a 404 with Retry-After >= 60 s (as
    # from stdiscosrv), so a device paired in that instant would be found
    # a minute or two later, not in seconds.
    def announced(n):
        st = n.call("GET", "/rest/system/status").get("discoveryStatus") or {}
        return st and all(v.get("error") is None for v in st.values())
    for n in nodes:
        until(f"{n.name} announced to the discosrv container", 60, lambda n=n: announced(n))

for me, peer in ((a, b), (b, a)):
    addresses = ["dynamic"] if mode == "relay" else [f"tcp://{peer.name}:22000"]
    me.call("POST", "/rest/config/devices",
            {"deviceID": peer.id, "name": peer.name, "addresses": addresses})
    me.call("POST", "/rest/config/folders",
            {"id": "shared", "label": "shared", "path": "/data/shared", "type": "sendreceive",
             "devices": [{"deviceID": me.id}, {"deviceID": peer.id}],
             "rescanIntervalS": 3600})

payload = os.urandom(3 * 1024 * 1024 + 17)
src = os.path.join(a.data, "shared", "from-a.bin")
with open(src, "wb") as f:
    f.write(payload)
os.chown(src, 10001, 10001)
started = time.monotonic()
a.call("POST", "/rest/db/scan?folder=shared")


def arrived():
    try:
        with open(os.path.join(b.data, "shared", "from-a.bin"), "rb") as f:
            return f.read() == payload
    except OSError:
        return False


until("from-a.bin to arrive in node B's container volume", 120, arrived)
took = time.monotonic() - started
conns = a.call("GET", "/rest/system/connections")["connections"]
kind = conns.get(b.id, {}).get("type", "?")
say(f"mode {mode}: 3 MiB file synced node A → node B in {took:.1f} s; "
    f"A's connection to B: {kind} {conns.get(b.id, {}).get('address', '')}")
if mode == "relay" and not kind.startswith("relay"):
    fail(f"relay mode but the connection is {kind}")
print(mode)
