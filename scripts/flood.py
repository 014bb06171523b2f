#!/usr/bin/env python3
"""Floods a local Ephemera server the way the internet will, for a bounded
time, while the load generator measures everyone else's latency (see
scripts/floods.sh). Standard library only; loopback only.

Attacks, all at once:
  frames      one authenticated socket sending pings as fast as it can
  connections many sockets upgraded with a bad token, held open
  slow        handshakes that send a header a byte at a time
  headers     requests with oversized headers
  logins      POST /api/v1/sessions in a loop with a wrong password

Prints one line per attack with what the server answered.
"""
import argparse
import asyncio
import base64
import collections
import json
import os
import time

counts = collections.Counter()


async def http(host, port, raw):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return line.decode(errors="replace").split(" ")[1] if line else "closed"


def ws_request(host, port, token):
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET /api/v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{auth}\r\n"
    ).encode()


def ws_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + mask + masked


async def frames(host, port, token, until):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(ws_request(host, port, token))
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    ping = ws_text(b'{"type":"ping"}')

    async def drain():
        while time.time() < until:
            data = await reader.read(65536)
            if not data:
                counts["frames: closed by server"] += 1
                return
            counts["frames: bytes answered"] += len(data)

    task = asyncio.create_task(drain())
    while time.time() < until and not task.done():
        writer.write(ping * 100)
        counts["frames: pings sent"] += 100
        await writer.drain()
        await asyncio.sleep(0.001)
    writer.close()
    task.cancel()


async def connections(host, port, n, until):
    held = []
    for _ in range(n):
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(ws_request(host, port, "bad-token"))
            await writer.drain()
            held.append(writer)
            counts["connections: opened"] += 1
        except OSError:
            counts["connections: refused"] += 1
    await asyncio.sleep(max(0, until - time.time()))
    for w in held:
        w.close()


async def slow(host, port, n, until):
    async def one():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for b in b"GET /api/v1/conversations HTTP/1.1\r\nHost: x\r\n":
                if time.time() > until:
                    break
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(1)
            counts["slow: never finished"] += 1
        except (OSError, ConnectionError):
            counts["slow: cut by server"] += 1

    await asyncio.gather(*(one() for _ in range(n)))


async def headers(host, port, until):
    big = "x" * 200_000
    while time.time() < until:
        try:
            status = await http(
                host, port,
                f"GET /api/v1/conversations HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode(),
            )
        except (OSError, ConnectionError):
            status = "reset"
        counts[f"headers: {status}"] += 1
        await asyncio.sleep(0.01)


async def logins(host, port, until):
    body = json.dumps({"username": "victim_user", "password": "not-the-password"})
    while time.time() < until:
        try:
            status = await http(
                host, port,
                (f"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}").encode(),
            )
        except (OSError, ConnectionError):
            status = "reset"
        counts[f"logins: {status}"] += 1


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True, help="a valid token for the frame flood")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--slow", type=int, default=200)
    a = p.parse_args()
    assert a.host.startswith("127.") or a.host == "localhost", "loopback only"
    until = time.time() + a.seconds
    await asyncio.gather(
        frames(a.host, a.port, a.token, until),
        connections(a.host, a.port, a.connections, until),
        slow(a.host, a.port, a.slow, until),
        headers(a.host, a.port, until),
        logins(a.host, a.port, until),
    )
    for k, v in sorted(counts.items()):
        print(f"{k}: {v}")


if __name__ == "__main__":
    asyncio.run(main())
