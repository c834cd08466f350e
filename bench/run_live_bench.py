#!/usr/bin/env python3
"""Wattline live fan-out and dashboard benchmark (not a timed test; prints a table).

1. Live dashboards against ingest. Two kinds of dashboard stream, as the UI opens them:
   a device page (`/api/v1/live?device=…&batch=1`, every reading of one device, an event per
   commit) and an overview
   (`/api/v1/live?site=…&latest=1`, each changed device's power once a second).
   a. Closed loop: the server's ingest rate (line protocol, batches of --batch readings over
      --devices devices, --writers writers) with no stream, with --streams device pages and
      with --streams overviews open. Goal from the dashboard issue: the streams cost < 10 %
      of the rate. This is harsher than the goal's 10,000 readings/s: every stream filters
      the full rate.
   b. Paced at --rate readings/s (default 10,000) for --seconds: the server's CPU time per
      second with no stream and with each kind, and the events the streams received.
   Each scenario runs --runs times, interleaved; medians are printed.
2. First load of the overview with --overview-devices devices, each with an hour of
   per-minute readings and an energy counter, in headless Chromium (ui/e2e/overview_load.mjs,
   fresh context per load, logged in as a site owner): navigation until total power, energy,
   the ranked devices and the chart are on screen. Goal: < 1 s.

  bench/run_live_bench.py --bin target/release/wattline
  bench/run_live_bench.py --seconds 5 --streams 20 --runs 1        # quick check

Everything runs on 127.0.0.1 against a throwaway data dir; the server is stopped by PID.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
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


PASSWORD = "bench passphrase 2026"
HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup(addr, shown, written):
    """`shown` devices d0… for the overview, `written` devices w0… for the ingest runs (their
    own, so the runs' old timestamps are never out of order behind the overview's readings),
    all in site s, and a site owner."""
    assert call(addr, "POST", "/api/v1/sites", json.dumps({"id": "s", "name": "S", "timezone": "Europe/Zurich"}))[0] == 201
    for prefix, n in [("d", shown), ("w", written)]:
        for i in range(n):
            st, body = call(addr, "POST", "/api/v1/devices",
                            json.dumps({"id": f"{prefix}{i}", "name": f"Device {prefix}{i}", "site": "s"}))
            assert st == 201, body
    st, body = call(addr, "POST", "/api/v1/users",
                    json.dumps({"email": "owner@bench.test", "password": PASSWORD, "role": "owner", "sites": ["s"]}))
    assert st == 201, body


def fill_last_hour(addr, n):
    """An hour of per-minute readings per device, with a rising energy counter, ending now."""
    now = int(time.time())
    lines = []
    for m in range(60, -1, -1):
        ts = now - 60 * m
        for i in range(n):
            w = 100 + (i * 37) % 2000
            kwh = 1000 + i + (60 - m) * w / 60_000
            lines.append(f"m,device=d{i} power={w},voltage=230,energy={kwh:.4f} {ts}")
            if len(lines) == 5000:
                st, body = call(addr, "POST", "/write?precision=s", "\n".join(lines))
                assert st == 204, body
                lines = []
    if lines:
        st, body = call(addr, "POST", "/write?precision=s", "\n".join(lines))
        assert st == 204, body


class Clock:
    """Timestamps no two writes share, rising from twenty days ago: each series is written in
    order (the fast path), and repeated runs never write the same (device, ts) again."""

    def __init__(self):
        self.next = int(time.time() * 1000) - 20 * 86_400_000
        self.lock = threading.Lock()

    def take(self, n):
        with self.lock:
            start = self.next
            self.next += n
            return start


def ingest(addr, devices, batch, writers, seconds, clock, rate=None):
    """Readings stored per second: closed loop, or paced at `rate` readings/s in all."""
    stop = time.time() + seconds
    counts = [0] * writers
    interval = batch * writers / rate if rate else 0

    def writer(w):
        c = http.client.HTTPConnection(*addr, timeout=60)
        due = time.time()
        while time.time() < stop:
            base = clock.take(batch)
            body = "\n".join(f"m,device=w{(base + k) % devices} power={(base + k) % 5000} {base + k}" for k in range(batch))
            c.request("POST", "/write?precision=ms", body=body, headers={"Authorization": f"Token {ADMIN}"})
            r = c.getresponse()
            r.read()
            assert r.status == 204, r.status
            counts[w] += batch
            if rate:
                due += interval
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
        c.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return sum(counts) / (time.time() - t0)


def open_streams(addr, n, devices, kind):
    """`kind` is "device" (a device page each) or "overview" (the site, latest=1)."""
    socks, received, stop = [], [0] * n, threading.Event()
    for i in range(n):
        s = socket.create_connection(addr, timeout=10)
        # As the dashboard opens them: a device page with batch=1, an overview with latest=1.
        query = f"device=w{i % devices}&batch=1" if kind == "device" else "site=s&latest=1"
        s.sendall(f"GET /api/v1/live?{query} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Token {ADMIN}\r\nAccept: text/event-stream\r\n\r\n".encode())
        socks.append(s)
    # Rows delivered: readings on a device page, device entries on an overview. A row never
    # spans two recv() calls often enough to matter; one that does is missed, not doubled.
    marker = b'"device":'

    def reader(i):
        socks[i].settimeout(0.5)
        while not stop.is_set():
            try:
                b = socks[i].recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not b:
                return
            received[i] += b.count(marker)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def close():
        stop.set()
        for s in socks:
            s.close()
        return sum(received)

    return close


def scenario(proc, addr, a, clock, kind, rate):
    """One measurement: (readings/s, server CPU s per s, rows the streams received)."""
    close = open_streams(addr, a.streams, a.devices, kind) if kind else None
    time.sleep(1)
    cpu0, t0 = cpu_seconds(proc.pid), time.time()
    got = ingest(addr, a.devices, a.batch, a.writers, a.seconds, clock, rate)
    cpu = (cpu_seconds(proc.pid) - cpu0) / (time.time() - t0)
    time.sleep(1.5)
    events = close() if close else 0
    return got, cpu, events


def overview_load(addr, a):
    ui = os.path.join(HERE, "..", "ui")
    if not os.path.exists(os.path.join(ui, "node_modules", "playwright-core")):
        return None, "ui/node_modules missing (npm ci in ui/)"
    env = dict(os.environ, WATTLINE_URL=f"http://{addr[0]}:{addr[1]}", BENCH_EMAIL="owner@bench.test",
               BENCH_PASSWORD=PASSWORD, BENCH_RUNS=str(a.load_runs))
    out = subprocess.run(["node", "e2e/overview_load.mjs"], cwd=ui, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return None, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "wattline"))
    ap.add_argument("--devices", type=int, default=100, help="devices written to and watched")
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--overview-devices", type=int, default=1000)
    ap.add_argument("--load-runs", type=int, default=5)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="wl-live-bench-")
    proc, addr = start(a.bin, os.path.join(data, "d"))
    kinds = [None, "device", "overview"]
    closed = {k: [] for k in kinds}
    paced = {k: [] for k in kinds}
    try:
        setup(addr, a.overview_devices, a.devices)
        fill_last_hour(addr, a.overview_devices)
        load, load_error = overview_load(addr, a)
        clock = Clock()
        ingest(addr, a.devices, a.batch, a.writers, 2, clock)  # warm up
        # Paced runs first: a closed-loop run leaves rollups to flush, which would land in the
        # next measurement's CPU time.
        for _ in range(a.runs):
            for k in kinds:
                paced[k].append(scenario(proc, addr, a, clock, k, a.rate))
        for _ in range(a.runs):
            for k in kinds:
                closed[k].append(scenario(proc, addr, a, clock, k, None))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)

    med = lambda xs: statistics.median(xs)
    name = {None: "no stream", "device": f"{a.streams} device pages", "overview": f"{a.streams} overviews (latest=1)"}
    try:
        load_avg = os.getloadavg()[0]
    except OSError:
        load_avg = float("nan")
    print(f"load average at the end: {load_avg:.2f}; {a.runs} runs each, medians\n")
    print("| closed loop | readings/s | vs no stream | server CPU s/s | rows received per run |")
    print("|---|---|---|---|---|")
    base = med([r[0] for r in closed[None]])
    for k in kinds:
        rate = med([r[0] for r in closed[k]])
        print(f"| {name[k]} | {rate:,.0f} | {(rate - base) / base * 100:+.1f} % | {med([r[1] for r in closed[k]]):.2f} | {med([r[2] for r in closed[k]]):,.0f} |")
    print()
    # The streams' extra CPU as ingest capacity: how many readings/s the server could have
    # stored with that CPU (at its closed-loop CPU per reading), as a share of that rate.
    full_cpu = med([r[1] for r in closed[None]])
    print(f"| paced at {a.rate:,.0f} readings/s | readings/s | server CPU s/s | extra CPU vs no stream "
          f"| as share of the full ingest rate | rows received per run |")
    print("|---|---|---|---|---|---|")
    cpu0 = med([r[1] for r in paced[None]])
    for k in kinds:
        cpu = med([r[1] for r in paced[k]])
        print(f"| {name[k]} | {med([r[0] for r in paced[k]]):,.0f} | {cpu:.3f} | {(cpu - cpu0) * 1000:+.0f} ms/s "
              f"| {(cpu - cpu0) / full_cpu * 100:.1f} % | {med([r[2] for r in paced[k]]):,.0f} |")
    print()
    if load:
        ms = [r["ms"] for r in load["runs"]]
        summ = [r["summary_ms"] for r in load["runs"] if r["summary_ms"] is not None]
        print(f"| overview first load, {a.overview_devices} devices, headless Chromium | median {load['median_ms']} ms "
              f"(runs {', '.join(map(str, ms))}); summary request median {med(summ):.0f} ms | goal < 1000 ms |")
    else:
        print(f"overview first load not measured: {load_error}")


if __name__ == "__main__":
    main()
