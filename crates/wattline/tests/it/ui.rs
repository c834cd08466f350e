//! The dashboard in a real browser: `ui/e2e/run.mjs` (playwright-core driving the system's
//! headless Chromium) against a server this test starts and fills.
//!
//! Needs node, `ui/node_modules` (this test runs `npm ci` when it is missing) and
//! /usr/bin/chromium. In CI (`CI` set) a missing one fails the test; elsewhere it is skipped
//! with a loud line. Screenshots of failing steps land in target/e2e-screenshots/.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::authz::{create_user, PASSWORD};
use crate::support::{now_s, TestServer, ADMIN};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; each step has its own 10 s limit inside.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the browser tests cannot run here, if they cannot.
fn missing_tools(ui: &Path) -> Option<String> {
    let ok = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("node") {
        return Some("node is not on PATH".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if !ui.join("node_modules/playwright-core").exists() {
        if !ok("npm") {
            return Some("npm is not on PATH to install ui/node_modules".into());
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(ui)
            .output()
            .expect("run npm ci");
        if !out.status.success() {
            return Some(format!(
                "npm ci failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    None
}

fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok() {
        panic!("the dashboard's browser tests must run in CI: {why}");
    }
    eprintln!("\n!!! SKIPPING dashboard browser tests: {why} !!!\n");
}

#[test]
fn dashboard_in_headless_chromium() {
    let ui = repo().join("ui");
    if let Some(why) = missing_tools(&ui) {
        return skip_or_fail(&why);
    }
    let s = TestServer::start();
    let index = s.get("/", None);
    if !index.body.contains("/assets/") {
        return skip_or_fail("this build has no embedded dashboard (see the build warning)");
    }

    s.create_site("site-a", "Europe/Zurich");
    s.create_site("site-b", "UTC");
    s.create_site("home-c", "America/New_York");
    for (id, site) in [
        ("dev-a1", "site-a"),
        ("dev-a2", "site-a"),
        ("dev-b1", "site-b"),
        ("dev-c1", "home-c"),
    ] {
        s.create_device(id, Some(site));
    }
    create_user(&s, "owner-a@x.test", "owner", &["site-a"]);
    create_user(&s, "owner-b@x.test", "owner", &["site-b"]);
    create_user(&s, "admin@x.test", "admin", &[]);
    // A customer who sees one meter: their home's only device.
    create_user(&s, "customer@x.test", "viewer", &["home-c"]);
    // A day of minute readings on three phases (so that long ranges need rollups), and a
    // small load on the second device.
    let now = now_s();
    let mut lines = String::new();
    for m in (0..1440).rev() {
        let ts = now - 60 * m;
        for (i, phase) in ["L1", "L2", "L3"].iter().enumerate() {
            let base = 1000.0 + 300.0 * i as f64;
            let p = base + (m % 17) as f64;
            // A rising counter: kWh used since the first reading at the base load.
            let e = (1440 - m) as f64 * base / 60_000.0;
            lines.push_str(&format!(
                "m,device=dev-a1,channel={phase} power={p},voltage=230,energy={e} {ts}\n"
            ));
        }
    }
    // The customer's meter: twenty days, hourly, half a kWh an hour.
    for h in (0..480).rev() {
        let kwh = (479 - h) as f64 * 0.5;
        lines.push_str(&format!(
            "m,device=dev-c1 power={},energy={kwh} {}\n",
            400 + (h % 24) * 10,
            now - 3600 * h
        ));
    }
    lines.push_str(&format!("m,device=dev-a2 power=5 {now}\n"));
    lines.push_str(&format!("m,device=dev-b1 power=77 {now}\n"));
    s.write_lp(&lines);

    let shots = repo().join("target/e2e-screenshots");
    let mut child = Command::new("node")
        .arg("e2e/run.mjs")
        .current_dir(&ui)
        .env("WATTLINE_URL", &s.base)
        .env("WATTLINE_ADMIN_TOKEN", ADMIN)
        .env("E2E_PASSWORD", PASSWORD)
        .env("E2E_SCREENSHOTS", &shots)
        .envs(
            std::env::var_os("WATTLINE_SCREENSHOTS")
                .map(|_| ("E2E_DOCS_SCREENSHOTS", repo().join("docs/screenshots"))),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    // Output is read on threads so a chatty run cannot fill a pipe and stall.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    eprintln!("{out}");
    match status {
        Some(st) if st.success() => {}
        Some(st) => panic!(
            "browser tests failed ({st}); screenshots in {}:\n{out}\n{err}\nserver log:\n{}",
            shots.display(),
            s.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        None => panic!("browser tests did not finish within {RUN_LIMIT:?}:\n{out}\n{err}"),
    }
}
