#!/usr/bin/env python3
"""Memory soak: 1,000 devices at 1 Hz in real time; is the server's RSS steady?

  python3 bench/soak_rss.py --minutes 60            # the issue's target: an hour
  python3 bench/soak_rss.py --minutes 10 --backend postgres

Starts the release binary on a free port with a fresh data dir, registers the devices,
then every second POSTs one line-protocol batch holding one reading per device, stamped
with the current second (household profiles from ../shared/bench/gen_readings.py). Samples
VmRSS every 10 s and prints the series, and the growth after a warm-up minute. All traffic
goes to 127.0.0.1; the loop stops after --minutes.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WATTLINE_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(SHARED / "bench"))
from gen_readings import Meter  # noqa: E402

TOKEN = "soak-admin-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    ap.add_argument("--binary", default=str(ROOT / "target/release/wattline"))
    ap.add_argument("--server-log", help="write the server's stderr here")
    ap.add_argument("--fast", action="store_true",
                    help="diagnostic: send the simulated seconds back to back instead of in real "
                         "time (an hour of data in minutes); not the issue's measurement")
    a = ap.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="wl-soak-")
    # No MQTT listener: a Mosquitto on 1883 would stop the server, and only HTTP is measured.
    cmd = [a.binary, "serve", "--http", f"127.0.0.1:{port}", "--mqtt", "off", "--data-dir", data]
    db = None
    if a.backend == "postgres":
        db = f"wl_soak_{os.getpid()}"
        subprocess.run(["psql", f"{a.pg}/postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
        cmd += ["--database", f"{a.pg}/{db}"]
    env = dict(os.environ, WATTLINE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    log = open(a.server_log, "wb") if a.server_log else subprocess.DEVNULL
    srv = subprocess.Popen(cmd, env=env, stderr=log)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        hdr = {"Authorization": f"Token {TOKEN}"}
        for d in range(1, a.devices + 1):
            conn.request("POST", "/api/v1/devices", json.dumps({"id": str(d), "name": f"meter {d}"}), hdr)
            r = conn.getresponse()
            r.read()
            assert r.status == 201, r.status
        start = int(time.time())
        meters = [Meter(d, 42, start, 1.0) for d in range(1, a.devices + 1)]
        samples = []
        deadline = time.time() + a.minutes * 60
        sent = 0
        tick = start
        if a.fast:
            # Simulated time starts an hour-aligned day back, so the data stays in the past.
            start = tick = (int(time.time()) // 3600 - 24) * 3600
            meters = [Meter(d, 42, start, 1.0) for d in range(1, a.devices + 1)]
        while (tick - start < a.minutes * 60) if a.fast else (time.time() < deadline):
            lines = []
            for m in meters:
                v, i, p, e = m.step(tick)
                lines.append(f"energy,device={m.id} voltage={v:.2f},current={i:.3f},power={p:.1f},energy={e / 1000:.6f} {tick}")
            conn.request("POST", "/write?precision=s", "\n".join(lines), hdr)
            r = conn.getresponse()
            body = r.read()
            if r.status != 204:
                raise SystemExit(f"write failed: {r.status} {body[:300]!r}")
            sent += len(lines)
            if (tick - start) % 10 == 0:
                samples.append((tick - start, rss_kib(srv.pid)))
                print(f"t={tick - start:5d}s sent={sent} rss={samples[-1][1] / 1024:.1f} MiB", flush=True)
            tick += 1
            if not a.fast:
                time.sleep(max(0.0, tick - time.time()))
        warm = [kib for t, kib in samples if t >= 60] or [kib for _, kib in samples]
        out = {
            "backend": a.backend, "devices": a.devices, "seconds": tick - start, "readings": sent,
            "rss_mib_after_warmup": round(warm[0] / 1024, 1), "rss_mib_max": round(max(warm) / 1024, 1),
            "rss_mib_last": round(warm[-1] / 1024, 1),
            "growth_mib_after_warmup": round((warm[-1] - warm[0]) / 1024, 1),
        }
        print(json.dumps(out))
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
        if db:
            subprocess.run(["psql", f"{a.pg}/postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])


if __name__ == "__main__":
    main()
