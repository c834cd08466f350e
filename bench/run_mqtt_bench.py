#!/usr/bin/env python3
"""Wattline MQTT ingest benchmark: end-to-end publish -> durable -> queryable through the
built-in broker, side by side with Mosquitto delivering the same messages to a counting
subscriber, in the same invocation on the same machine.

Per QoS, publisher count and run, interleaved so both see the same machine load:
  * Mosquitto: ../shared/bench/mqtt_bench.py --sink rust (the std-only counting subscriber in
    ../shared/bench/mqtt-sink, built into $CARGO_TARGET_DIR when missing), one run, private
    broker on :18830, max_queued_messages 1000000 as run_mqtt.sh uses (no loss).
  * Wattline: fresh data dir, `wattline serve --mqtt 127.0.0.1:0`, register the devices and a
    site ingest token (not timed), then K `mosquitto_pub -l` processes (as mqtt_bench.py
    starts them) publish the first N lines of the payload file on `wattline/readings` with the
    site token as password. Timed from starting the publishers until
    wattline_mqtt_readings_total reaches N (polled every 20 ms); then the counters and one
    device's raw series are checked.

Both sides get the same N lines (one reading per message). QoS>0 keeps at most 65,000
messages per publisher (mosquitto_pub -l stops when its 16-bit message ids wrap), as
run_mqtt.sh does: N = min(--messages, 60,000 x K).

  bench/run_mqtt_bench.py                               # QoS 0,1 x publishers 1,10,100, 3 runs
  bench/run_mqtt_bench.py --publishers 10 --qos 1 --runs 1 --messages 50000   # quick check

The markdown table goes to stdout, bench/results/mqtt-<time>.md and bench/results/mqtt-latest.md;
one JSON line per run to bench/results/mqtt-<time>.jsonl (git-ignored). All traffic goes to
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
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_bench as RB  # noqa: E402  (shared helpers: lock, Api, metrics, server env, build)

REPO = RB.REPO
SHARED_BENCH = RB.SHARED_BENCH
from cpu_sampler import TreeCPU, machine_busy  # noqa: E402

log = RB.log
GATEWAY_TOPIC = "wattline/readings"
QOS1_PER_PUBLISHER = 60000  # as run_mqtt.sh: below mosquitto_pub's 65,535 message-id wrap
TARGET_RATIO = 1.3
TARGET_QOS1_RATE = 40000


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR") or (REPO / "target"))


# ---------------------------------------------------------------------------- payload

def ensure_payload(path):
    p = Path(path)
    if p.exists() and p.stat().st_size > 0:
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    log(f"payload: generating {p} (gen_readings.py, about 10 s)")
    tmp = p.with_suffix(".tmp")
    subprocess.run([sys.executable, str(SHARED_BENCH / "gen_readings.py"), "--format", "json",
                    "--devices", "1000", "--duration", "1000s", "-o", str(tmp)], check=True,
                   timeout=600)
    tmp.rename(p)
    return p


def read_lines(path, n):
    lines = []
    with open(path, "rb") as f:
        for ln in f:
            lines.append(ln)
            if len(lines) >= n:
                break
    if len(lines) < n:
        sys.exit(f"{path} has only {len(lines)} lines, need {n}")
    return lines


def check_fields(line):
    """What the generator calls the device and the timestamp, and whether Wattline's JSON
    decoder takes that as it is (crates/decode/src/lib.rs: `device` or alias `device_id`;
    `ts` unix ms or RFC 3339)."""
    obj = json.loads(line)
    notes = []
    dev_key = "device" if "device" in obj else ("device_id" if "device_id" in obj else None)
    if dev_key is None:
        notes.append("no device/device_id key: Wattline would refuse every line")
    elif dev_key == "device_id":
        notes.append("device is named `device_id` (Wattline's documented alias of `device`)")
    ts = obj.get("ts")
    if isinstance(ts, (int, float)):
        notes.append("`ts` is unix milliseconds (a number), as Wattline reads numbers")
    elif ts is None:
        notes.append("no `ts`: Wattline would stamp arrival time")
    unknown = sorted(set(obj) - {"device", "device_id", "ts", "channel", "voltage", "current",
                                 "power", "apparent_power", "reactive_power", "power_factor",
                                 "frequency", "energy", "energy_export"})
    if unknown:
        notes.append(f"keys Wattline ignores: {unknown}")
    if "energy" in obj and obj["energy"] > 1e5:
        notes.append("`energy` is the generator's Wh counter, read by Wattline as kWh (values "
                     "accepted, energy rollups 1000x; the data is not rewritten)")
    return dev_key, notes


def split_lines(lines, k, how, dev_key):
    """K publisher files' contents. `device`: publisher i gets the devices with
    index % K == i, each in time order (K gateways); `slice`: contiguous slices, exactly as
    mqtt_bench.py splits (publisher i gets seconds [i*T/K, (i+1)*T/K) of all devices, so
    Wattline sees readings far behind each series' newest one: late-data repairs)."""
    if how == "slice":
        per = len(lines) // k
        return [lines[i * per:(i + 1) * per] for i in range(k)]
    devs = {}
    out = [[] for _ in range(k)]
    rx = re.compile(rb'"' + dev_key.encode() + rb'"\s*:\s*"([^"]*)"')
    for ln in lines:
        d = rx.search(ln).group(1)
        i = devs.setdefault(d, len(devs) % k)
        out[i].append(ln)
    return out


# ---------------------------------------------------------------------------- Mosquitto

def ensure_sink():
    sink = target_dir() / "release" / "mqtt-sink"
    src = SHARED_BENCH / "mqtt-sink"
    if sink.exists():
        return sink
    log(f"building {src} into {target_dir()}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir()))
    r = subprocess.run(["cargo", "build", "--release", "-q"], cwd=src, env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or not sink.exists():
        sys.exit(f"cannot build mqtt-sink:\n{r.stderr[-2000:]}")
    return sink


def run_mosquitto(a, payload, qos, pubs, n, run, work):
    cmd = [sys.executable, str(SHARED_BENCH / "mqtt_bench.py"), "--payload", str(payload),
           "--publishers", str(pubs), "--qos", str(qos), "--messages", str(n), "--runs", "1",
           "--sink", "rust", "--sink-bin", str(a.sink_bin), "--max-queued", "1000000",
           "--port", str(a.mosquitto_port), "--timeout", str(a.timeout)]
    if a.pub_inflight:
        cmd += ["--pub-inflight", str(a.pub_inflight)]
    errlog = work / f"mosquitto-q{qos}-p{pubs}-run{run}.log"
    with open(errlog, "w") as ef:
        # Its own process group: if we are interrupted, the group (mqtt_bench.py, its broker,
        # sink and publishers) is stopped together instead of orphaning the broker.
        mp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, text=True,
                              start_new_session=True)
        try:
            so, _ = mp.communicate(timeout=a.timeout + 120)
        except BaseException:
            stop_group(mp)
            raise
    for ln in so.splitlines():
        if ln.startswith("{"):
            d = json.loads(ln)
            d.update(tool="mosquitto", run=run, loadavg_after=RB.loadavg())
            return d
    return {"tool": "mosquitto", "run": run, "qos": qos, "publishers": pubs,
            "error": f"mqtt_bench.py exit {mp.returncode}: {errlog.read_text()[-800:]}"}


def stop_group(proc):
    """SIGTERM, then SIGKILL, to the process group this script started with `proc`."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; members (the broker) may still be alive for a moment
        time.sleep(0.5)


# ---------------------------------------------------------------------------- Wattline

_MQTT_LISTEN = re.compile(r"listening on mqtt://(127\.0\.0\.1:(\d+))")
_HTTP_LISTEN = re.compile(r"listening on http://(127\.0\.0\.1:(\d+))")


def start_server(a, datadir, logpath):
    cmd = [a.binary, "serve", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0",
           "--data-dir", str(datadir)]
    logf = open(logpath, "w")
    p = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=RB.server_env(), cwd=REPO)
    t = time.time()
    for _ in range(600):
        time.sleep(0.1)
        text = RB._ANSI.sub("", Path(logpath).read_text(errors="replace"))
        mh, mm = _HTTP_LISTEN.search(text), _MQTT_LISTEN.search(text)
        if mh and mm:
            return p, int(mh.group(2)), int(mm.group(2)), logf
        if p.poll() is not None or time.time() - t > 60:
            break
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)
    raise RuntimeError(f"wattline did not start (rc={p.returncode}); log tail:\n"
                       + "\n".join(Path(logpath).read_text(errors="replace").splitlines()[-20:]))


def site_token(port):
    api = RB.Api(port)
    st, body = api.req("POST", "/api/v1/sites/default/tokens", body=json.dumps({"name": "bench"}),
                       headers={"Content-Type": "application/json"})
    api.close()
    if st not in (200, 201):
        raise RuntimeError(f"site token: {st} {body[:300]!r}")
    return json.loads(body)["token"]


def check_query(api, dev, dev_key, lines):
    """The raw power series of one device over the published range has every reading."""
    want = [json.loads(ln) for ln in lines if f'"{dev}"'.encode() in ln]
    want = [w for w in want if w.get(dev_key) == dev and "power" in w]
    if not want:
        return None
    t0, t1 = min(w["ts"] for w in want), max(w["ts"] for w in want)
    js = api.json(f"/api/v1/devices/{dev}/series?quantity=power&from={t0}&to={t1 + 1}"
                  f"&max_points={len(want) + 10}")
    got = len(js.get("t", []))
    if js.get("tier") != "raw" or got != len({w["ts"] for w in want}):
        return f"query {dev}: tier {js.get('tier')!r}, {got} points, expected raw {len(want)}"
    return None


def run_wattline(a, files, devices, qos, n, run, work, dev_key, lines):
    k = len(files)
    datadir = work / "data"
    shutil.rmtree(datadir, ignore_errors=True)
    logpath = work / f"wattline-q{qos}-p{k}-run{run}.log"
    out = {"tool": "wattline", "run": run, "qos": qos, "publishers": k, "sent": n}
    p, pubs, errfs = None, [], []
    try:
        p, hport, mport, logf = start_server(a, datadir, logpath)
        out["pid"] = p.pid
        t = time.perf_counter()
        RB.register_devices(hport, devices)
        token = site_token(hport)
        out["register_s"] = round(time.perf_counter() - t, 2)
        api = RB.Api(hport)
        m0 = RB.metrics(api)
        base = int(m0.get("wattline_mqtt_readings_total", 0))
        out["loadavg_before"] = RB.loadavg()
        perf = None
        if a.perf:
            # Profile the timed window (adds some overhead: the figures of this run are not
            # comparable with runs without --perf).
            out["perf_data"] = str(work / f"perf-q{qos}-p{k}-run{run}.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g",
                                     "-p", str(p.pid), "-o", out["perf_data"]],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        smp = TreeCPU(p.pid).start()
        mb0 = machine_busy()
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            ef = open(work / f"pub{i}.err", "w")
            errfs.append(ef)
            pubs.append(subprocess.Popen(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mport), "-t", GATEWAY_TOPIC,
                 "-q", str(qos), "-V", "mqttv311", "-l", "-i", f"bench-pub{i}",
                 "-u", "bench", "-P", token]
                + (["-M", str(a.pub_inflight)] if a.pub_inflight else []),
                stdin=open(f, "rb"), stdout=subprocess.DEVNULL, stderr=ef))
        deadline = time.time() + a.timeout
        t_first = t_done = None
        got = base
        for _ in range(int(a.timeout / 0.02) + 10):
            got = int(RB.metrics(api).get("wattline_mqtt_readings_total", 0))
            now = time.perf_counter()
            if t_first is None and got > base:
                t_first = now
            if got - base >= n:
                t_done = now
                break
            if time.time() >= deadline:
                break
            if all(q.poll() is not None for q in pubs) and got == base and now - t0 > 10:
                break  # publishers gone, nothing stored: something is wrong
            time.sleep(0.02)
        el = (t_done or time.perf_counter()) - t0
        cpu, mb1 = smp.stop(), machine_busy()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(timeout=60)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait(timeout=10)
        out["loadavg_after"] = RB.loadavg()
        pub_deadline = time.time() + 30
        for q in pubs:
            try:
                q.wait(timeout=max(0.1, pub_deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        out["publisher_rc"] = sorted({q.poll() for q in pubs}, key=str)
        stored = got - base
        m1 = RB.metrics(api)
        out.update({
            "complete": t_done is not None, "stored": stored, "seconds": round(el, 3),
            "msg_per_s": round(stored / el, 1), "readings_per_s": round(stored / el, 1),
            "after_first_per_s": (round((stored - 1) / (t_done - t_first), 1)
                                  if t_done and t_first and t_done > t_first else None),
            "first_reading_after_s": round(t_first - t0, 3) if t_first else None,
            "server_cpu_s": cpu, "cpu_us_per_msg": round(cpu / max(1, stored) * 1e6, 2),
            "server_cpu_pct": round(100 * cpu / el, 1),
            "machine_busy_pct": round(100 * (1 - (mb1[1] - mb0[1]) / max(1, mb1[0] - mb0[0])), 1),
            "peak_rss_kb": RB.vm_hwm_kb(p.pid),
            "messages_total": int(m1.get("wattline_mqtt_messages_total", -1) -
                                  m0.get("wattline_mqtt_messages_total", 0)),
            "rejected_total": int(m1.get("wattline_mqtt_rejected_total", -1)),
            "readings_accepted_total": int(m1.get("wattline_readings_accepted_total", -1)),
            "late_total": int(m1.get("wattline_readings_late_total", 0)),
        })
        # Group commits, and Engine::write calls (one per connection read with readings) and
        # their mean time from arrival to durable commit.
        d = {k: m1.get(k, 0) - m0.get(k, 0) for k in (
            "wattline_write_batches_total", "wattline_write_latency_seconds_count",
            "wattline_write_latency_seconds_sum")}
        commits, writes = int(d["wattline_write_batches_total"]), int(
            d["wattline_write_latency_seconds_count"])
        out.update({
            "commits": commits, "engine_writes": writes,
            "readings_per_commit": round(stored / commits, 1) if commits else None,
            "readings_per_write": round(stored / writes, 1) if writes else None,
            "mean_write_latency_ms": (round(1000 * d["wattline_write_latency_seconds_sum"]
                                            / writes, 2) if writes else None),
        })
        problems = []
        if not out["complete"]:
            problems.append(f"only {stored} of {n} readings stored within {a.timeout:.0f}s")
        if out["rejected_total"]:
            problems.append(f"wattline_mqtt_rejected_total = {out['rejected_total']}")
        if out["messages_total"] != n:
            problems.append(f"wattline_mqtt_messages_total grew by {out['messages_total']}, "
                            f"expected {n}")
        if out["complete"]:
            q = check_query(api, devices[0], dev_key, lines)
            if q:
                problems.append(q)
        api.close()
        rc, sd = RB.stop_server(p, 120)
        logf.close()
        out["shutdown_rc"], out["shutdown_s"] = rc, round(sd, 2)
        if rc != 0:
            problems.append(f"shutdown: exit status {rc}")
        text = RB._ANSI.sub("", logpath.read_text(errors="replace"))
        warn = [ln for ln in text.splitlines() if " ERROR " in ln or " WARN " in ln]
        if warn:
            out["log_warnings"] = len(warn)
            out["log_warning_sample"] = warn[:3]
        errs = [e.read_text(errors="replace").strip()
                for e in (work / f"pub{i}.err" for i in range(k))]
        errs = [e for e in errs if e]
        if errs:
            out["publisher_stderr"] = errs[:3]
        out["problems"] = problems
        return out
    finally:
        for q in pubs:
            if q.poll() is None:
                q.send_signal(signal.SIGTERM)
        for q in pubs:
            try:
                q.wait(timeout=5)
            except subprocess.TimeoutExpired:
                q.kill()
                q.wait(timeout=5)
        for ef in errfs:
            ef.close()
        if p is not None and p.poll() is None:
            RB.stop_server(p, 60)
        if not a.keep:
            shutil.rmtree(datadir, ignore_errors=True)


# ---------------------------------------------------------------------------- report

def rng(vals, spec):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    s = format(RB.med(vals), spec)
    if len(vals) > 1 and min(vals) != max(vals):
        s += f" ({format(min(vals), spec)}–{format(max(vals), spec)})"
    return s


def report(results, configs):
    rows = ["| QoS | publishers | messages | Mosquitto msg/s (delivery) | Mosquitto e2e msg/s | "
            "Mosquitto CPU µs/msg | Wattline msg/s = readings/s (e2e, durable) | "
            "Wattline CPU s | Wattline CPU µs/msg | Wattline / Mosquitto (delivery) | "
            "Wattline / Mosquitto (e2e) | Wattline readings per commit / per ingest call, "
            "mean write latency ms | runs | load 1 min before → after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for qos, pubs, n in configs:
        mo = [r for r in results if r["tool"] == "mosquitto" and r.get("qos") == qos
              and r.get("publishers") == pubs and "error" not in r]
        wl = [r for r in results if r["tool"] == "wattline" and r.get("qos") == qos
              and r.get("publishers") == pubs and "error" not in r]
        if not mo and not wl:
            continue
        mrate = [r["rate"] for r in mo]
        me2e = [r["e2e_rate"] for r in mo]
        wrate = [r["msg_per_s"] if r["complete"] else None for r in wl]
        # Ratios per run (same run, same load), then their median.
        by_run = {r["run"]: r for r in mo}
        ratio = [w["msg_per_s"] / by_run[w["run"]]["rate"] for w in wl
                 if w["complete"] and w["run"] in by_run and by_run[w["run"]]["rate"]]
        ratio_e = [w["msg_per_s"] / by_run[w["run"]]["e2e_rate"] for w in wl
                   if w["complete"] and w["run"] in by_run and by_run[w["run"]]["e2e_rate"]]
        load = ", ".join(f"{w['loadavg_before'][0]} → {w['loadavg_after'][0]}" for w in wl
                         if "loadavg_before" in w)
        lost = [r["lost"] for r in mo if r.get("lost")]
        rows.append(
            f"| {qos} | {pubs} | {n:,} | {rng(mrate, ',.0f')}"
            f"{' (lost ' + str(lost) + ')' if lost else ''} | {rng(me2e, ',.0f')} | "
            f"{rng([r['broker_cpu_us_per_msg'] for r in mo], '.2f')} | "
            f"{rng(wrate, ',.0f')}{'' if all(wrate) else ' (incomplete runs!)'} | "
            f"{rng([r['server_cpu_s'] for r in wl], '.2f')} | "
            f"{rng([r['cpu_us_per_msg'] for r in wl], '.2f')} | {rng(ratio, '.2f')} | "
            f"{rng(ratio_e, '.2f')} | "
            f"{rng([r.get('readings_per_commit') for r in wl], ',.0f')} / "
            f"{rng([r.get('readings_per_write') for r in wl], '.1f')}, "
            f"{rng([r.get('mean_write_latency_ms') for r in wl], '.1f')} | "
            f"{len(mo)}+{len(wl)} | {load} |")
        mr = RB.med(ratio)
        if mr is not None:
            ok = mr >= TARGET_RATIO and all(w["complete"] for w in wl)
            verdicts.append(f"- {'PASS' if ok else 'FAIL'}: QoS {qos}, {pubs} publisher(s): "
                            f"Wattline e2e / Mosquitto delivery = {mr:.2f}× (target ≥ "
                            f"{TARGET_RATIO}×; vs Mosquitto e2e {RB.med(ratio_e):.2f}×)")
        if qos == 1 and wl:
            wr = RB.med(wrate)
            if wr is not None:
                verdicts.append(f"- {'PASS' if wr >= TARGET_QOS1_RATE else 'FAIL'}: QoS 1, "
                                f"{pubs} publisher(s): {wr:,.0f} readings/s durable (target ≥ "
                                f"{TARGET_QOS1_RATE:,})")
    return "\n".join(rows), verdicts


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200000,
                    help="messages per configuration (QoS>0: at most 60,000 per publisher)")
    ap.add_argument("--publishers", default="1,10,100", help="comma list")
    ap.add_argument("--qos", default="0,1", help="comma list of 0,1")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--split", choices=("device", "slice"), default="device",
                    help="how Wattline's publishers share the lines: by device (each series in "
                         "time order, like K gateways; default) or contiguous slices as "
                         "mqtt_bench.py (late readings)")
    ap.add_argument("--payload", default="/tmp/bench/data/mqtt.jsonl")
    ap.add_argument("--pub-inflight", type=int, default=0,
                    help="mosquitto_pub -M for both brokers (QoS 1 window; default: the "
                         "client's own)")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -e cpu-clock -g the server during each Wattline window "
                         "(perf-*.data in the work dir; skews that run's figures)")
    ap.add_argument("--built-from", default=None,
                    help="describe the binary under test (e.g. 'git archive of 9ddf299') in "
                         "place of the working tree's commit and uncommitted files")
    ap.add_argument("--no-mosquitto", action="store_true")
    ap.add_argument("--mosquitto-port", type=int, default=18830)
    ap.add_argument("--sink-bin", default=None,
                    help="mqtt-sink binary (default $CARGO_TARGET_DIR/release/mqtt-sink, built "
                         "from ../shared/bench/mqtt-sink when missing)")
    ap.add_argument("--binary", default=str(target_dir() / "release" / "wattline"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--timeout", type=float, default=120, help="deadline per run (s)")
    ap.add_argument("--budget", type=float, default=840,
                    help="skip the remaining configurations after this many seconds")
    ap.add_argument("--workdir", default="/tmp/bench/wattline-mqtt")
    ap.add_argument("--lock-wait", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="keep data dirs")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    if not shutil.which("mosquitto_pub") or not (a.no_mosquitto or shutil.which("mosquitto")
                                                 or Path("/usr/sbin/mosquitto").exists()):
        sys.exit("mosquitto / mosquitto_pub missing: apt-get install -y mosquitto "
                 "mosquitto-clients")
    qoss = [int(q) for q in a.qos.split(",")]
    pubss = [int(p) for p in a.publishers.split(",")]
    signal.signal(signal.SIGTERM, RB.on_sigterm)
    # The same lock as run_bench.py: no two benchmarks share the machine.
    lock = RB.take_lock(Path(a.workdir).parent / "run_bench.lock", a.lock_wait)  # noqa: F841
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(a.workdir) / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_all(a, qoss, pubss, stamp, work)
    finally:
        if not a.keep:
            (work / "wattline-under-test").unlink(missing_ok=True)
            for f in work.glob("pub*.jsonl"):
                f.unlink()


def run_all(a, qoss, pubss, stamp, work):
    t_start = time.time()
    up0 = RB.uptime()
    log(f"start: {up0}")
    build_state = RB.build(a)
    src = Path(a.binary)
    binary = work / "wattline-under-test"
    shutil.copy2(src, binary)  # other sessions rebuild the target dir while we measure
    a.binary = str(binary)
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty_files = [ln[3:] for ln in subprocess.run(
        ["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=REPO,
        capture_output=True, text=True).stdout.splitlines()]
    if not a.no_mosquitto:
        a.sink_bin = Path(a.sink_bin) if a.sink_bin else ensure_sink()
    payload = ensure_payload(a.payload)
    configs = []
    for qos in qoss:
        for k in pubss:
            n = a.messages if qos == 0 else min(a.messages, QOS1_PER_PUBLISHER * k)
            configs.append((qos, k, n - n % k))  # mqtt_bench.py sends (N // K) * K
    nmax = max(n for _, _, n in configs)
    lines = read_lines(payload, nmax)
    dev_key, field_notes = check_fields(lines[0])
    log("payload: " + "; ".join(field_notes))
    res_dir = Path(a.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    jsonl = res_dir / f"mqtt-{stamp}.jsonl"
    results = []

    def emit(r):
        print(json.dumps(r, default=str), flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(r, default=str) + "\n")

    emit({"tool": "meta", "started": stamp, "uptime_start": up0, "git": git,
          "dirty_files": dirty_files, "build": build_state, "binary": str(src),
          "binary_sha256_16": sha, "payload": str(payload), "configs": configs,
          "split": a.split, "field_notes": field_notes})
    skipped = []
    for run in range(1, a.runs + 1):
        for qos, k, n in configs:
            if time.time() - t_start > a.budget:
                skipped.append((run, qos, k))
                continue
            sub = lines[:n]
            rx = re.compile(rb'"' + dev_key.encode() + rb'"\s*:\s*"([^"]*)"')
            devices = sorted({rx.search(ln).group(1).decode() for ln in sub})
            parts = split_lines(sub, k, a.split, dev_key)
            files = []
            for i, part in enumerate(parts):
                f = work / f"pub{i}.jsonl"
                f.write_bytes(b"".join(part))
                files.append(f)
            if not a.no_mosquitto:
                log(f"mosquitto qos {qos} publishers {k} run {run} ({RB.uptime()})")
                r = run_mosquitto(a, payload, qos, k, n, run, work)
                emit(r)
                results.append(r)
            log(f"wattline qos {qos} publishers {k} run {run} ({RB.uptime()})")
            try:
                r = run_wattline(a, files, devices, qos, n, run, work, dev_key, sub)
            except Exception as e:  # report and go on
                r = {"tool": "wattline", "run": run, "qos": qos, "publishers": k,
                     "error": f"{type(e).__name__}: {e}"}
            emit(r)
            results.append(r)
            for f in files:
                f.unlink(missing_ok=True)
    up1 = RB.uptime()
    log(f"end: {up1}")
    tab, verdicts = report(results, configs)
    problems = [f"- {r['tool']} QoS {r.get('qos')} p{r.get('publishers')} run {r.get('run')}: "
                f"{p}" for r in results for p in (r.get("problems") or [])]
    problems += [f"- {r['tool']} QoS {r.get('qos')} p{r.get('publishers')} run {r.get('run')}: "
                 f"ERROR {r['error']}" for r in results if "error" in r]
    problems += [f"- skipped (time budget {a.budget:.0f}s): run {r} QoS {q} p{k}"
                 for r, q, k in skipped]
    md = [f"# Wattline MQTT ingest vs Mosquitto — {stamp}", "",
          f"Payload: first N lines of `{payload}` (gen_readings.py JSON, one reading per "
          f"message, ~{sum(map(len, lines[:1000])) / 1000:.0f} bytes); "
          f"{'; '.join(field_notes)}.",
          f"Publishers: `mosquitto_pub -l -V mqttv311` "
          f"({f'-M {a.pub_inflight}' if a.pub_inflight else 'its default inflight window'} at "
          f"QoS 1), N = min({a.messages:,}, 60,000 × K) at QoS 1. Wattline lines split "
          f"{'by device (each series in time order)' if a.split == 'device' else 'in slices'}; "
          f"published on `{GATEWAY_TOPIC}` with a site ingest token.",
          "Mosquitto: `mqtt_bench.py --sink rust --max-queued 1000000`, delivery rate = "
          "(delivered−1)/(last−first receive), e2e = delivered/(last receive − publishers "
          "started). Wattline: readings/s = N / (time from starting the publishers until "
          "`wattline_mqtt_readings_total` = N, i.e. every reading durable); CPU = utime+stime "
          "of the server process over that window. Ratios are per run (same run, same load), "
          "then the median; cells show median (min–max).",
          (f"Wattline binary built from {a.built_from}" if a.built_from else
           f"Wattline {git} + {len(dirty_files)} uncommitted files "
           f"({', '.join(dirty_files) or 'none'})") +
          f", build: {build_state}, binary sha256 {sha}…. "
          f"Machine: {os.cpu_count()} cores, shared.",
          f"Load: start `{up0}`; end `{up1}`. Total wall time {time.time() - t_start:.0f} s.",
          "", tab, "", "Targets:", *verdicts, ""]
    md += (["## Problems seen", *problems, ""] if problems else ["No check failed.", ""])
    text = "\n".join(md)
    print(text)
    (res_dir / f"mqtt-{stamp}.md").write_text(text)
    (res_dir / "mqtt-latest.md").write_text(text)
    log(f"wrote {res_dir / f'mqtt-{stamp}.md'}, mqtt-latest.md and {jsonl}; logs in {work}")


if __name__ == "__main__":
    main()
