#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/<target>/ from the golden bytes
captured from Syncthing 1.19.2 (proto/src/bep/testdata/) and from the
wire formats' documented examples. Run once from the repository root;
`scripts/fuzz --minimise` then shrinks each corpus (and names what it
keeps by content hash, so a seed that adds nothing new is dropped).

Only for byte-level targets: the structure-aware ones (arbitrary) start
from nothing and their corpora come from fuzzing runs."""

import hashlib
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(ROOT, "proto/src/bep/testdata")
CORPUS = os.path.join(ROOT, "fuzz/corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def fields(b):
    """(tag, wire type, value) of a protobuf message, one level deep."""
    i = 0
    while i < len(b):
        key, i = read_varint(b, i)
        tag, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(b, i)
        elif wt == 2:
            n, i = read_varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield tag, wt, v


def ld(tag, data):
    return varint(tag << 3 | 2) + varint(len(data)) + data


def vi(tag, n):
    return varint(tag << 3) + varint(n)


def lz4_block_decompress(src, size):
    """Raw LZ4 block format, as BEP carries it (after its length prefix)."""
    out = bytearray()
    i = 0
    while i < len(src):
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        out += src[i:i + lit]
        i += lit
        if i >= len(src):
            break
        off = src[i] | src[i + 1] << 8
        i += 2
        ml = token & 15
        if ml == 15:
            while True:
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        for _ in range(ml):
            out.append(out[-off])
    assert len(out) == size, (len(out), size)
    return bytes(out)


def frames(b):
    """(whole frame, header type, compression, body) of each BEP frame."""
    i = 0
    while i < len(b):
        hl = struct.unpack(">h", b[i:i + 2])[0]
        header = dict((t, v) for t, _, v in fields(b[i + 2:i + 2 + hl]))
        ml = struct.unpack(">i", b[i + 2 + hl:i + 6 + hl])[0]
        end = i + 6 + hl + ml
        yield b[i:end], header.get(1, 0), header.get(2, 0), b[i + 6 + hl:end]
        i = end


def bep():
    with open(os.path.join(TESTDATA, "st1192-hello-clusterconfig-index.bin"), "rb") as f:
        stream = f.read()
    with open(os.path.join(TESTDATA, "st1192-responses.bin"), "rb") as f:
        responses = f.read()
    hello_len = struct.unpack(">H", stream[4:6])[0]
    after_hello = stream[6 + hello_len:]
    write("bep_frame", "st1192-stream", after_hello)
    write("bep_frame", "st1192-responses", responses)
    device_ids = []
    for n, (frame, kind, compression, body) in enumerate(frames(after_hello + responses)):
        write("bep_frame", "st1192-frame-%d" % n, frame)
        if compression == 1:
            write("bep_lz4", "st1192-frame-%d" % n, b"\xff\xff\xff" + body)
            body = lz4_block_decompress(body[4:], struct.unpack(">I", body[:4])[0])
        if kind == 0:  # ClusterConfig: remember the device IDs
            for t, _, folder in fields(body):
                if t == 1:
                    device_ids += [d for ft, _, dev in fields(folder) if ft == 16
                                   for dt, _, d in fields(dev) if dt == 1]
        if kind == 1:  # Index
            write("bep_rules", "st1192-index", b"\x01" + body)
            for m, (t, _, fi) in enumerate(fields(body)):
                if t == 2:
                    write("bep_rules", "st1192-file-%d" % m, b"\x00" + fi)
    request = (vi(1, 7) + ld(2, b"f1") + ld(3, b"hello.txt") + vi(5, 12)
               + ld(6, hashlib.sha256(b"hello world\n").digest()))
    write("bep_rules", "request", b"\x02" + request)
    return device_ids


def b32(data):
    import base64
    return base64.b32encode(data).decode().rstrip("=")


def luhn32(group):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    factor, total = 1, 0
    for c in group:
        addend = factor * alphabet.index(c)
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return alphabet[(32 - total % 32) % 32]


def device_id_text(raw):
    s = b32(raw)
    checked = "".join(g + luhn32(g) for g in (s[i:i + 13] for i in range(0, 52, 13)))
    return "-".join(checked[i:i + 7] for i in range(0, 56, 7))


def ids_and_uris(device_ids):
    for n, raw in enumerate(device_ids[:2]):
        text = device_id_text(raw)
        write("device_id", "canonical-%d" % n, text.encode())
        write("device_id", "unchecked-%d" % n, b32(raw).lower().encode())
        write("device_id", "raw-%d" % n, raw)
        write("device_id", "allowlist-%d" % n, ("# studio\n%s\n\n%s\n" % (text, b32(raw))).encode())
        write("relay_uri", "pool-%d" % n, (
            "relay://192.0.2.7:22067/?id=%s&pingInterval=1m0s&networkTimeout=2m0s"
            "&sessionLimitBps=0&globalLimitBps=0&statusAddr=:22070&providedBy=studio" % text).encode())
        write("relay_uri", "token-%d" % n, ("relay://[2001:db8::1]:443/?id=%s&token=s3cr%%26t" % text).encode())
    return device_id_text(device_ids[0]) if device_ids else None


def relay():
    hexes = {
        "ping": "9e79bc40 00000000 00000000",
        "join-relay-old": "9e79bc40 00000002 00000000",
        "join-relay-token": "9e79bc40 00000002 0000000c 00000005 6162636465 000000",
        "response": "9e79bc40 00000004 0000000c 00000000 00000004 73756363",
        "connect": "9e79bc40 00000005 00000024 00000020" + " 01" * 32,
        "join-session": "9e79bc40 00000003 00000024 00000020" + " 02" * 32,
        "invitation": "9e79bc40 00000006 00000064 00000020" + " 03" * 32 + " 00000020" + " 04" * 32
                      + " 00000010 00000000000000000000ffff7f000001 00005633 00000001",
        "relay-full": "9e79bc40 00000007 00000000",
    }
    for name, h in hexes.items():
        write("relay_message", name, bytes.fromhex(h.replace(" ", "")))


def discovery(device_ids):
    raw = device_ids[0] if device_ids else bytes(32)
    ann = b'{"addresses":["tcp://0.0.0.0:22000","quic://:22000","relay://192.0.2.7:22067/?id=X"]}'
    write("discovery_json", "announcement", ann)
    write("discovery_json", "lookup", b'{"seen":"2026-12-06T22:00:00.123456789Z","addresses":["tcp://192.0.2.1:22000","tcp://[2001:db8::1]:22000"]}')
    write("discovery_json", "null", b'{"addresses":null}')
    body = ld(1, raw) + ld(2, b"tcp://0.0.0.0:22000") + ld(2, b"quic://:22000") + vi(3, 123456789)
    write("local_discovery", "v4", bytes.fromhex("2ea7d90b") + body)
    write("local_discovery", "v13", bytes.fromhex("7d79bc40") + body)


def names():
    for n, name in enumerate(["hello.txt", "sub dir/f1.txt", ".stignore", ".STFolder/x",
                              ".syncthing.a.txt.tmp", "~syncthing~b.tmp", "a/../b", "a//b", "/abs"]):
        write("node_names", "%d" % n, name.encode())


def config(device_text):
    text = (
        'name = "studio-a"\n\n[options]\nlistenAddresses = ["tcp://0.0.0.0:22000"]\n'
        'globalAnnounceServers = ["https://disco.example:8443/?id=%s"]\n'
        'relaysEnabled = true\n\n[gui]\naddress = "127.0.0.1:8384"\napiKey = "k"\n\n'
        '[[devices]]\ndeviceID = "%s"\nname = "b"\naddresses = ["dynamic"]\n\n'
        '[[folders]]\nid = "f1"\npath = "/srv/f1"\ntype = "sendreceive"\n'
        'devices = [{ deviceID = "%s" }]\n' % ((device_text,) * 3))
    write("node_config", "toml", text.encode())
    write("node_config", "json", (
        '{"name":"studio-a","devices":[{"deviceID":"%s","name":"b","addresses":["dynamic"]}],'
        '"folders":[{"id":"f1","path":"/srv/f1","type":"sendreceive","devices":[{"deviceID":"%s"}]}]}'
        % (device_text, device_text)).encode())


def rest_bodies():
    """Bodies for node_rest_config: what Syncthing 2.1.3 shows at its config
    endpoints (node/src/rest/testdata/), behind the byte that picks the
    endpoint (0 config, 1 options, 2 gui, 3 folder, 4 device)."""
    import json
    testdata = os.path.join(ROOT, "node/src/rest/testdata")

    def load(name):
        with open(os.path.join(testdata, "st213-%s.json" % name)) as f:
            return json.load(f)

    whole = load("config")
    whole["options"]["listenAddresses"] = ["tcp://0.0.0.0:22000"]
    compact = lambda v: json.dumps(v, separators=(",", ":")).encode()
    write("node_rest_config", "config", b"\x00" + compact(whole))
    write("node_rest_config", "options", b"\x01" + compact(load("config_options")))
    write("node_rest_config", "options-patch", b'\x01{"maxSendKbps":100,"relaysEnabled":false}')
    write("node_rest_config", "gui", b"\x02" + compact(load("config_gui")))
    for n, f in enumerate(load("config_folders")):
        write("node_rest_config", "folder%d" % n, b"\x03" + compact(f))
    for n, d in enumerate(load("config_devices")):
        write("node_rest_config", "device%d" % n, b"\x04" + compact(d))


def snapshot(device_ids):
    """discosrv's snapshot file (discosrv/src/store/record.rs, memory.rs),
    after the load time the target reads first."""
    seen_s = 1_800_000_000
    records = []
    for n, raw in enumerate((device_ids + [bytes([7]) * 32])[:3]):
        addrs = [
            struct.pack("<HB", 10, 1) + bytes([192, 0, 2, n + 1]) + struct.pack("<H", 22000),
            struct.pack("<HB", 0, 0x87) + bytes.fromhex("20010db8" + "00" * 11 + "01") + struct.pack("<H", 22067),
            struct.pack("<HB", 5000, 0) + struct.pack("<H", 27) + b"relay://192.0.2.9:22067/?x=1",
        ][: n + 1]
        records.append(raw + struct.pack("<qB", seen_s * 1_000_000_000, len(addrs)) + b"".join(addrs))
    body = b"".join(struct.pack("<I", len(r)) + r for r in records)
    snap = b"DISCOSRV-SNAP-2\n" + body + struct.pack("<IQ", 0, len(records))
    for name, now in [("fresh", seen_s + 60), ("expired", seen_s + 7300), ("forgotten", seen_s + 8 * 86400)]:
        write("discosrv_snapshot", name, struct.pack("<I", now) + snap)
    write("discosrv_snapshot", "torn", struct.pack("<I", seen_s) + snap[: len(snap) // 2])


def main():
    device_ids = bep()
    snapshot(device_ids)
    text = ids_and_uris(device_ids)
    relay()
    discovery(device_ids)
    names()
    rest_bodies()
    if text:
        config(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
