//! Embeds the dashboard (`ui/dist`, built by Vite) into the binary.
//!
//! When `ui/dist` is missing or older than the UI's sources and `npm` is on PATH, this runs
//! `npm ci` (only when `node_modules` is missing or older than `package-lock.json`) and
//! `npm run build` first. Without npm, or with `WATTLINE_SKIP_UI=1`, it embeds whatever
//! `ui/dist` holds, or nothing; the server then answers `/` with how to build the UI.
//!
//! Only the UI's sources and `dist/index.html` are watched, never `node_modules`, so a
//! Rust-only change does not make cargo scan or rebuild anything here. The embedded files are
//! read with `include_bytes!`, so rustc itself notices when one of them changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// What a UI build depends on, relative to `ui/`.
const SOURCES: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ui = manifest.join("../../ui");
    let dist = ui.join("dist");
    println!("cargo:rerun-if-env-changed=WATTLINE_SKIP_UI");
    for s in SOURCES {
        if ui.join(s).exists() {
            println!("cargo:rerun-if-changed={}", ui.join(s).display());
        }
    }
    // A UI built by hand, or a deleted dist/, is noticed through its index.html (while it is
    // missing, cargo reruns this script on every build). A UI built here is dated to its
    // sources (see `build_ui`), so that does not cause a second run.
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );

    let skip = std::env::var("WATTLINE_SKIP_UI").is_ok_and(|v| !v.is_empty() && v != "0");
    if !skip && ui.join("package.json").exists() && stale(&ui, &dist) {
        if let Err(why) = build_ui(&ui) {
            println!("cargo:warning=the dashboard was not built: {why}");
            println!(
                "cargo:warning=build it with: cd ui && npm ci && npm run build (then rebuild)"
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("ui_assets.rs");
    std::fs::write(&out, assets_source(&dist)).expect("write ui_assets.rs");
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).ok()?;
    children
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .chain(own)
        .max()
}

fn stale(ui: &Path, dist: &Path) -> bool {
    let Some(built) = newest(&dist.join("index.html")) else {
        return true;
    };
    SOURCES
        .iter()
        .filter_map(|s| newest(&ui.join(s)))
        .any(|t| t > built)
}

fn build_ui(ui: &Path) -> Result<(), String> {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    match Command::new(npm).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("npm is not on PATH".into()),
    }
    // cargo build, clippy and test may run this script at once (different profiles); they
    // share ui/, so one builds while the others wait.
    let _lock = Lock::take(&ui.join(".build-lock"))?;
    if !stale(ui, &ui.join("dist")) {
        return Ok(());
    }
    let lock_json = ui.join("package-lock.json");
    let installed = ui.join("node_modules/.package-lock.json");
    if newest(&installed).is_none_or(|i| newest(&lock_json).is_some_and(|l| l > i)) {
        run(Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(ui))?;
    }
    run(Command::new(npm).args(["run", "build"]).current_dir(ui))?;
    // rustc tracks the embedded files; written during this build they would look newer than
    // it and cost a second rebuild of this crate next time. Dating them to the newest source
    // they were built from keeps them fresh for `stale` and old for cargo.
    let Some(sources) = SOURCES.iter().filter_map(|s| newest(&ui.join(s))).max() else {
        return Ok(());
    };
    let mut built = Vec::new();
    files(&ui.join("dist"), &mut built);
    for f in built {
        let file = std::fs::File::options().write(true).open(&f);
        let _ = file.and_then(|file| file.set_modified(sources));
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join(" | ")
    };
    Err(format!(
        "{cmd:?} failed ({}): {} {}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    ))
}

/// A directory as a lock: creating it is atomic. One older than the longest build is left
/// over from a killed build and is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> Result<Lock, String> {
        const STALE: Duration = Duration::from_secs(15 * 60);
        let deadline = Instant::now() + STALE;
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return Ok(Lock(path.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = newest(path)
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    if age > STALE {
                        let _ = std::fs::remove_dir(path);
                        continue;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{} is held by another build", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// `pub static ASSETS: &[(&str, &[u8])]`, paths relative to dist/ with `/` separators.
fn assets_source(dist: &Path) -> String {
    let mut list = Vec::new();
    if dist.join("index.html").exists() {
        files(dist, &mut list);
    }
    list.sort();
    let mut src = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for p in &list {
        let rel = p.strip_prefix(dist).expect("under dist");
        let name: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let abs = p.canonicalize().expect("file exists");
        let _ = writeln!(
            src,
            "    ({:?}, include_bytes!({:?})),",
            name.join("/"),
            abs.display().to_string()
        );
    }
    src.push_str("];\n");
    src
}
