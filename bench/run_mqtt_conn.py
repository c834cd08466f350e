#!/usr/bin/env python3
"""Memory per idle MQTT connection on Wattline's built-in broker.

Per connection count N (default 10,000 then 100,000): fresh data dir, start
`wattline serve --mqtt 127.0.0.1:0`, register --devices devices and a site ingest token, let
the server settle, then run bench/mqttconn (its own Cargo workspace, built into
$CARGO_TARGET_DIR when missing): N connections from 127.0.0.2, 127.0.0.3, ... (1,000 per
source address), each authenticated with the site token and publishing one small JSON reading
at QoS 0 on `wattline/readings` every --interval-s seconds, staggered over the interval.
The server's VmRSS is read before connecting and after all N are connected and have run for
--idle-s seconds; (RSS_after - RSS_before) / N is the figure (target < 10 KB). Also reported:
the publish rate sent and the readings the server stored in that window, whether
wattline_mqtt_connections == N, the RSS after the connections close, and the marginal bytes
per connection between two counts (which leaves out fixed start-up costs).

N connections need N open files in the server and in the tool. Both raise their soft limit to
the hard one; this script raises the hard limit (root with CAP_SYS_RESOURCE) when it is too
low. When it cannot, a count above the limit is run at the largest count the limit allows and
the table says so.

  bench/run_mqtt_conn.py                       # 10,000 and 100,000 connections
  bench/run_mqtt_conn.py --conns 2000 --idle-s 5   # quick check

Writes bench/results/mqttconn-latest.md (and a JSON line per count to
bench/results/mqttconn-<time>.jsonl). Only 127.0.0.x is used; everything is bounded in time
and every process started here is stopped by its PID.
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_bench as RB  # noqa: E402
import run_mqtt_bench as MB  # noqa: E402

REPO = RB.REPO
log = RB.log
TARGET_BYTES = 10 * 1024
FD_MARGIN = 1000  # files besides the connections: database, listeners, HTTP, threads


def ensure_tool(a):
    tool = MB.target_dir() / "release" / "mqttconn"
    if a.no_build and tool.exists():
        return tool
    env = dict(os.environ, CARGO_TARGET_DIR=str(MB.target_dir()))
    r = subprocess.run(["cargo", "build", "--release", "-q"], cwd=HERE / "mqttconn", env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or not tool.exists():
        sys.exit(f"cannot build bench/mqttconn:\n{r.stderr[-2000:]}")
    return tool


def raise_nofile(want):
    """Raises this process's open-file limit (inherited by the server and the tool) to at
    least `want` if possible; returns the hard limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError) as e:
            log(f"cannot raise the open-file hard limit from {hard} to {want}: {e} "
                f"(needs root with CAP_SYS_RESOURCE)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def threads(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("Threads:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def run_one(a, tool, n, asked, work):
    datadir = work / "data"
    shutil.rmtree(datadir, ignore_errors=True)
    logpath = work / f"wattline-n{n}.log"
    out = {"tool": "mqttconn", "n": n, "asked": asked, "interval_s": a.interval_s,
           "idle_s": a.idle_s, "concurrency": a.concurrency, "devices": a.devices}
    p = None
    try:
        p, hport, mport, logf = MB.start_server(a, datadir, logpath)
        out["pid"] = p.pid
        devices = [f"meter-{i:04d}" for i in range(1, a.devices + 1)]
        RB.register_devices(hport, devices)
        token = MB.site_token(hport)
        time.sleep(a.settle_s)
        out["threads_before"] = threads(p.pid)
        out["loadavg_before"] = RB.loadavg()
        cmd = [str(tool), "--port", str(mport), "--http-port", str(hport),
               "--server-pid", str(p.pid), "--password", token, "--username", "bench",
               "--n", str(n), "--devices", str(a.devices), "--prefix", "meter-",
               "--interval-s", str(a.interval_s), "--idle-s", str(a.idle_s),
               "--concurrency", str(a.concurrency),
               "--connect-deadline-s", str(a.connect_deadline_s)]
        limit = a.connect_deadline_s + a.idle_s + 120
        t = time.time()
        tp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            so, se = tp.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            tp.kill()
            so, se = tp.communicate(timeout=30)
            out["error"] = f"mqttconn did not finish within {limit:.0f}s"
        out["tool_wall_s"] = round(time.time() - t, 1)
        out["threads_after"] = threads(p.pid)
        out["loadavg_after"] = RB.loadavg()
        phases = [json.loads(ln) for ln in so.splitlines() if ln.startswith("{")]
        res = [x for x in phases if x.get("phase") == "result"]
        if res:
            out.update({k: v for k, v in res[-1].items() if k != "phase"})
        elif "error" not in out:
            out["error"] = f"mqttconn exit {tp.returncode}: {se.strip()[-800:]}"
        out["progress"] = [x for x in phases if x.get("phase") == "connecting"]
        rc, sd = RB.stop_server(p, 120)
        logf.close()
        out["shutdown_rc"], out["shutdown_s"] = rc, round(sd, 2)
        text = RB._ANSI.sub("", logpath.read_text(errors="replace"))
        warn = [ln for ln in text.splitlines() if " ERROR " in ln or " WARN " in ln]
        if warn:
            out["log_warnings"] = len(warn)
            out["log_warning_sample"] = warn[:3]
        return out
    finally:
        if p is not None and p.poll() is None:
            RB.stop_server(p, 60)
        if not a.keep:
            shutil.rmtree(datadir, ignore_errors=True)


def kib(v):
    return "–" if v is None else f"{v / 1024:.1f}"


def report(results):
    rows = ["| connections | connected | connect s | RSS before MiB | RSS after idle MiB | "
            "**bytes / connection** | target < 10 KiB | wattline_mqtt_connections | publishes/s "
            "sent (target) | readings/s stored | server CPU % (window) | RSS after close MiB | "
            "server threads | load before → after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "rss_before_kb" not in r:
            rows.append(f"| {r['n']:,} | ERROR: {r.get('error')} |" + " |" * 12)
            continue
        bpc = r.get("bytes_per_connection")
        n = f"{r['n']:,}" + (f" (asked {r['asked']:,})" if r["asked"] != r["n"] else "")
        cpu = r.get("server_cpu_s_in_window")
        rows.append(
            f"| {n} | {r['connected']:,} | {r['connect_s']:.1f} | {kib(r['rss_before_kb'])} | "
            f"{kib(r['rss_after_idle_kb'])} | {'–' if bpc is None else f'{bpc:,.0f}'} | "
            f"{'PASS' if bpc is not None and bpc < TARGET_BYTES else 'FAIL'} | "
            f"{r['connections_gauge']:.0f} ({'= N' if r['gauge_matches'] else '≠ N!'}) | "
            f"{r['publish_rate_per_s']:,.0f} ({r['target_publish_rate_per_s']:,.0f}) | "
            f"{r['stored_rate_per_s'] if r['stored_rate_per_s'] is not None else '–'} | "
            f"{'–' if cpu is None else format(100 * cpu / r['idle_s'], '.0f')} | "
            f"{kib(r['rss_after_close_kb'])} | {r.get('threads_before')} → "
            f"{r.get('threads_after')} | {r['loadavg_before'][0]} → {r['loadavg_after'][0]} |")
    ok = [r for r in results if r.get("rss_after_idle_kb") and r.get("connected")]
    notes = []
    for x, y in zip(ok, ok[1:]):
        if y["connected"] > x["connected"]:
            slope = ((y["rss_after_idle_kb"] - x["rss_after_idle_kb"]) * 1024
                     / (y["connected"] - x["connected"]))
            notes.append(f"- Marginal memory between {x['connected']:,} and "
                         f"{y['connected']:,} connections: {slope:,.0f} bytes per connection "
                         f"({'PASS' if slope < TARGET_BYTES else 'FAIL'} against 10 KiB).")
    return "\n".join(rows), notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", default="10000,100000", help="comma list of connection counts")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--interval-s", type=float, default=10)
    ap.add_argument("--idle-s", type=float, default=20)
    ap.add_argument("--settle-s", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=64,
                    help="connection handshakes in flight at once")
    ap.add_argument("--connect-deadline-s", type=float, default=300)
    ap.add_argument("--binary", default=str(MB.target_dir() / "release" / "wattline"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-fallback", action="store_true",
                    help="skip (rather than shrink) counts above the open-file limit")
    ap.add_argument("--workdir", default="/tmp/bench/wattline-mqttconn")
    ap.add_argument("--lock-wait", type=float, default=900)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    conns = [int(c) for c in a.conns.split(",")]
    signal.signal(signal.SIGTERM, RB.on_sigterm)
    lock = RB.take_lock(Path(a.workdir).parent / "run_bench.lock", a.lock_wait)  # noqa: F841
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(a.workdir) / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_all(a, conns, stamp, work)
    finally:
        if not a.keep:
            (work / "wattline-under-test").unlink(missing_ok=True)


def run_all(a, conns, stamp, work):
    t_start = time.time()
    up0 = RB.uptime()
    log(f"start: {up0}")
    build_state = RB.build(a)
    src = Path(a.binary)
    binary = work / "wattline-under-test"
    shutil.copy2(src, binary)
    a.binary = str(binary)
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    tool = ensure_tool(a)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    hard = raise_nofile(max(conns) + FD_MARGIN)
    limit_note = None
    plan = []
    for n in conns:
        if n + FD_MARGIN <= hard:
            plan.append((n, n))
        elif a.no_fallback:
            plan.append((None, n))
        else:
            plan.append(((hard - FD_MARGIN) // 1000 * 1000, n))
        if n + FD_MARGIN > hard:
            limit_note = (f"The open-file hard limit is {hard:,} and could not be raised (root "
                          f"without CAP_SYS_RESOURCE: setrlimit/prlimit give EPERM), so a "
                          f"process cannot hold {n:,} sockets here.")
    res_dir = Path(a.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    jsonl = res_dir / f"mqttconn-{stamp}.jsonl"
    results = []
    for n, asked in plan:
        if n is None:
            log(f"skipping {asked} connections: {limit_note}")
            continue
        if any(r["n"] == n for r in results):
            continue
        log(f"{n} connections (asked {asked}) ({RB.uptime()})")
        try:
            r = run_one(a, tool, n, asked, work)
        except Exception as e:
            r = {"tool": "mqttconn", "n": n, "asked": asked, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(r), flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(r) + "\n")
        results.append(r)
    up1 = RB.uptime()
    log(f"end: {up1}")
    tab, notes = report(results)
    problems = [f"- {r['n']:,}: {r['error']}" for r in results if r.get("error")]
    problems += [f"- {r['n']:,}: {r['failed']:,} connections failed; first error: "
                 f"{r.get('first_error')}" for r in results if r.get("failed")]
    problems += [f"- {r['n']:,}: the server closed {r['server_closed_during_idle']:,} "
                 f"connections during the run" for r in results
                 if r.get("server_closed_during_idle")]
    problems += [f"- {r['n']:,}: {r['log_warnings']} WARN/ERROR log lines, e.g. "
                 f"{r['log_warning_sample'][0][:200]}" for r in results if r.get("log_warnings")]
    md = [f"# Wattline MQTT: memory per idle connection — {stamp}", "",
          f"Each connection: MQTT 3.1.1, clean session, site ingest token as password, one "
          f"~75-byte JSON reading at QoS 0 on `wattline/readings` every {a.interval_s:g} s "
          f"(device = index % {a.devices} registered devices), publishes staggered evenly over "
          f"the interval; {a.concurrency} handshakes in flight while connecting; 1,000 "
          f"connections per loopback source address. RSS = VmRSS of the server; "
          f"bytes/connection = (RSS after all connected and {a.idle_s:g} s of running − RSS "
          f"before connecting) / connected. Tool: bench/mqttconn (tokio, one thread).",
          f"Wattline {git}, build: {build_state}, binary sha256 {sha}…. Machine: "
          f"{os.cpu_count()} cores, shared. Open-file hard limit {hard:,}.",
          f"Load: start `{up0}`; end `{up1}`. Total wall time {time.time() - t_start:.0f} s.",
          "", tab, "", *notes]
    if limit_note:
        md += ["", f"**Not measured as asked:** {limit_note} "
               + ("Counts above it were skipped." if a.no_fallback else
                  "Counts above it were run at the largest count the limit allows.")]
    md += [""] + (["## Problems seen", *problems, ""] if problems else ["No check failed.", ""])
    text = "\n".join(md)
    print(text)
    (res_dir / "mqttconn-latest.md").write_text(text)
    log(f"wrote {res_dir / 'mqttconn-latest.md'} and {jsonl}; logs in {work}")


if __name__ == "__main__":
    main()
