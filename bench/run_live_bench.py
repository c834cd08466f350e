#!/usr/bin/env python3
"""Wattline live fan-out and dashboard benchmark (not a timed test; prints a table).

1. Ingest with and without dashboards: the server's closed-loop ingest rate (line protocol,
   batches of --batch readings over --devices devices, --writers concurrent writers) for
   --seconds with no live stream open, then again with --streams streams open on
   /api/v1/live?device=… (one device each, as device pages are), each read in bulk by a
   thread. Goal from the dashboard issue: the streams cost < 10 % of the rate.
2. First load of the overview with --overview-devices devices: the time for what the page
   asks first (GET /, its assets, /auth/me, /sites, /devices). Goal: < 1 s.

  bench/run_live_bench.py --bin target/release/wattline
  bench/run_live_bench.py --seconds 5 --streams 20        # quick check

Everything runs on 127.0.0.1 against a throwaway data dir; the server is stopped by PID.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ADMIN = "bench-admin-token-0123456789"


def start(binary, data):
    env = dict(os.environ, WATTLINE_ADMIN_TOKEN=ADMIN, RUST_LOG="warn,wattline=info")
    proc = subprocess.Popen([binary, "serve", "--http", "127.0.0.1:0", "--mqtt", "off", "--data-dir", data],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening on http://([0-9.:]+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            host, port = m.group(1).rsplit(":", 1)
            return proc, (host, int(port))
    proc.kill()
    sys.exit("the server did not start")


def call(addr, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(*addr, timeout=60)
    h = {"Authorization": f"Token {ADMIN}"}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def setup(addr, n):
    assert call(addr, "POST", "/api/v1/sites", json.dumps({"id": "s", "name": "S", "timezone": "UTC"}))[0] == 201
    for i in range(n):
        st, body = call(addr, "POST", "/api/v1/devices", json.dumps({"id": f"d{i}", "name": f"Device {i}", "site": "s"}))
        assert st == 201, body


def ingest(addr, devices, batch, writers, seconds):
    """Readings stored per second, closed loop."""
    stop = time.time() + seconds
    counts = [0] * writers

    def writer(w):
        c = http.client.HTTPConnection(*addr, timeout=60)
        # Each writer its own hour of the last day, so no two readings share a timestamp.
        base = int(time.time() * 1000) - 86_400_000 + w * 3_600_000
        k = 0
        while time.time() < stop:
            lines = []
            for _ in range(batch):
                k += 1
                lines.append(f"m,device=d{k % devices} power={k % 5000} {base + k}")
            c.request("POST", "/write?precision=ms", body="\n".join(lines),
                      headers={"Authorization": f"Token {ADMIN}"})
            r = c.getresponse()
            r.read()
            assert r.status == 204, r.status
            counts[w] += batch
        c.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return sum(counts) / (time.time() - t0)


def open_streams(addr, n, devices):
    socks, received, stop = [], [0] * n, threading.Event()
    for i in range(n):
        s = socket.create_connection(addr, timeout=10)
        s.sendall(f"GET /api/v1/live?device=d{i % devices} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Token {ADMIN}\r\nAccept: text/event-stream\r\n\r\n".encode())
        socks.append(s)

    def reader(i):
        socks[i].settimeout(0.5)
        while not stop.is_set():
            try:
                b = socks[i].recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not b:
                return
            received[i] += b.count(b"event: reading")

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def close():
        stop.set()
        for s in socks:
            s.close()
        return sum(received)

    return close


def first_load(addr):
    t0 = time.time()
    st, index = call(addr, "GET", "/", headers={"Authorization": ""})
    assets = re.findall(rb'(?:src|href)="(/assets/[^"]+)"', index)
    for a in assets:
        call(addr, "GET", a.decode())
    for p in ["/api/v1/auth/me", "/api/v1/sites", "/api/v1/devices"]:
        st, _ = call(addr, "GET", p)
        assert st == 200, (p, st)
    return time.time() - t0, len(assets) > 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "wattline"))
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--overview-devices", type=int, default=1000)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="wl-live-bench-")
    proc, addr = start(a.bin, os.path.join(data, "d"))
    try:
        setup(addr, max(a.devices, a.overview_devices))
        ingest(addr, a.devices, a.batch, a.writers, 2)  # warm up: series exist, caches full
        base = ingest(addr, a.devices, a.batch, a.writers, a.seconds)
        close = open_streams(addr, a.streams, a.devices)
        time.sleep(1)
        with_streams = ingest(addr, a.devices, a.batch, a.writers, a.seconds)
        time.sleep(1)
        events = close()
        load_s, has_ui = first_load(addr)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)
    cost = (base - with_streams) / base * 100
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(f"| ingest, no streams | {base:,.0f} readings/s | |")
    print(f"| ingest, {a.streams} live streams | {with_streams:,.0f} readings/s ({events:,} events delivered) | |")
    print(f"| cost of the streams | {cost:.1f} % | < 10 % |")
    print(f"| overview first load, {a.overview_devices} devices{'' if has_ui else ' (no UI embedded)'} | {load_s * 1000:.0f} ms | < 1000 ms |")


if __name__ == "__main__":
    main()
