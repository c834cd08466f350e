//! `wattline demo`: the server plus a simulated site, live within seconds.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::ADMIN;

#[test]
fn demo_starts_a_server_with_a_live_simulated_site() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0 everywhere: the demo resolves it itself, so its banner names real ports.
    let mut child = Command::new(env!("CARGO_BIN_EXE_wattline"))
        .args([
            "demo",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WATTLINE_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wattline demo");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut http, mut login) = (None, None);
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(rest) = line.split("API and dashboard: http://").nth(1) {
            http = Some(rest.trim_end_matches('/').to_owned());
        }
        // "dashboard login:   EMAIL, password in FILE (cat FILE)"
        if let Some(rest) = line.split("dashboard login:").nth(1) {
            let (email, file) = rest
                .trim()
                .split_once(", password in ")
                .expect("email and file");
            let file = file.split(" (").next().unwrap();
            login = Some((email.to_owned(), std::path::PathBuf::from(file)));
        }
        if line.contains("Ctrl-C stops it") {
            break;
        }
    }
    let http = http.expect("the demo prints the dashboard address");
    assert!(!http.ends_with(":0"), "a real port: {http}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // A newcomer can log in to the dashboard with what the banner says, and the password
    // file is the owner's alone.
    let (email, file) = login.expect("the demo prints how to log in to the dashboard");
    assert!(file.starts_with(dir.path()), "{}", file.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let password = std::fs::read_to_string(&file).unwrap();
    let status = agent
        .post(&format!("http://{http}/api/v1/auth/login"))
        .header("Content-Type", "application/json")
        .send(
            serde_json::json!({"email": email, "password": password})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200, "logging in as {email}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        let devices: serde_json::Value = agent
            .get(&format!("http://{http}/api/v1/devices"))
            .header("Authorization", &format!("Token {ADMIN}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let live: Vec<String> = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| !d["last_seen"].is_null())
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if live.len() >= 8 || Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = child.kill();
    let _ = child.wait();
    // The home over MQTT, the building over HTTP and the farm's socket meters (enrolled).
    assert!(live.iter().any(|d| d.starts_with("home-")), "{live:?}");
    assert!(live.iter().any(|d| d.starts_with("building-")), "{live:?}");
    assert!(
        live.iter().filter(|d| d.starts_with("tcp-")).count() == 3,
        "{live:?}"
    );
}
