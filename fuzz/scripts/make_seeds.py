#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/ (small, valid inputs for each target)."""
import json, os, struct, uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seeds")


def s(b):  # MQTT string / binary: u16 length + bytes
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">H", len(b)) + b


def varint(n):
    out = b""
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out += bytes([byte])
        if not n:
            return out


def pkt(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(p=b""):
    return varint(len(p)) + p


def connect_v4(client="phone-1", user="alice", pw="token", will=False, clean=True):
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if pw is not None else 0)
    payload = s(client)
    if will:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retain
        payload += s("chat/will") + s(b"bye")
    if user is not None:
        payload += s(user)
    if pw is not None:
        payload += s(pw)
    return pkt(0x10, s("MQTT") + b"\x04" + bytes([flags]) + struct.pack(">H", 60) + payload)


def connect_v5(client="phone-1", user="alice", pw="token", compact=False, will=False):
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if pw is not None else 0)
    p = b"\x21" + struct.pack(">H", 10) + b"\x27" + struct.pack(">I", 65536) + b"\x22" + struct.pack(">H", 8)
    if compact:
        p += b"\x26" + s("enc") + s("compact")
    payload = s(client)
    if will:
        flags |= 0x04 | 0x08
        payload += props(b"\x18" + struct.pack(">I", 5)) + s("chat/will") + s(b"bye")
    if user is not None:
        payload += s(user)
    if pw is not None:
        payload += s(pw)
    return pkt(0x10, s("MQTT") + b"\x05" + bytes([flags]) + struct.pack(">H", 60) + props(p) + payload)


SEND = {"op": "send", "cid": "c1", "chat": "user", "to": "bob", "type": "txt", "body": {"msg": "hi"}}


def packets_v4():
    body = json.dumps(SEND).encode()
    return [
        pkt(0x30, s("org/app/u/alice/out") + body),
        pkt(0x32, s("org/app/u/alice/out") + b"\x00\x01" + body),
        pkt(0x34, s("org/app/u/alice/out") + b"\x00\x02" + body),
        pkt(0x82, b"\x00\x03" + s("org/app/u/alice/in") + b"\x01" + s("org/app/r/room1") + b"\x00"),
        pkt(0xA2, b"\x00\x04" + s("org/app/u/alice/in")),
        pkt(0x40, b"\x00\x01"),
        pkt(0x50, b"\x00\x02"),
        pkt(0x62, b"\x00\x02"),
        pkt(0x70, b"\x00\x02"),
        b"\xc0\x00",
        b"\xe0\x00",
    ]


def packets_v5():
    body = json.dumps(SEND).encode()
    return [
        pkt(0x30, s("org/app/u/alice/out") + props() + body),
        pkt(0x32, s("org/app/u/alice/out") + b"\x00\x01" + props(b"\x23\x00\x01" + b"\x26" + s("k") + s("v")) + body),
        pkt(0x32, s("") + b"\x00\x05" + props(b"\x23\x00\x01") + body),  # topic alias only
        pkt(0x34, s("org/app/u/alice/out") + b"\x00\x02" + props(b"\x01\x01\x03" + s("application/json")) + body),
        pkt(0x82, b"\x00\x03" + props(b"\x0b\x07") + s("org/app/u/alice/in") + b"\x01" + s("org/app/r/room1") + b"\x2e"),
        pkt(0xA2, b"\x00\x04" + props() + s("org/app/u/alice/in")),
        pkt(0x40, b"\x00\x01"),
        pkt(0x40, b"\x00\x01\x10"),
        pkt(0x40, b"\x00\x01\x00" + props()),
        pkt(0x50, b"\x00\x02\x00" + props(b"\x1f" + s("why"))),
        pkt(0x62, b"\x00\x02"),
        pkt(0x70, b"\x00\x02\x92" + props()),
        b"\xc0\x00",
        b"\xe0\x00",
        b"\xe0\x01\x04",
        pkt(0xE0, b"\x00" + props(b"\x11\x00\x00\x00\x10")),
        pkt(0xF0, b"\x18" + props(b"\x15" + s("SCRAM") + b"\x16" + s(b"\x01\x02"))),
    ]


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def mp(v):
    """A tiny MessagePack encoder (enough for the seeds)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc4" + bytes([len(v)]) + bytes(v)
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def main():
    # mqtt_connect: a CONNECT, then a few packets in its version.
    v4s, v5s = packets_v4(), packets_v5()
    write("mqtt_connect", "v4_login", connect_v4() + v4s[1] + v4s[3])
    write("mqtt_connect", "v4_compact_user_will", connect_v4(user="alice?enc=compact", will=True) + v4s[0])
    write("mqtt_connect", "v4_no_login_empty_id", connect_v4(client="", user=None, pw=None))
    write("mqtt_connect", "v5_login", connect_v5() + v5s[1] + v5s[4])
    write("mqtt_connect", "v5_compact_prop_will", connect_v5(compact=True, will=True) + v5s[2] + b"\xe0\x00")
    write("mqtt_connect", "v5_user_suffix", connect_v5(user="alice?enc=compact") + b"\xe0\x01\x04")
    write("mqtt_connect", "v3_refused", pkt(0x10, s("MQIsdp") + b"\x03\x02\x00\x3c" + s("x")))
    write("mqtt_connect", "http", b"GET / HTTP/1.1\r\n\r\n")
    # mqtt_packets: first byte picks the version (bit 0) and the limit (bit 1).
    write("mqtt_packets", "v4_all", b"\x00" + b"".join(v4s))
    write("mqtt_packets", "v5_all", b"\x01" + b"".join(v5s))
    write("mqtt_packets", "v4_small_limit", b"\x02" + v4s[1])
    write("mqtt_packets", "v5_small_limit", b"\x03" + v5s[1])
    for i, p in enumerate(v4s):
        write("mqtt_packets", f"v4_{i:02}", b"\x00" + p)
    for i, p in enumerate(v5s):
        write("mqtt_packets", f"v5_{i:02}", b"\x01" + p)
    # envelope: client ops as devices publish them, and frames.
    ops = [
        SEND,
        {"op": "send", "cid": "c2", "chat": "group", "to": "team", "type": "loc", "body": {"lat": 1.5, "lng": 2, "addr": "x"}, "ext": {"k": [1, None]}},
        {"op": "send", "cid": "c3", "chat": "room", "to": "r1", "type": "img", "body": {"url": "https://x/y.png"}},
        {"op": "send", "cid": "c4", "chat": "user", "to": "Bob", "type": "custom", "body": {"customEvent": "e"}},
        {"op": "sync", "after": 0, "limit": 50},
        {"op": "sync", "cid": "s1"},
        {"op": "typing", "chat": "user", "to": "bob"},
        {"op": "join", "room": "r1", "cid": "j"},
        {"op": "leave", "room": "r1"},
        {"op": "read", "conv": "u:alice:bob", "seq": 3},
        {"op": "delivered", "conv": "g:team", "seq": 9},
        {"op": "recall", "id": "0190c9e4-8f1e-7000-8000-000000000001", "cid": "x"},
        {"op": "edit", "id": "m1", "body": {"msg": "fixed"}},
        {"op": "delete", "id": "m1"},
        {"op": "react", "id": "m1", "emoji": "\U0001F44D", "action": "remove"},
        {"op": "push_bind", "device_token": "t", "notifier": "apns", "device_id": "phone"},
        {"op": "push_unbind"},
        {"op": "dnd", "all_off": False, "quiet_start": 1320, "quiet_end": 420, "utc_offset_minutes": 60},
        {"op": "mute_conv", "conv": "g:team", "muted": False},
    ]
    for op in ops:
        write("envelope", f"op_{ops.index(op):02}_{op['op']}", json.dumps(op).encode())
    write("envelope", "frame_outbox", b"\x10\x05phone" + json.dumps(SEND).encode())
    write("envelope", "frame_unreadable", b"\x11\x05phonenot a compact envelope")
    write("envelope", "frame_inbox_only", b"\x01\x03tab{}")
    write("envelope", "frame_inbox_except", b"\x02\x03tab{\"op\":\"msg\"}")
    # compact: the short forms and maps from store/src/compact.rs's tests.
    mid = uuid.UUID("0190c9e4-8f1e-7000-8000-000000000001").bytes
    seeds = {
        "send_txt": [1, "c1", 0, "bob", 0, "twenty characters!!!"],
        "send_ext": [1, "c2", 1, "g1", 2, {"lat": 1.5, "lng": 2, "addr": "x"}, {"k": [1, None]}],
        "ack_uuid": [2, "c1", mid, "u:alice:bob", 7, 1763000000000, 12],
        "ack_text": [2, "c1", "not-a-uuid", "r:x", 7, 1],
        "msg_derived": [3, mid, None, 7, 3, 1763000000000, 0, "alice", "bob", 0, "hi", None],
        "msg_more": [3, mid, "g:team", 7, None, 1, 1, "alice", "team", 1, {"url": "u"}, {"a": 1},
                     {"cid": "c9", "from_device": "phone", "recalled": True, "edited": 5,
                      "reactions": [{"emoji": "x", "count": 1, "users": ["bob"]}]}],
        "map_error": {"op": "error", "cid": "c1", "code": "blocked", "message": "no"},
        "map_read": {"op": "read", "conv": "u:a:b", "seq": -3, "f": 0.25},
        "map_send": {"op": "send", "cid": "c", "chat": "user", "to": "b", "type": "txt", "body": {"msg": "x"}},
        "synced": {"op": "synced", "after": 0, "last": 2, "more": False, "msgs": [
            [3, mid, None, 1, 1, 5, 0, "a", "b", 0, "hi", None],
            {"op": "msg", "id": "x", "conv": "odd", "seq": 2, "ts": 6, "chat": "user", "from": "b", "to": "a",
             "type": "cmd", "body": {"action": "x"}, "hidden": True},
        ]},
    }
    for name, v in seeds.items():
        write("compact", name, mp(v))
    # compact_decode: the compact seeds, the client ops, and server ops as JSON (from_json's input).
    for name, v in seeds.items():
        write("compact_decode", name, mp(v))
    for op in ops:
        write("compact_decode", f"op_{ops.index(op):02}_{op['op']}", json.dumps(op).encode())
    srv = {
        "srv_msg": {"op": "msg", "id": "0190c9e4-8f1e-7000-8000-000000000001", "conv": "u:alice:bob", "seq": 7,
                    "useq": 3, "ts": 1763000000000, "chat": "user", "from": "alice", "to": "bob", "type": "txt",
                    "body": {"msg": "hi"}},
        "srv_ack": {"op": "ack", "cid": "c1", "id": "0190c9e4-8f1e-7000-8000-000000000001", "conv": "u:alice:bob",
                    "seq": 7, "ts": 1, "useq": 12},
        "srv_synced": {"op": "synced", "after": 0, "last": 1, "more": False, "msgs": [
            {"op": "msg", "id": "x", "conv": "g:t", "seq": 1, "ts": 5, "chat": "group", "from": "a", "to": "t",
             "type": "img", "body": {"url": "u"}, "ext": {"a": 1}, "recalled": True}]},
        "srv_error": {"op": "error", "cid": "c1", "code": "blocked", "message": "no"},
    }
    for name, v in srv.items():
        write("compact_decode", name, json.dumps(v).encode())


if __name__ == "__main__":
    main()
