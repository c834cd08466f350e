use serde_json::json;

use crate::support::*;

#[test]
fn sites_and_devices_lifecycle() {
    let s = TestServer::start();
    // The default site exists from the first start.
    let sites = s.get("/api/v1/sites", Some(ADMIN)).json();
    assert_eq!(sites[0]["id"], "default");

    s.create_site("home", "Europe/Zurich");
    let r = s.post_json(
        "/api/v1/sites",
        Some(ADMIN),
        &json!({"id": "home", "name": "again"}),
    );
    assert_eq!((r.status, r.code().as_str()), (409, "conflict"));
    let r = s.post_json(
        "/api/v1/sites",
        Some(ADMIN),
        &json!({"name": "x", "timezone": "Mars/Base"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "bad_timezone"));
    let r = s.post_json(
        "/api/v1/sites",
        Some(ADMIN),
        &json!({"name": "x", "colour": "red"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "bad_json"),
        "unknown fields are refused"
    );
    let r = s.patch_json(
        "/api/v1/sites/home",
        Some(ADMIN),
        &json!({"timezone": "America/New_York"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["timezone"], "America/New_York");

    // A device is created with a token shown once.
    let r = s.post_json("/api/v1/devices", Some(ADMIN), &json!({"name": "Fridge plug", "site": "home", "kind": "plug", "labels": {"room": "kitchen"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.len() > 40);
    let got = s.get(&format!("/api/v1/devices/{id}"), Some(ADMIN)).json();
    assert_eq!(got["labels"]["room"], "kitchen");
    assert!(got.get("token").is_none(), "the token is never shown again");
    assert!(!std::fs::read(s.data_dir().join("wattline.db"))
        .unwrap()
        .windows(token.len())
        .any(|w| w == token.as_bytes()));

    // Unknown site, bad id, duplicate id.
    let r = s.post_json(
        "/api/v1/devices",
        Some(ADMIN),
        &json!({"name": "x", "site": "nowhere"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "unknown_site"));
    let r = s.post_json(
        "/api/v1/devices",
        Some(ADMIN),
        &json!({"id": "a b", "name": "x"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "bad_id"));
    s.create_device("dup", None);
    let r = s.post_json(
        "/api/v1/devices",
        Some(ADMIN),
        &json!({"id": "dup", "name": "x"}),
    );
    assert_eq!(r.status, 409);

    // Patch, rotate (the old token stops at once), delete with its data.
    let r = s.patch_json(
        &format!("/api/v1/devices/{id}"),
        Some(ADMIN),
        &json!({"name": "Fridge"}),
    );
    assert_eq!(r.json()["name"], "Fridge");
    let line = format!("e,device={id} power=80 {}", now_s());
    assert_eq!(
        s.post_raw("/write?precision=s", Some(&token), line.clone())
            .status,
        204
    );
    let rotated = s
        .post_raw(&format!("/api/v1/devices/{id}/token"), Some(ADMIN), "")
        .json();
    let new_token = rotated["token"].as_str().unwrap();
    assert_eq!(
        s.post_raw("/write?precision=s", Some(&token), line.clone())
            .status,
        401
    );
    assert_eq!(
        s.post_raw("/write?precision=s", Some(new_token), line)
            .status,
        204
    );
    let r = s.delete("/api/v1/sites/home", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (409, "site_not_empty"));
    assert_eq!(
        s.delete(&format!("/api/v1/devices/{id}"), Some(ADMIN))
            .status,
        204
    );
    assert_eq!(
        s.get(&format!("/api/v1/devices/{id}"), Some(ADMIN)).status,
        404
    );
    assert_eq!(
        s.get(&format!("/api/v1/devices/{id}/series"), Some(ADMIN))
            .status,
        404
    );
    assert_eq!(
        s.post_raw("/write?precision=s", Some(new_token), "e,device=x power=1")
            .status,
        401
    );
    assert_eq!(s.delete("/api/v1/sites/home", Some(ADMIN)).status, 204);
    assert_eq!(s.get("/api/v1/sites/home", Some(ADMIN)).status, 404);
    assert_eq!(s.delete("/api/v1/devices/nope", Some(ADMIN)).status, 404);
}

#[test]
fn admin_token_is_generated_once_and_private() {
    let opts = Options {
        env: vec![("WATTLINE_ADMIN_TOKEN".into(), String::new())],
        ..Default::default()
    };
    let s = TestServer::start_with(opts);
    let path = s.data_dir().join("admin-token");
    let token = std::fs::read_to_string(&path).expect("admin-token written");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        s.log().contains("admin-token"),
        "the log says where the token is"
    );
    assert_eq!(s.get("/api/v1/sites", Some(token.trim())).status, 200);
    assert_eq!(s.get("/api/v1/sites", Some(ADMIN)).status, 401);
    let s = s.restart();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        token,
        "kept across restarts"
    );
    assert_eq!(s.get("/api/v1/sites", Some(token.trim())).status, 200);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let s = TestServer::start();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wattline"))
        .args(["serve", "--http", &addr, "--data-dir"])
        .arg(s.data_dir().join("other"))
        .env("WATTLINE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("--http"), "{err}");
}
