"""Open-loop load through Fleetgate's gateway for bench/redeploy.sh.

Usage: redeploy_load.py HOST:PORT HOSTNAME RATE WEBSOCKETS STOPFILE

Sends GET / at RATE requests a second (spread over 32 keep-alive
connections, each request's latency counted from when it was due, so a
stall is not hidden), and keeps WEBSOCKETS WebSockets open: each sends a
frame every second and expects its echo, and after 4 to 10 s closes itself
and opens a new one (so sockets sit on every instance a redeploy replaces).
A socket closed or failing from the other side is an early close. Runs until
STOPFILE exists, then prints one JSON line.
"""

import asyncio
import base64
import json
import os
import random
import sys
import time

ADDR, HOSTNAME, RATE, SOCKETS, STOP = sys.argv[1:6]
HOST, PORT = ADDR.rsplit(":", 1)
PORT = int(PORT)
RATE = float(RATE)
SOCKETS = int(SOCKETS)
CONNECTIONS = 32

latencies = []
errors = []
ws = {"opened": 0, "closed_cleanly": 0, "early_closes": 0, "echoes": 0, "reasons": []}
stopping = False


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return status, body


async def http_worker(index):
    interval = CONNECTIONS / RATE
    due = time.monotonic() + index * interval / CONNECTIONS
    conn = None
    request = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOSTNAME).encode()
    while not stopping:
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        try:
            if conn is None:
                conn = await asyncio.open_connection(HOST, PORT)
            reader, writer = conn
            writer.write(request)
            status, body = await asyncio.wait_for(read_response(reader), 10)
            if status != 200:
                errors.append("%d %s" % (status, body[:80].decode("latin-1")))
            else:
                latencies.append(time.monotonic() - due)
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, e))
            if conn:
                conn[1].close()
            conn = None
        due += interval


def frame(payload):
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + data


async def read_frame(reader):
    b1, b2 = await reader.readexactly(2)
    n = b2 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return b1 & 0x0F, await reader.readexactly(n)


async def one_socket():
    reader, writer = await asyncio.open_connection(HOST, PORT)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (HOSTNAME, key)
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError("no upgrade: %s" % head.split(b"\r\n", 1)[0].decode())
    ws["opened"] += 1
    lifetime = time.monotonic() + random.uniform(4, 10)
    try:
        while not stopping and time.monotonic() < lifetime:
            payload = os.urandom(8).hex().encode()
            writer.write(frame(payload))
            opcode, data = await asyncio.wait_for(read_frame(reader), 5)
            if opcode == 8 or data != payload:
                raise RuntimeError("closed by the server" if opcode == 8 else "wrong echo")
            ws["echoes"] += 1
            await asyncio.sleep(1)
        writer.write(bytes([0x88, 0x80]) + os.urandom(4))
        await writer.drain()
        ws["closed_cleanly"] += 1
    finally:
        writer.close()


async def socket_worker():
    await asyncio.sleep(random.uniform(0, 2))
    while not stopping:
        try:
            await one_socket()
        except Exception as e:
            ws["early_closes"] += 1
            if len(ws["reasons"]) < 5:
                ws["reasons"].append("%s: %s" % (type(e).__name__, e))
            await asyncio.sleep(0.2)


async def main():
    global stopping
    tasks = [asyncio.create_task(http_worker(i)) for i in range(CONNECTIONS)]
    tasks += [asyncio.create_task(socket_worker()) for _ in range(SOCKETS)]
    started = time.monotonic()
    while not os.path.exists(STOP):
        await asyncio.sleep(0.1)
    stopping = True
    elapsed = time.monotonic() - started
    await asyncio.wait(tasks, timeout=15)
    lat = sorted(latencies)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 2) if lat else None

    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "requests": len(lat) + len(errors),
                "rate": round((len(lat) + len(errors)) / elapsed, 1),
                "errors": len(errors),
                "first_errors": errors[:5],
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "max_ms": pct(1.0),
                "websockets": ws,
            }
        )
    )


asyncio.run(main())
