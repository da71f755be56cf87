"""A small app for release tests and benchmarks of Fleetgate deployments.

Python standard library only. Listens on 127.0.0.1:$PORT (or the first
argument) and answers:
  GET /health          200 "ok" (503 while FAIL_HEALTH is set in the environment)
  GET /                200 "release <RELEASE> <BACKEND>", where BACKEND is what
                       GET / of $BACKEND_URL answered (a second service), if set
  WebSocket upgrade    echoes every text or binary frame back
On SIGTERM it stops accepting, closes idle keep-alive connections, lets
requests and WebSockets in progress finish for up to $GRACE seconds (default
30), then exits.
"""

import asyncio
import base64
import hashlib
import os
import signal
import sys
import urllib.request

RELEASE = os.environ.get("RELEASE", "0")
BACKEND = os.environ.get("BACKEND_URL")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
open_connections = set()
idle_writers = {}  # connections waiting for their next request: closed at SIGTERM
stopping = False


def backend_answer():
    if not BACKEND:
        return ""
    with urllib.request.urlopen(BACKEND, timeout=2) as r:
        return " " + r.read().decode()


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return method, path, headers


async def websocket(reader, writer, headers):
    key = headers["sec-websocket-key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
        ).encode()
    )
    await writer.drain()
    while True:
        b1, b2 = await reader.readexactly(2)
        opcode = b1 & 0x0F
        n = b2 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b2 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(n))
        for i in range(n):
            data[i] ^= mask[i % 4]
        if opcode == 8:
            writer.write(bytes([0x88, 0]))
            await writer.drain()
            return
        if opcode == 9:
            opcode = 10
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        writer.write(head + bytes(data))
        await writer.drain()


async def handle(reader, writer):
    task = asyncio.current_task()
    open_connections.add(task)
    try:
        while not stopping:
            idle_writers[task] = writer
            try:
                method, path, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                return
            finally:
                idle_writers.pop(task, None)
            if headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers)
                return
            if path == "/health":
                status, body = (
                    (503, "failing") if os.environ.get("FAIL_HEALTH") else (200, "ok")
                )
            else:
                try:
                    status, body = 200, "release %s%s" % (RELEASE, backend_answer())
                except Exception as e:  # the second service is away
                    status, body = 502, "backend: %s" % e
            data = body.encode()
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
                % (status, len(data), b"Connection: close\r\n" if stopping else b"")
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        open_connections.discard(task)
        writer.close()


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["PORT"])
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("listening on %d (release %s)" % (port, RELEASE), flush=True)
    await stop.wait()
    global stopping
    stopping = True
    server.close()
    for writer in list(idle_writers.values()):
        writer.close()
    grace = float(os.environ.get("GRACE", "30"))
    if open_connections:
        await asyncio.wait(list(open_connections), timeout=grace)


asyncio.run(main())
