#!/usr/bin/env python3
"""Wattline TCP socket-meter benchmark: readings/s stored and server CPU per reading with many
meters connected at once, each speaking as the city prototype's meter does.

Per meter count (and pace): fresh data dir, `wattline serve --mqtt off --tcp 127.0.0.1:0`,
enrollment opened on the default site (UTC), then bench/tcpload (Rust, tokio; built into
$CARGO_TARGET_DIR/tcpload when missing):
  1. connects every meter (at most 256 connects in flight), then
  2. enrolls each with {"id": 0} (one device created per meter; not timed), then
  3. for --seconds, each meter sends a reading and waits for its answer before the next,
     either at once (closed loop: what the server can take) or every --paced-ms (a real
     meter's pace: the CPU cost at a realistic load).
Only phase 3 is measured: readings stored = the server's wattline_tcp_readings_total
difference, rate = stored / wall time, CPU = the server process's utime+stime over the phase
(cpu_sampler.TreeCPU). The client's answered count must equal the stored count, and one
meter's export is checked.

  bench/run_tcp_bench.py                         # 1,000 and 10,000 meters, closed loop + 1 Hz
  bench/run_tcp_bench.py --meters 1000 --seconds 5 --no-paced     # quick check

The markdown table goes to stdout, bench/results/tcp-<time>.md and bench/results/tcp-latest.md;
one JSON line per run to bench/results/tcp-<time>.jsonl (git-ignored). All traffic goes to
127.0.0.1; every run has a deadline, and every process started here is stopped by its PID.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_bench as RB  # noqa: E402  (shared helpers: lock, Api, metrics, server env, build)

from cpu_sampler import TreeCPU  # noqa: E402

REPO = RB.REPO
log = RB.log
_TCP = re.compile(r"listening on tcp://(127\.0\.0\.1:(\d+))")


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR") or (REPO / "target"))


def ensure_load_bin(path):
    if path:
        return Path(path)
    tdir = target_dir() / "tcpload"
    binary = tdir / "release" / "tcpload"
    r = subprocess.run(["cargo", "build", "--release"], cwd=HERE / "tcpload",
                       env=dict(os.environ, CARGO_TARGET_DIR=str(tdir)),
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or not binary.exists():
        sys.exit("building bench/tcpload failed:\n" + r.stderr[-2000:])
    return binary


def vm_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def start_server(a, datadir, logpath, meters):
    cmd = [a.binary, "serve", "--http", "127.0.0.1:0", "--mqtt", "off", "--tcp", "127.0.0.1:0",
           "--data-dir", str(datadir)]
    env = RB.server_env()
    env["WATTLINE_TCP_MAX_CONNECTIONS"] = str(meters + 100)
    logf = open(logpath, "w")
    p = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, cwd=REPO)
    t = time.time()
    while time.time() - t < 60 and p.poll() is None:
        time.sleep(0.1)
        text = RB._ANSI.sub("", Path(logpath).read_text(errors="replace"))
        h, c = RB._LISTEN.search(text), _TCP.search(text)
        if h and c:
            return p, int(h.group(2)), c.group(1), logf
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)
    raise RuntimeError("wattline did not start; log tail:\n"
                       + "\n".join(Path(logpath).read_text(errors="replace").splitlines()[-20:]))


def run_one(a, meters, interval_ms, run, work):
    tag = f"m{meters}-i{interval_ms}-r{run}"
    datadir, logpath = work / f"data-{tag}", work / f"server-{tag}.log"
    out = {"tool": "wattline-tcp", "meters": meters, "interval_ms": interval_ms, "run": run,
           "seconds": a.seconds}
    p, hport, tcp_addr, logf = start_server(a, datadir, logpath, meters)
    try:
        api = RB.Api(hport)
        st, body = api.req("PUT", "/api/v1/sites/default/tcp-enrollment",
                           body=b'{"open": true}', headers={"Content-Type": "application/json"})
        if st != 200:
            raise RuntimeError(f"opening enrollment: {st} {body[:200]!r}")
        out["loadavg_before"] = RB.loadavg()
        cmd = [str(a.load_bin), "--addr", tcp_addr, "--meters", str(meters),
               "--seconds", str(a.seconds), "--interval-ms", str(interval_ms),
               "--workers", str(a.client_workers)]
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # A deadline for the whole client: connect + enroll + load + slack.
        limit = time.time() + a.seconds + a.timeout
        killer = threading.Timer(max(1.0, limit - time.time()), client.kill)
        killer.start()
        marks, result, cpu = {}, None, None
        try:
            for ln in client.stdout:
                ln = ln.strip()
                if ln == "PHASE connect":
                    marks["rss_idle_kb"] = vm_rss_kb(p.pid)
                    marks["t_connect"] = time.perf_counter()
                elif ln == "PHASE load":
                    marks["rss_connected_kb"] = vm_rss_kb(p.pid)
                    marks["m0"] = RB.metrics(api)
                    cpu = TreeCPU(p.pid).start()
                    marks["t0"] = time.perf_counter()
                elif ln == "PHASE done":
                    marks["t1"] = time.perf_counter()
                    marks["cpu_s"] = cpu.stop()
                    cpu = None
                    marks["m1"] = RB.metrics(api)
                    marks["rss_loaded_kb"] = vm_rss_kb(p.pid)
                elif ln.startswith("{"):
                    result = json.loads(ln)
            client.wait(timeout=30)
        finally:
            killer.cancel()
            if cpu is not None:
                cpu.stop()
            if client.poll() is None:
                client.kill()
                client.wait()
        if client.returncode != 0 or result is None or "t1" not in marks:
            raise RuntimeError(f"tcpload failed (rc {client.returncode}): "
                               f"{client.stderr.read()[-1500:]}")
        key = "wattline_tcp_readings_total"
        stored = int(marks["m1"].get(key, 0) - marks["m0"].get(key, 0))
        wall = marks["t1"] - marks["t0"]
        out.update({
            "stored": stored,
            "answered_ok": result["answered_ok"],
            "refused": result["refused"],
            "failed": result["failed"],
            "wall_s": round(wall, 3),
            "rate": round(stored / wall, 1) if wall > 0 else 0.0,
            "cpu_s": marks["cpu_s"],
            "cpu_us_per_reading": round(marks["cpu_s"] * 1e6 / stored, 2) if stored else None,
            "client_latency_ms": result["latency_ms"],
            "connect_s": result["connect_s"],
            "enroll_s": result["enroll_s"],
            "rss_idle_mib": round((marks["rss_idle_kb"] or 0) / 1024, 1),
            "rss_connected_mib": round((marks["rss_connected_kb"] or 0) / 1024, 1),
            "rss_loaded_mib": round((marks["rss_loaded_kb"] or 0) / 1024, 1),
            "peak_rss_mib": round((RB.vm_hwm_kb(p.pid) or 0) / 1024, 1),
            "loadavg_after": RB.loadavg(),
        })
        conn_kb = ((marks["rss_connected_kb"] or 0) - (marks["rss_idle_kb"] or 0)) / meters
        out["rss_per_connection_kb"] = round(conn_kb, 1)
        if stored != result["answered_ok"]:
            out["check"] = f"MISMATCH: stored {stored} != answered ok {result['answered_ok']}"
        else:
            # One meter's readings are in storage, not only counted.
            st, body = api.req("GET", "/api/v1/export?device=tcp-1&from=0&to=4102444800000")
            rows = len(body.decode().splitlines()) - 1 if st == 200 else -1
            out["check"] = "ok" if rows > 0 else f"export of tcp-1 returned {st}, {rows} rows"
        api.close()
    finally:
        rc, stop_s = RB.stop_server(p, 120)
        logf.close()
        out["stop"] = {"rc": rc, "s": round(stop_s, 2)}
        if not a.keep:
            shutil.rmtree(datadir, ignore_errors=True)
    return out


def fmt_row(r):
    lat = r["client_latency_ms"]
    pace = "closed loop" if r["interval_ms"] == 0 else f"every {r['interval_ms']} ms"
    return (f"| {r['meters']:,} | {pace} | {r['stored']:,} | {r['rate']:,.0f} | "
            f"{r['cpu_us_per_reading']} | {lat['p50']:.1f} / {lat['p99']:.1f} | "
            f"{r['rss_per_connection_kb']:.1f} | {r['peak_rss_mib']:.0f} MiB | "
            f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f} | {r['check']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", default="1000,10000", help="comma list of meter counts")
    ap.add_argument("--seconds", type=int, default=20, help="length of the measured phase")
    ap.add_argument("--paced-ms", type=int, default=1000,
                    help="interval of the paced runs (a real meter sends about once a second)")
    ap.add_argument("--no-paced", action="store_true", help="closed-loop runs only")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--client-workers", type=int, default=1,
                    help="tokio worker threads of the load client (it shares the 2 cores)")
    ap.add_argument("--binary", default=str(target_dir() / "release" / "wattline"))
    ap.add_argument("--load-bin", default=None, help="tcpload binary (built when missing)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--timeout", type=float, default=240,
                    help="deadline per run beyond --seconds (connect, enroll, slack)")
    ap.add_argument("--workdir", default="/tmp/bench/wattline-tcp")
    ap.add_argument("--lock-wait", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="keep data dirs")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, RB.on_sigterm)
    # The same lock as run_bench.py: no two benchmarks share the machine.
    lock = RB.take_lock(Path(a.workdir).parent / "run_bench.lock", a.lock_wait)  # noqa: F841
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(a.workdir) / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_all(a, stamp, work)
    finally:
        if not a.keep:
            (work / "wattline-under-test").unlink(missing_ok=True)


def run_all(a, stamp, work):
    up0 = RB.uptime()
    log(f"start: {up0}")
    build_state = RB.build(a)
    src = Path(a.binary)
    binary = work / "wattline-under-test"
    shutil.copy2(src, binary)  # other sessions rebuild the target dir while we measure
    a.binary = str(binary)
    a.load_bin = ensure_load_bin(a.load_bin)
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = [ln[3:] for ln in subprocess.run(
        ["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=REPO,
        capture_output=True, text=True).stdout.splitlines()]
    res_dir = Path(a.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    jsonl = res_dir / f"tcp-{stamp}.jsonl"

    def emit(r):
        print(json.dumps(r, default=str), flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(r, default=str) + "\n")

    emit({"tool": "meta", "started": stamp, "uptime_start": up0, "git": git,
          "dirty_files": dirty, "build": build_state, "binary_sha256_16": sha,
          "seconds": a.seconds})
    configs = []
    for m in [int(x) for x in a.meters.split(",")]:
        configs.append((m, 0))
        if not a.no_paced:
            configs.append((m, a.paced_ms))
    results = []
    for run in range(1, a.runs + 1):
        for meters, interval in configs:
            log(f"tcp: {meters} meters, interval {interval} ms, run {run} ({RB.uptime()})")
            r = run_one(a, meters, interval, run, work)
            emit(r)
            results.append(r)
    up1 = RB.uptime()
    log(f"end: {up1}")
    lines = [
        f"# Wattline TCP socket meters ({stamp})",
        "",
        f"`bench/run_tcp_bench.py --meters {a.meters} --seconds {a.seconds}"
        + (" --no-paced" if a.no_paced else f" --paced-ms {a.paced_ms}")
        + f"`, commit {git}" + (" with uncommitted changes" if dirty else "")
        + f", binary sha256 {sha}…, embedded SQLite store, client `bench/tcpload` "
          f"({a.client_workers} worker thread) on the same machine.",
        "",
        "| meters | pace | readings stored | readings/s | server CPU µs/reading "
        "| answer ms p50 / p99 | server KiB per connection | peak RSS | load avg | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [fmt_row(r) for r in results]
    lines += [
        "",
        "Each meter sends one reading and waits for its answer (written only once the reading "
        "is durable) before the next: closed loop = at once, paced = on its interval. Only the "
        "load phase is measured; connecting and enrolling (one device created per meter) are "
        "not. CPU is the server process's user+system time over the phase.",
        "",
        f"- uptime at start: `{up0}`",
        f"- uptime at end: `{up1}`",
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    (res_dir / f"tcp-{stamp}.md").write_text(md)
    (res_dir / "tcp-latest.md").write_text(md)


if __name__ == "__main__":
    main()
