#!/usr/bin/env python3
"""Wattline storage benchmark: ingest rate, server CPU, bytes on disk, dashboard queries,
side by side with InfluxDB 1.x on the same dataset and machine.

Per backend (embedded SQLite, PostgreSQL) and run: fresh data dir (and fresh PG database),
start target/release/wattline on a free 127.0.0.1 port, register the devices (not timed),
POST the kWh-converted line protocol in 5000-line batches from --writers keep-alive
connections (timed), check the counts, run the three dashboard queries of
../shared/bench/queries.py, SIGTERM (Wattline flushes, compacts, checkpoints), then measure
the bytes on disk.  InfluxDB runs through ../shared/bench/influx_bench.py.

  bench/run_bench.py                                   # full: 1000 dev x 5000 s, both backends + InfluxDB
  bench/run_bench.py --devices 50 --duration 600s --no-influx     # quick debug run
  bench/run_bench.py --writers 1,2 --runs 3

JSON lines on stdout (also appended to bench/results/run-<time>.jsonl); the markdown table
goes to stdout and bench/results/latest.md.  All traffic goes to 127.0.0.1.
"""
import argparse
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir():
    p = (REPO / ".." / "shared").resolve()
    if (p / "bench").is_dir():
        return p
    env = os.environ.get("WATTLINE_SHARED")
    if env and (Path(env) / "bench").is_dir():
        return Path(env).resolve()
    sys.exit(f"cannot find the shared material: neither {p} nor $WATTLINE_SHARED has bench/")


SHARED_BENCH = shared_dir() / "bench"
sys.path.insert(0, str(SHARED_BENCH))
from cpu_sampler import CLK, TreeCPU, machine_busy  # noqa: E402
import queries as Q  # noqa: E402

DEFAULT_DEVICES, DEFAULT_DURATION = 1000, "5000s"
ADMIN_TOKEN = "wl-bench-admin-token-0123456789"
LP_PREFIX = b"energy,device="
MAX_POINTS_A = 1440


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- dataset

def ensure_dataset(a):
    """The original (Wh) LP file; generated when missing."""
    small = (a.devices, a.duration) != (DEFAULT_DEVICES, DEFAULT_DURATION)
    if small:
        outdir = Path(a.datadir).parent / f"data-{a.devices}x{a.duration}"
    else:
        outdir = Path(a.datadir)
    lp = outdir / "readings.lp"
    if lp.exists() and lp.stat().st_size > 0:
        log(f"dataset: reusing {lp}")
        return lp
    outdir.mkdir(parents=True, exist_ok=True)
    t = time.time()
    if small:
        tmp = lp.with_suffix(".lp.tmp")
        subprocess.run([sys.executable, str(SHARED_BENCH / "gen_readings.py"), "--devices",
                        str(a.devices), "--duration", a.duration, "--format", "lp",
                        "--ts-unit", "s", "-o", str(tmp)], check=True, timeout=3600)
        tmp.rename(lp)
    else:
        log("dataset: generating with make_dataset.py (about 80 s)")
        subprocess.run([sys.executable, str(SHARED_BENCH / "make_dataset.py"), "--outdir",
                        str(outdir)], check=True, timeout=3600)
    log(f"dataset: {lp} made in {time.time() - t:.1f}s")
    return lp


_ENERGY = re.compile(rb"(?<=[ ,])energy=(\d+)(?:\.(\d+))?(?=[ ,\n])")


def shift3(m):
    """energy=<Wh> -> energy=<kWh>: the decimal point moves 3 places left, digits untouched."""
    i, f = m.group(1), m.group(2) or b""
    digits = i + f
    p = len(i) - 3
    if p <= 0:
        digits = b"0" * (1 - p) + digits
        p = 1
    whole = digits[:p].lstrip(b"0") or b"0"
    frac = digits[p:]
    return b"energy=" + whole + (b"." + frac if frac else b"")


def ensure_kwh_copy(lp):
    """readings_kwh.lp next to readings.lp, made once (a .meta file ties it to its source)."""
    out = lp.with_name("readings_kwh.lp")
    meta = lp.with_name("readings_kwh.meta.json")
    st = lp.stat()
    want = {"source": str(lp), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if out.exists() and meta.exists():
        try:
            have = json.loads(meta.read_text())
            if {k: have.get(k) for k in want} == want:
                log(f"kWh copy: reusing {out}")
                return out, have["lines"]
        except (ValueError, KeyError):
            pass
    t = time.time()
    tmp = out.with_suffix(".lp.tmp")
    lines = 0
    with open(lp, "rb") as src, open(tmp, "wb") as dst:
        for n in range(10**7):  # bounded: 1 MiB-ish blocks of whole lines
            block = src.readlines(1 << 20)
            if not block:
                break
            buf = b"".join(block)
            conv, k = _ENERGY.subn(shift3, buf)
            if k != len(block):
                raise RuntimeError(f"kWh conversion: {k} energy fields in {len(block)} lines "
                                   f"near line {lines + 1}")
            dst.write(conv)
            lines += len(block)
    tmp.rename(out)
    want["lines"] = lines
    meta.write_text(json.dumps(want))
    log(f"kWh copy: {out} ({lines} lines) in {time.time() - t:.1f}s")
    return out, lines


def pick_query_devices(ndev):
    devs = [d for d in Q.QUERY_DEVICES if d <= ndev]
    if len(devs) < min(5, ndev):
        devs = sorted({max(1, round(ndev * k / 5)) for k in range(1, 6)})
    return devs


def load_and_scan(kwh_lp, batch, qdevs):
    """Batches to POST, plus what the checks expect: per device its last reading, and for the
    query devices the minutes/hours they cover and their first/last counter."""
    with open(kwh_lp, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    del data
    if lines and not lines[-1]:
        lines.pop()
    qset = {str(d).encode() for d in qdevs}
    last = {}
    q = {d: {"day_n": 0, "minutes": set(), "hours": set(), "first_e": None, "last_e": None,
             "first_ts": None, "last_ts": None} for d in qset}
    max_ts = None
    for ln in lines:
        sp = ln.index(b" ", 14)
        dev = ln[14:sp]
        last[dev] = ln
        if dev in qset:
            ts = int(ln[ln.rindex(b" ") + 1:])
            e = _ENERGY.search(ln)
            ev = Decimal((e.group(1) + b"." + (e.group(2) or b"0")).decode())
            r = q[dev]
            if r["first_e"] is None:
                r["first_e"], r["first_ts"] = ev, ts
            r["last_e"], r["last_ts"] = ev, ts
            if Q.DAY0_S <= ts < Q.DAY1_S:
                r["day_n"] += 1
                r["minutes"].add(ts // 60)
            if Q.YEAR0_S <= ts < Q.YEAR1_S:
                r["hours"].add(ts // 3600)
    for ln in lines[-2000:]:
        ts = int(ln[ln.rindex(b" ") + 1:])
        max_ts = ts if max_ts is None else max(max_ts, ts)
    expect_last = {}
    for dev, ln in last.items():
        ts = int(ln[ln.rindex(b" ") + 1:])
        fields = dict(kv.split(b"=", 1) for kv in ln[ln.index(b" ", 14) + 1:ln.rindex(b" ")]
                      .split(b","))
        expect_last[dev.decode()] = {"ts": ts, **{k.decode(): float(v) for k, v in fields.items()}}
    batches = [b"\n".join(lines[i:i + batch]) for i in range(0, len(lines), batch)]
    n = len(lines)
    del lines
    qexp = {d.decode(): r for d, r in q.items()}
    return batches, n, max_ts, expect_last, qexp


# ---------------------------------------------------------------------------- HTTP

class Api:
    """One keep-alive connection to Wattline with the admin token."""

    def __init__(self, port, timeout=300):
        self.port, self.timeout = port, timeout
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.h = {"Authorization": f"Token {ADMIN_TOKEN}"}

    def req(self, method, path, body=None, headers=None):
        h = dict(self.h, **(headers or {}))
        for attempt in range(2):
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:
                    raise
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def json(self, path):
        st, body = self.req("GET", path)
        if st != 200:
            raise RuntimeError(f"GET {path} -> {st}: {body[:300]!r}")
        return json.loads(body)

    def close(self):
        self.c.close()


def metrics(api):
    st, body = api.req("GET", "/metrics")
    out = {}
    for ln in body.decode().splitlines():
        if ln and not ln.startswith("#"):
            k, v = ln.rsplit(" ", 1)
            out[k] = float(v)
    return out


def write_all(port, batches, writers, deadline):
    idx, lock, errors = [0], threading.Lock(), []

    def worker():
        api = Api(port, timeout=120)
        path = "/write?precision=s"
        for _ in range(len(batches) + 1):
            if time.time() >= deadline:
                errors.append(("deadline", b"ingest deadline reached"))
                break
            with lock:
                i = idx[0]
                idx[0] += 1
            if i >= len(batches) or errors:
                break
            try:
                st, body = api.req("POST", path, body=batches[i],
                                   headers={"Content-Type": "text/plain"})
            except OSError as e:
                errors.append(("connection", str(e).encode(), i))
                break
            if st != 204:
                errors.append((st, body[:400], i))
                break
        api.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(writers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


# ---------------------------------------------------------------------------- CPU / memory

def _proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PgCPU:
    """CPU of the PostgreSQL processes working for one database: its backends (process title
    names the database) plus the cluster's auxiliary processes (walwriter, checkpointer, …;
    no client address in their title). Other databases' backends are left out."""

    def __init__(self, dbname, period=0.2):
        self.db, self.period = dbname, period
        self.base, self.last = {}, {}
        self._stop = threading.Event()

    def _mine(self, cmd):
        if not cmd.startswith("postgres:") and "/bin/postgres" not in cmd:
            return False
        if f" {self.db} " in cmd + " ":
            return True
        return "(" not in cmd and "[local]" not in cmd and " autovacuum worker " not in cmd + " "

    def _scan(self, first=False):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid not in self.last:
                if not self._mine(_cmdline(pid)):
                    continue
            cpu = _proc_cpu(pid)
            if cpu is None:
                continue
            if pid not in self.base:
                self.base[pid] = cpu if first else 0.0
            self.last[pid] = cpu

    def _loop(self):
        for _ in range(10**7):
            if self._stop.wait(self.period):
                break
            self._scan()

    def start(self):
        self._scan(first=True)
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()
        self._scan()
        return round(sum(self.last[p] - self.base[p] for p in self.last), 2)


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------- PostgreSQL

def psql(a, sql, db="postgres"):
    r = subprocess.run(["psql", "-h", a.pg_host, "-p", str(a.pg_port), "-U", a.pg_user, "-d", db,
                        "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()}")
    return r.stdout.strip()


def pg_sizes(a, db):
    rows = psql(a, "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                   "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                   "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 2 DESC", db)
    tables = {}
    for ln in rows.splitlines():
        name, size = ln.rsplit("|", 1)
        tables[name] = int(size)
    dbsize = int(psql(a, f"SELECT pg_database_size('{db}')"))
    return tables, dbsize


def pg_empty_db_size(a):
    name = f"wl_bench_empty_{os.getpid()}"
    psql(a, f"DROP DATABASE IF EXISTS {name}")
    psql(a, f"CREATE DATABASE {name}")
    try:
        return int(psql(a, f"SELECT pg_database_size('{name}')"))
    finally:
        psql(a, f"DROP DATABASE IF EXISTS {name}")


# ---------------------------------------------------------------------------- Wattline

def build(a):
    if a.no_build:
        return "skipped (--no-build)"
    t = time.time()
    r = subprocess.run(["cargo", "build", "--release", "-p", "wattline"], cwd=REPO,
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        if not Path(a.binary).exists():
            sys.exit(f"cargo build failed and there is no binary:\n{tail}")
        log(f"WARNING: cargo build failed; benchmarking the existing binary\n{tail}")
        return "failed; existing binary used"
    return f"ok ({time.time() - t:.0f}s)"


def server_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLINE_")}
    env.update({
        "WATTLINE_ADMIN_TOKEN": ADMIN_TOKEN,
        # The dataset lies in January 2026; with the default 30-day raw retention, maintenance
        # (every 60 s, and once at start) would delete it if the clock is past February.
        "WATTLINE_RETENTION_RAW_DAYS": "0",
        "WATTLINE_RETENTION_MINUTE_DAYS": "0",
        "NO_COLOR": "1",
        "RUST_LOG": "info",
    })
    return env


_LISTEN = re.compile(r"listening on http://(127\.0\.0\.1:(\d+))")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def start_server(a, datadir, logpath, database=None):
    # No MQTT listener: a Mosquitto on 1883 would stop the server; only HTTP is measured.
    cmd = [a.binary, "serve", "--http", "127.0.0.1:0", "--mqtt", "off", "--data-dir", str(datadir)]
    if database:
        cmd += ["--database", database]
    logf = open(logpath, "w")
    p = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=server_env(), cwd=REPO)
    t = time.time()
    for _ in range(600):
        time.sleep(0.1)
        text = _ANSI.sub("", Path(logpath).read_text(errors="replace"))
        m = _LISTEN.search(text)
        if m:
            return p, int(m.group(2)), logf
        if p.poll() is not None or time.time() - t > 60:
            break
    p.kill() if p.poll() is None else None
    p.wait(timeout=10)
    raise RuntimeError(f"wattline did not start (rc={p.returncode}); log tail:\n"
                       + "\n".join(Path(logpath).read_text(errors="replace").splitlines()[-20:]))


def stop_server(p, timeout):
    if p.poll() is not None:
        return p.returncode, 0.0
    t = time.perf_counter()
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait(timeout=30)
        return f"killed after {timeout}s (rc {rc})", time.perf_counter() - t
    return rc, time.perf_counter() - t


def register_devices(port, devices):
    api = Api(port)
    bad = []
    for d in devices:
        st, body = api.req("POST", "/api/v1/devices",
                           body=json.dumps({"id": d, "name": f"meter {d}"}),
                           headers={"Content-Type": "application/json"})
        if st != 201:
            bad.append((d, st, body[:200]))
            if len(bad) >= 5:
                break
    api.close()
    if bad:
        raise RuntimeError(f"device registration failed: {bad}")


def time_query(api, path, reps_devices, check):
    """Warm-up pass over the devices, then the timed passes; `check` sees every answer."""
    lat, notes = [], []
    for warm, dev in reps_devices:
        p = path.format(dev=dev)
        t = time.perf_counter()
        st, body = api.req("GET", p)
        ms = (time.perf_counter() - t) * 1000
        if st != 200:
            raise RuntimeError(f"GET {p} -> {st}: {body[:300]!r}")
        if not warm:
            lat.append(ms)
        n = check(dev, json.loads(body))
        if n:
            notes.append(n)
    return {"median_ms": round(statistics.median(lat), 2), "min_ms": round(min(lat), 2),
            "max_ms": round(max(lat), 2), "n": len(lat)}, notes


def run_queries(port, qdevs, qexp, ndev, reps):
    api = Api(port)
    order = [(True, d) for d in qdevs] + [(False, d) for _ in range(reps) for d in qdevs]
    out, problems = {}, []
    info = {}

    def check_a(dev, js):
        e = qexp[str(dev)]
        want_tier = "raw" if e["day_n"] <= MAX_POINTS_A else "1m"
        want_n = e["day_n"] if want_tier == "raw" else len(e["minutes"])
        info["a"] = {"tier": js.get("tier"), "points": len(js.get("t", []))}
        if js.get("tier") != want_tier or len(js.get("t", [])) != want_n:
            return (f"(a) device {dev}: tier {js.get('tier')!r} with {len(js.get('t', []))} "
                    f"points, expected {want_tier!r} with {want_n}")

    def check_b(dev, js):
        e = qexp[str(dev)]
        b = js.get("buckets", [])
        got = sum(x["import_kwh"] for x in b)
        want = float(e["last_e"] - e["first_e"])
        info["b"] = {"buckets": len(b), "import_kwh": round(got, 6), "counter_delta_kwh": want}
        if len(b) != len(e["hours"]) or abs(got - want) > 1e-6 * max(1.0, abs(want)):
            return (f"(b) device {dev}: {len(b)} buckets, sum import {got:.6f} kWh; expected "
                    f"{len(e['hours'])} buckets, counter delta {want:.6f} kWh")

    def check_c(dev, js):
        with_latest = sum(1 for d in js if d.get("latest"))
        info["c"] = {"devices": len(js), "with_latest": with_latest}
        if len(js) != ndev or with_latest != ndev:
            return f"(c): {len(js)} devices, {with_latest} with latest; expected {ndev}"

    day0_ms, day1_ms = Q.DAY0_S * 1000, Q.DAY1_S * 1000
    paths = {
        "a_minute_avg_day": (f"/api/v1/devices/{{dev}}/series?quantity=power&from={day0_ms}"
                             f"&to={day1_ms}&max_points={MAX_POINTS_A}", check_a),
        "b_hour_energy_year": (f"/api/v1/devices/{{dev}}/energy?interval=hour&from={Q.YEAR0}"
                               f"&to={Q.YEAR1}", check_b),
        "c_last_all": ("/api/v1/devices", check_c),
    }
    for name, (path, check) in paths.items():
        res, notes = time_query(api, path, order, check)
        res["answer"] = info.get(name[0])
        out[name] = res
        problems += sorted(set(notes))
    api.close()
    return out, problems


def verify_load(api, nlines, max_ts, expect_last):
    """Counts from /metrics and the latest reading of every device."""
    problems = []
    m = metrics(api)
    accepted = int(m.get("wattline_readings_accepted_total", -1))
    rejected = {k: int(v) for k, v in m.items() if k.startswith("wattline_readings_rejected_total")}
    if accepted != nlines:
        problems.append(f"/metrics wattline_readings_accepted_total = {accepted}, "
                        f"expected {nlines}")
    if any(rejected.values()):
        problems.append(f"/metrics rejections: {rejected}")
    devs = api.json("/api/v1/devices")
    want_ts = datetime.fromtimestamp(max_ts, timezone.utc)
    bad_ts, bad_val, missing = [], [], []
    for d in devs:
        latest = d.get("latest") or {}
        if not latest:
            missing.append(d["id"])
            continue
        p = max(latest.values(), key=lambda x: x["ts"])
        ts = datetime.fromisoformat(p["ts"].replace("Z", "+00:00"))
        if ts != want_ts:
            bad_ts.append((d["id"], p["ts"]))
        e = expect_last.get(d["id"])
        if e and e["ts"] == max_ts:
            for k in ("voltage", "current", "power", "energy"):
                if k not in p or abs(p[k] - e[k]) > 1e-9 * max(1.0, abs(e[k])):
                    bad_val.append((d["id"], k, p.get(k), e[k]))
    if len(devs) != len(expect_last):
        problems.append(f"GET /api/v1/devices: {len(devs)} devices, expected {len(expect_last)}")
    if missing:
        problems.append(f"{len(missing)} devices without latest, e.g. {missing[:5]}")
    if bad_ts:
        problems.append(f"{len(bad_ts)} devices whose latest ts is not {want_ts:%Y-%m-%dT%H:%M:%SZ}"
                        f", e.g. {bad_ts[:3]}")
    if bad_val:
        problems.append(f"{len(bad_val)} latest values differ from the dataset, e.g. {bad_val[:3]}")
    return accepted, rejected, problems


def wait_idle(api, limit_s=60):
    """Until the ingest queue is empty, then one rollup flush interval more."""
    t = time.time()
    for _ in range(int(limit_s * 10)):
        if metrics(api).get("wattline_ingest_queue_depth", 0) == 0 or time.time() - t > limit_s:
            break
        time.sleep(0.1)
    time.sleep(2.5)


def du_bytes(path):
    return int(subprocess.check_output(["du", "-s", "-B1", str(path)]).split()[0])


def run_wattline(a, backend, run, writers, data, tag):
    batches, nlines, max_ts, expect_last, qexp, qdevs = data
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    datadir = work / f"data-{backend}"
    shutil.rmtree(datadir, ignore_errors=True)
    logpath = work / f"{backend}-run{run}-w{writers}.log"
    dbname, database = None, None
    if backend == "postgres":
        dbname = f"wl_bench_{os.getpid()}_{run}_{writers}"
        psql(a, f"DROP DATABASE IF EXISTS {dbname}")
        psql(a, f"CREATE DATABASE {dbname}")
        database = f"postgres://{a.pg_user}@{a.pg_host}:{a.pg_port}/{dbname}"
    out = {"tool": "wattline", "backend": backend, "run": run, "writers": writers,
           "batch": a.batch, "readings": nlines, "tag": tag}
    p = None
    try:
        p, port, logf = start_server(a, datadir, logpath, database)
        out["pid"] = p.pid
        t = time.perf_counter()
        register_devices(port, sorted(expect_last, key=lambda s: (len(s), s)))
        out["register_s"] = round(time.perf_counter() - t, 2)
        api = Api(port)
        out["loadavg_before"] = loadavg()
        smp = TreeCPU(p.pid).start()
        pgs = PgCPU(dbname).start() if dbname else None
        m0, c0 = machine_busy(), time.process_time()
        t0 = time.perf_counter()
        errs = write_all(port, batches, writers, time.time() + a.timeout)
        el = time.perf_counter() - t0
        srv_cpu, m1, cli_cpu = smp.stop(), machine_busy(), time.process_time() - c0
        pg_cpu = pgs.stop() if pgs else 0.0
        out["loadavg_after"] = loadavg()
        out["peak_rss_kb"] = vm_hwm_kb(p.pid)
        if errs:
            out["load_errors"] = [(e[0], e[1].decode(errors="replace")) + tuple(e[2:])
                                  for e in errs[:3]]
        out.update({
            "ingest_s": round(el, 2), "readings_per_s": round(nlines / el),
            "server_cpu_s": srv_cpu, "server_cpu_us_per_reading": round(srv_cpu / nlines * 1e6, 2),
            "pg_cpu_s": pg_cpu if dbname else None,
            "total_cpu_us_per_reading": round((srv_cpu + pg_cpu) / nlines * 1e6, 2),
            "client_cpu_s": round(cli_cpu, 2),
            "machine_busy_pct": round(100 * (1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0])), 1),
        })
        accepted, rejected, problems = verify_load(api, nlines, max_ts, expect_last)
        out["accepted_total"], out["rejected"] = accepted, rejected
        wait_idle(api)
        q, qprob = run_queries(port, qdevs, qexp, len(expect_last), a.query_reps)
        out["queries"] = q
        out["peak_rss_kb_end"] = vm_hwm_kb(p.pid)
        api.close()
        rc, sd = stop_server(p, a.shutdown_timeout)
        logf.close()
        out["shutdown_rc"], out["shutdown_s"] = rc, round(sd, 2)
        if rc != 0:
            problems.append(f"shutdown: exit status {rc}")
        logtext = _ANSI.sub("", logpath.read_text(errors="replace"))
        bad_log = [ln for ln in logtext.splitlines() if " ERROR " in ln or " WARN " in ln]
        if bad_log:
            out["log_warnings"] = bad_log[:5]
        if "stopped cleanly" not in logtext:
            problems.append("log has no 'stopped cleanly' line")
        if backend == "sqlite":
            size = du_bytes(datadir)
            out["size_method"] = "du -s -B1 of the data dir after shutdown"
            out["size_detail"] = {f.name: f.stat().st_size for f in datadir.iterdir()}
        else:
            tables, dbsize = pg_sizes(a, dbname)
            empty = pg_empty_db_size(a)
            size = sum(tables.values())
            out["size_method"] = ("sum of pg_total_relation_size over the bench database's "
                                  "tables (heap+indexes+TOAST, incl. every readings partition)")
            out["size_detail"] = {"tables": tables, "pg_database_size": dbsize,
                                  "empty_database_size": empty,
                                  "database_minus_empty": dbsize - empty}
        out["bytes_on_disk"] = size
        out["bytes_per_reading"] = round(size / nlines, 2)
        out["problems"] = problems + qprob
        return out
    finally:
        if p is not None and p.poll() is None:
            stop_server(p, 60)
        if not a.keep:
            shutil.rmtree(datadir, ignore_errors=True)
        if dbname and not a.keep:
            try:
                psql(a, f"DROP DATABASE IF EXISTS {dbname}")
            except RuntimeError as e:
                log(f"WARNING: {e}")


# ---------------------------------------------------------------------------- InfluxDB

def ensure_influxd():
    if shutil.which("influxd"):
        return True
    log("influxd missing: apt-get install -y influxdb influxdb-client")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "influxdb", "influxdb-client"], env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        log(r.stderr[-2000:])
        return False
    # The package may try to start its service; policy-rc.d normally prevents it.
    running = subprocess.run(["pgrep", "-x", "influxd"], capture_output=True, text=True).stdout
    if running.strip():
        subprocess.run(["service", "influxdb", "stop"], capture_output=True, timeout=60)
    return bool(shutil.which("influxd"))


def run_influx(a, orig_lp, writers, qdevs, ndev):
    if not ensure_influxd():
        return [{"tool": "influxdb", "error": "influxd not available"}]
    env = dict(os.environ)
    if ndev != 1000 or qdevs != Q.QUERY_DEVICES:
        env.update(BENCH_DEVICES=",".join(map(str, qdevs)), BENCH_NDEV=str(ndev))
    cmd = [sys.executable, str(SHARED_BENCH / "influx_bench.py"), "--lp", str(orig_lp),
           "--runs", str(a.runs), "--writers", str(writers), "--query-reps", str(a.query_reps)]
    log("influx: " + " ".join(cmd))
    errlog = Path(a.workdir) / f"influx_bench-w{writers}.log"
    with open(errlog, "w") as ef:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=ef, text=True, env=env,
                           timeout=a.runs * 1200 + 300)
    res = []
    for ln in r.stdout.splitlines():
        if ln.startswith("{"):
            d = json.loads(ln)
            d["loadavg_after"] = loadavg()
            res.append(d)
    if r.returncode != 0 or not res:
        res.append({"tool": "influxdb", "writers": writers, "error": f"exit {r.returncode}",
                    "stderr_tail": errlog.read_text()[-1500:]})
    return res


# ---------------------------------------------------------------------------- report

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec, rng=None):
    if v is None:
        return "–"
    s = format(v, spec)
    if rng and len(rng) > 1 and min(rng) != max(rng):
        s += f" ({format(min(rng), spec)}–{format(max(rng), spec)})"
    return s


def table(results):
    groups = {}
    for r in results:
        if "error" in r:
            continue
        if r["tool"] == "wattline":
            name = {"sqlite": "Wattline SQLite", "postgres": "Wattline PostgreSQL"}[r["backend"]]
        else:
            v = r.get("version", "")
            m = re.search(r"v?(\d+\.\d+\.\d+)", v)
            name = f"InfluxDB {m.group(1) if m else ''}".strip()
        groups.setdefault((name, r["writers"]), []).append(r)
    rows = ["| backend | writers | runs | readings/s | server CPU µs/reading | bytes/reading on disk "
            "| (a) ms | (b) ms | (c) ms | peak RSS MiB | load avg (1 min) before → after load |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for (name, w), rs in groups.items():
        iw = rs[0]["tool"] == "wattline"
        rate = [r["readings_per_s"] if iw else r["points_per_s"] for r in rs]
        cpu = [r["total_cpu_us_per_reading"] if iw else r["server_cpu_us_per_point"] for r in rs]
        bpr = [r["bytes_per_reading"] if iw else r["bytes_per_point"] for r in rs]
        qs = {k: [r["queries"][k]["median_ms"] for r in rs] for k in
              (("a_minute_avg_day", "b_hour_energy_year", "c_last_all") if iw else
               ("a_minute_avg_day", "b_hour_sum_all", "c_last_all"))}
        rss = [r.get("peak_rss_kb") / 1024 if r.get("peak_rss_kb") else None for r in rs]
        if iw:
            la = ", ".join(f"{r['loadavg_before'][0]} → {r['loadavg_after'][0]}" for r in rs)
        else:
            la = ", ".join(f"{r.get('loadavg1_before')} → {r.get('loadavg_after', ['?'])[0]}"
                           for r in rs)
        cpu_s = fmt(med(cpu), ".2f", cpu)
        if iw and rs[0]["backend"] == "postgres":
            wl = med([r["server_cpu_us_per_reading"] for r in rs])
            cpu_s += f" (Wattline {wl:.2f} + PostgreSQL {med(cpu) - wl:.2f})"
        qv = list(qs.values())
        rows.append(f"| {name} | {w} | {len(rs)} | {fmt(med(rate), ',.0f', rate)} | {cpu_s} | "
                    f"{fmt(med(bpr), '.2f', bpr)} | {fmt(med(qv[0]), '.2f', qv[0])} | "
                    f"{fmt(med(qv[1]), '.2f', qv[1])} | {fmt(med(qv[2]), '.2f', qv[2])} | "
                    f"{fmt(med(rss), '.0f')} | {la} |")
        summary[(name, w)] = {"rate": med(rate), "bpr": med(bpr)}
    ratios = []
    for (name, w), s in summary.items():
        if name != "Wattline SQLite":
            continue
        for (n2, w2), s2 in summary.items():
            if n2.startswith("InfluxDB") and w2 == w:
                ratios.append(f"- Wattline SQLite / {n2}, {w} writer(s): ingest rate "
                              f"{s['rate'] / s2['rate']:.2f}×, bytes/reading "
                              f"{s['bpr'] / s2['bpr']:.2f}×")
    return "\n".join(rows), ratios


def take_lock(path, wait_s):
    """One benchmark at a time on this machine: concurrent runs would share ports, dirs and
    CPU. Waits at most wait_s for another run_bench.py to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    t = time.time()
    for i in range(int(wait_s / 2) + 2):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {' '.join(sys.argv)}\n")
            f.flush()
            return f
        except BlockingIOError:
            if time.time() - t >= wait_s:
                break
            if i == 0:
                f.seek(0)
                log(f"another benchmark holds {path}: {f.read().strip()}; waiting up to "
                    f"{wait_s:.0f}s")
            time.sleep(2)
    f.seek(0)
    sys.exit(f"another benchmark still holds {path}: {f.read().strip()}")


def on_sigterm(signum, frame):
    # Turn SIGTERM into an exception so that `finally` stops the server and drops the database.
    raise SystemExit(128 + signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--writers", default="1", help="comma list, e.g. 1,2")
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    ap.add_argument("--duration", default=DEFAULT_DURATION)
    ap.add_argument("--datadir", default="/tmp/bench/data",
                    help="dataset dir (smaller datasets go to a sibling data-<dev>x<dur>)")
    ap.add_argument("--workdir", default="/tmp/bench/wattline",
                    help="each invocation works in its own <workdir>/<time>-<pid>/")
    ap.add_argument("--lock-wait", type=float, default=900,
                    help="seconds to wait for another run_bench.py to finish")
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "wattline"))
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release")
    ap.add_argument("--influx", dest="influx", action="store_true", default=True)
    ap.add_argument("--no-influx", dest="influx", action="store_false")
    ap.add_argument("--query-reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="ingest deadline per run (s)")
    ap.add_argument("--shutdown-timeout", type=float, default=600)
    ap.add_argument("--pg-host", default="127.0.0.1")
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--keep", action="store_true", help="keep data dirs and PG databases")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    if a.pg_host not in ("127.0.0.1", "localhost"):
        sys.exit("only 127.0.0.1 is allowed")
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            sys.exit(f"unknown backend {b}")
    writers = [int(w) for w in a.writers.split(",")]
    signal.signal(signal.SIGTERM, on_sigterm)
    lock = take_lock(Path(a.workdir).parent / "run_bench.lock", a.lock_wait)  # noqa: F841
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    a.workdir = str(Path(a.workdir) / f"{stamp}-{os.getpid()}")
    try:
        run_all(a, backends, writers, stamp)
    finally:
        if not a.keep:
            (Path(a.workdir) / "wattline-under-test").unlink(missing_ok=True)


def run_all(a, backends, writers, stamp):
    t_start = time.time()
    up0 = uptime()
    log(f"start: {up0}")
    build_state = build(a)
    # Run a private copy: other sessions rebuild target/release/wattline while we measure.
    src = Path(a.binary)
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    binary = Path(a.workdir) / "wattline-under-test"
    shutil.copy2(src, binary)
    a.binary = str(binary)
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty_files = [ln[3:] for ln in subprocess.run(
        ["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=REPO,
        capture_output=True, text=True).stdout.splitlines()]
    dirty = len(dirty_files)
    orig = ensure_dataset(a)
    kwh, nl = ensure_kwh_copy(orig)
    qdevs = pick_query_devices(a.devices)
    t = time.time()
    batches, nlines, max_ts, expect_last, qexp = load_and_scan(kwh, a.batch, qdevs)
    log(f"loaded {nlines} lines in {len(batches)} batches, {len(expect_last)} devices, "
        f"last second {max_ts} ({time.time() - t:.1f}s); query devices {qdevs}")
    data = (batches, nlines, max_ts, expect_last, qexp, qdevs)
    res_dir = Path(a.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    gi = res_dir / ".gitignore"
    if not gi.exists():
        gi.write_text("*.jsonl\n!latest.md\n")
    jsonl = res_dir / f"run-{stamp}.jsonl"
    meta = {"tool": "meta", "started": stamp, "uptime_start": up0, "git": git,
            "dirty_files": dirty_files, "build": build_state, "binary": str(src),
            "binary_sha256_16": sha,
            "binary_mtime": datetime.fromtimestamp(src.stat().st_mtime, timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ"), "dataset": str(kwh), "readings": nlines,
            "devices": len(expect_last), "query_devices": qdevs}
    results = []

    def emit(r):
        print(json.dumps(r, default=str), flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(r, default=str) + "\n")

    emit(meta)
    for run in range(1, a.runs + 1):
        for w in writers:
            for b in backends:
                log(f"wattline {b} run {run} writers {w}  ({uptime()})")
                try:
                    r = run_wattline(a, b, run, w, data, stamp)
                except Exception as e:  # report and go on with the next configuration
                    r = {"tool": "wattline", "backend": b, "run": run, "writers": w,
                         "error": f"{type(e).__name__}: {e}"}
                emit(r)
                results.append(r)
    del batches, data
    if a.influx:
        for w in writers:
            for r in run_influx(a, orig, w, qdevs, len(expect_last)):
                emit(r)
                results.append(r)
    up1 = uptime()
    tab, ratios = table(results)
    problems = [f"- {r.get('backend', r['tool'])} run {r.get('run')} w{r.get('writers')}: {p}"
                for r in results for p in (r.get("problems") or [])]
    problems += [f"- {r.get('backend', r['tool'])} run {r.get('run')} w{r.get('writers')}: "
                 f"ERROR {r['error']}" for r in results if "error" in r]
    problems += [f"- {r['backend']} run {r['run']} w{r['writers']}: load errors "
                 f"{r['load_errors']}" for r in results if r.get("load_errors")]
    md = [f"# Wattline storage benchmark — {stamp}", "",
          f"Dataset: {nlines:,} readings ({len(expect_last)} devices, LP precision s, energy "
          f"converted Wh→kWh by decimal shift), {a.batch}-line batches. Query devices {qdevs}; "
          f"(a) {Q.DAY0[:10]} per-minute power, (b) hourly energy over 2026, (c) latest of all "
          f"devices; median (min–max over runs) of the per-query medians, hot cache, "
          f"{a.query_reps} reps × {len(qdevs)} requests after a warm-up pass.",
          f"Wattline {git} + {dirty} uncommitted files ({', '.join(dirty_files) or 'none'}), "
          f"build: {build_state}, binary {meta['binary_mtime']} sha256 {sha}…. "
          f"Machine: {os.cpu_count()} cores, shared.",
          f"Load: start `{up0}`; end `{up1}`. Total wall time {time.time() - t_start:.0f} s.", "",
          tab, "", *ratios, "",
          "Server CPU: Wattline process (all threads) during the load; for PostgreSQL plus the "
          "cluster's backends of the bench database and its auxiliary processes. InfluxDB: "
          "influxd. Bytes on disk: SQLite `du -s -B1` of the data dir after graceful shutdown; "
          "PostgreSQL sum of pg_total_relation_size of the bench database's tables after "
          "shutdown; InfluxDB du of data+wal after full compaction (influx_bench.py).", ""]
    md += (["## Problems seen", *problems, ""] if problems else ["No check failed.", ""])
    text = "\n".join(md)
    print(text)
    (res_dir / "latest.md").write_text(text)
    log(f"wrote {res_dir / 'latest.md'} and {jsonl}; logs in {a.workdir}")



if __name__ == "__main__":
    main()
