#!/usr/bin/env python3
"""The simulator's own ceiling per protocol: how many readings a second `wattline simulate`
generates, logs (CSV, fsynced), sends and gets acknowledged, when the other side acknowledges
at once.

The other side is `instant_sink` (crates/simulator/examples/instant_sink.rs): HTTP, MQTT 3.1.1
and the socket-meter protocol on loopback ports, answering every request, PUBLISH and message
immediately and storing nothing. So the figures are the simulator's limits (and the
machine's), not Wattline's. `--wattline` adds runs against a real `wattline serve` (release
build, embedded store), where the server's ingest is part of what is measured.

  python3 bench/run_sim_bench.py                       # every protocol, about 2 minutes
  python3 bench/run_sim_bench.py --protocols http-json,tcp --scale 0.2
  python3 bench/run_sim_bench.py --wattline            # plus runs against Wattline itself

Every run uses --fast (no real-time pacing), a fresh state dir, and stops by itself (--count);
each has a time limit. All traffic goes to 127.0.0.1. Results: stdout, and
bench/results/sim-latest.md (+ a JSON line per run in bench/results/sim-<time>.jsonl).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
ADMIN = "wl-sim-bench-admin-token-0123456789"

# protocol: (devices, readings per device, profile). Per-device-connection protocols use
# fewer devices: each holds its own connection.
RUNS = {
    "null": (1000, 3000, "household"),
    "http-json": (1000, 1500, "household"),
    "http-lp": (1000, 1500, "household"),
    "mqtt-gateway": (1000, 1500, "household"),
    "mqtt-native": (500, 1000, "household"),
    "tasmota": (500, 400, "household"),
    "shelly": (500, 400, "household"),
    "clemap": (300, 500, "building"),
    "tcp": (200, 500, "household"),
}
WATTLINE_RUNS = ["http-json", "http-lp", "mqtt-gateway", "mqtt-native", "tcp"]
# Against Wattline, fewer readings: its ingest, not the simulator, sets the pace.
WATTLINE_SCALE = 0.4
RUN_LIMIT_S = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build():
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    for args in (["build", "--release", "-p", "wattline"],
                 ["build", "--release", "-p", "wattline-simulator", "--example", "instant_sink"]):
        subprocess.run(["nice", "-n", "19", "cargo", *args], cwd=REPO, env=env, check=True)
    return TARGET / "release" / "wattline", TARGET / "release" / "examples" / "instant_sink"


def proc_cpu_s(pid):
    """utime + stime of a running process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_sink(sink_bin):
    ports = [free_port() for _ in range(3)]
    p = subprocess.Popen([str(sink_bin), *map(str, ports)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        sys.exit(f"instant_sink did not start: {line!r}")
    return p, ports


def start_wattline(wattline_bin, data_dir):
    ports = [free_port() for _ in range(3)]
    log = open(data_dir / "server.log", "w")
    p = subprocess.Popen(
        [str(wattline_bin), "serve", "--http", f"127.0.0.1:{ports[0]}", "--mqtt",
         f"127.0.0.1:{ports[1]}", "--tcp", f"127.0.0.1:{ports[2]}", "--data-dir",
         str(data_dir / "data")],
        env=dict(os.environ, WATTLINE_ADMIN_TOKEN=ADMIN, RUST_LOG="warn,wattline=info"),
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
            return p, ports
        except OSError:
            time.sleep(0.2)
    p.kill()
    sys.exit("wattline did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def simulate(wattline_bin, ports, protocol, devices, count, profile, state):
    args = [str(wattline_bin), "simulate", "--fast", "--quiet",
            "--http", f"http://127.0.0.1:{ports[0]}", "--mqtt", f"127.0.0.1:{ports[1]}",
            "--tcp", f"127.0.0.1:{ports[2]}", "--admin-token", ADMIN,
            "--protocol", protocol, "--profile", profile, "--devices", str(devices),
            "--count", str(count), "--rate", "1", "--seed", "1", "--give-up-after", "60s",
            "--state-dir", str(state)]
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives the simulator's own CPU time (children of this script include the sink).
    deadline = t0 + RUN_LIMIT_S
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    wall = time.time() - t0
    out, err = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"simulate {protocol} failed ({p.returncode}):\n{err}")
    summary = json.loads(out.strip().splitlines()[-1])
    return summary, wall, ru.ru_utime + ru.ru_stime


def one(target, wattline_bin, sink_bin, protocol, scale, tmp):
    devices, count, profile = RUNS[protocol]
    if target == "wattline":
        scale *= WATTLINE_SCALE
    count = max(10, int(count * scale))
    state = tmp / f"{target}-{protocol}"
    if target == "sink":
        server, ports = start_sink(sink_bin)
    else:
        (tmp / f"srv-{protocol}").mkdir()
        server, ports = start_wattline(wattline_bin, tmp / f"srv-{protocol}")
    server_cpu0 = proc_cpu_s(server.pid)
    try:
        summary, wall, sim_cpu = simulate(wattline_bin, ports, protocol, devices, count,
                                          profile, state)
        server_cpu = proc_cpu_s(server.pid) - server_cpu0
    finally:
        stop(server)
    rows = summary["acknowledged"]
    msgs = devices * count
    # Registration (creating 1000 devices, each a durable write on Wattline) is not what is
    # measured: rows/s is over the time after it.
    send_s = max(summary["elapsed_s"] - summary["registration_s"], 1e-3)
    res = {
        "target": target, "protocol": protocol, "devices": devices,
        "readings_per_device": count, "rows": rows, "messages": msgs,
        "wall_s": round(wall, 2), "elapsed_s": round(summary["elapsed_s"], 2),
        "registration_s": round(summary["registration_s"], 2), "send_s": round(send_s, 2),
        "rows_per_s": round(rows / send_s),
        "sim_cpu_s": round(sim_cpu, 2),
        "sim_cpu_us_per_row": round(sim_cpu / max(rows, 1) * 1e6, 2),
        "server_cpu_s": round(server_cpu, 2),
        "errors": summary["errors"], "resent": summary["resent"],
    }
    shutil.rmtree(state, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", default=",".join(RUNS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply readings per device")
    ap.add_argument("--wattline", action="store_true", help="also run against wattline serve")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if a.no_build:
        wattline_bin = TARGET / "release" / "wattline"
        sink_bin = TARGET / "release" / "examples" / "instant_sink"
    else:
        wattline_bin, sink_bin = build()
    protocols = [p for p in a.protocols.split(",") if p]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / f"sim-{stamp}.jsonl"
    load_before = uptime()
    results = []
    with tempfile.TemporaryDirectory(prefix="wl-sim-bench-") as t:
        tmp = Path(t)
        plan = [("sink", p) for p in protocols]
        if a.wattline:
            plan += [("wattline", p) for p in protocols if p in WATTLINE_RUNS]
        for target, p in plan:
            r = one(target, wattline_bin, sink_bin, p, a.scale, tmp)
            results.append(r)
            print(json.dumps(r), flush=True)
            with open(jsonl, "a") as f:
                f.write(json.dumps(r) + "\n")
    load_after = uptime()
    lines = [
        "# Simulator ceiling per protocol",
        "",
        f"`python3 bench/run_sim_bench.py {' '.join(sys.argv[1:])}`, {stamp}. "
        "Each run: `wattline simulate --fast` (release build), households (clemap: three-phase "
        "buildings, 3 rows per reading), rate 1 Hz of simulated time, every reading logged to "
        "the group CSV and fsynced before it is sent, QoS 1 with PUBACK awaited on MQTT, one "
        "answer awaited per socket-meter message. `sink` is `instant_sink` (acknowledges at "
        "once, stores nothing); `wattline` is `wattline serve` with the embedded store. "
        "rows/s = acknowledged rows / (run time - registration). CPU figures cover the whole "
        "run. Per-device-connection protocols (mqtt-native, tasmota, shelly, clemap, tcp) "
        "open one connection per device.",
        "",
        f"- load before: `{load_before}`",
        f"- load after: `{load_after}`",
        "",
        "| target | protocol | devices | rows | rows/s | simulator CPU µs/row | simulator CPU s | other side CPU s | send s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['target']} | {r['protocol']} | {r['devices']} | {r['rows']:,} | "
            f"{r['rows_per_s']:,} | {r['sim_cpu_us_per_row']} | {r['sim_cpu_s']} | "
            f"{r['server_cpu_s']} | {r['send_s']} | {r['wall_s']} |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    (out_dir / "sim-latest.md").write_text(text)


if __name__ == "__main__":
    main()
