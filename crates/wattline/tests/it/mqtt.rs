//! MQTT black-box tests: the built-in broker spoken to with `mosquitto_pub`/`mosquitto_sub`,
//! and external-broker mode against a private Mosquitto with two Wattline nodes.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}"))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn host_port(addr: &str) -> (String, String) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.to_owned())
}

/// `mosquitto_pub` with a time limit; `args` after host and port.
pub fn mosquitto_pub(addr: &str, args: &[&str]) -> Output {
    let (host, port) = host_port(addr);
    let child = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    wait_output(child, Duration::from_secs(20))
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A device with MQTT credentials (and optionally a binding); returns (username, password).
fn device_with_mqtt(s: &TestServer, id: &str, binding: Option<Value>) -> (String, String) {
    let mut body = json!({"id": id, "name": id});
    if let Some(b) = binding {
        body["binding"] = b;
    }
    let r = s.post_json("/api/v1/devices", Some(ADMIN), &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        v["mqtt"]["username"].as_str().expect("username").to_owned(),
        v["mqtt"]["password"].as_str().expect("password").to_owned(),
    )
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(s: &TestServer, name: &str) -> u64 {
    let body = s.get("/metrics", Some(ADMIN)).body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .expect("metric value")
}

#[test]
fn anonymous_and_wrong_credentials_are_refused() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, _) = device_with_mqtt(&s, "m1", None);
    for version in ["mqttv311", "mqttv5"] {
        let anon = mosquitto_pub(
            &mqtt,
            &["-V", version, "-t", "wattline/m1/readings", "-m", "{}"],
        );
        assert!(!anon.status.success(), "{}", text(&anon));
        assert!(
            text(&anon).to_lowercase().contains("not authori"),
            "{}",
            text(&anon)
        );
        let wrong = mosquitto_pub(
            &mqtt,
            &[
                "-V",
                version,
                "-u",
                &user,
                "-P",
                "wrong",
                "-t",
                "wattline/m1/readings",
                "-m",
                "{}",
            ],
        );
        assert!(!wrong.status.success(), "{}", text(&wrong));
        assert!(
            text(&wrong)
                .to_lowercase()
                .contains("bad user name or password"),
            "{}",
            text(&wrong)
        );
    }
    assert!(metric(&s, "wattline_mqtt_connects_refused_total") >= 4);
    assert!(s.log().contains("mqtt: connection refused"));
}

#[test]
fn qos1_reading_survives_kill_9_right_after_puback() {
    let mut s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(&s, "m1", None);
    let ts = ms("2026-11-20T10:00:00Z");
    for version in ["mqttv311", "mqttv5"] {
        let payload = json!([{"ts": ts, "power": 512.5, "voltage": 230.1},
                             {"ts": ts + 1000, "power": 515.0, "channel": "L2"}]);
        let out = mosquitto_pub(
            &mqtt,
            &[
                "-V",
                version,
                "-q",
                "1",
                "-u",
                &user,
                "-P",
                &pass,
                "-t",
                "wattline/m1/readings",
                "-m",
                &payload.to_string(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    // mosquitto_pub exits once the PUBACK arrived; nothing else may be needed for durability.
    s.kill9();
    let s = s.restart();
    let rows = s.export_rows("m1", ms("2026-11-20T09:00:00Z"), ms("2026-11-20T11:00:00Z"));
    // Both versions sent the same two readings: stored once each (duplicates overlay).
    assert_eq!(
        rows,
        [
            "m1,L2,2026-11-20T10:00:01Z,,,515,,,,,,",
            "m1,main,2026-11-20T10:00:00Z,230.1,,512.5,,,,,,"
        ],
    );
}

#[test]
fn acl_binds_identity_to_topics() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user_a, pass_a) = device_with_mqtt(&s, "a", None);
    let _ = device_with_mqtt(&s, "b", Some(json!({"format": "tasmota", "id": "plugb"})));
    let ts = ms("2026-11-20T10:00:00Z");
    let payload = json!({"ts": ts, "power": 1}).to_string();
    // MQTT 5: the PUBACK says "not authorized".
    let v5 = mosquitto_pub(
        &mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            &user_a,
            "-P",
            &pass_a,
            "-t",
            "wattline/b/readings",
            "-m",
            &payload,
        ],
    );
    assert!(
        text(&v5).to_lowercase().contains("not authori"),
        "{}",
        text(&v5)
    );
    // 3.1.1 cannot say no in a PUBACK: acknowledged, not stored, logged and counted.
    let v311 = mosquitto_pub(
        &mqtt,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-u",
            &user_a,
            "-P",
            &pass_a,
            "-t",
            "wattline/b/readings",
            "-m",
            &payload,
        ],
    );
    assert!(v311.status.success(), "{}", text(&v311));
    // Another device's vendor topic is refused too.
    let vendor = mosquitto_pub(
        &mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            &user_a,
            "-P",
            &pass_a,
            "-t",
            "tele/plugb/SENSOR",
            "-m",
            &fixture("tasmota/sensor_single.json"),
        ],
    );
    assert!(
        text(&vendor).to_lowercase().contains("not authori"),
        "{}",
        text(&vendor)
    );
    assert_eq!(metric(&s, "wattline_mqtt_publishes_denied_total"), 3);
    assert!(s.log().contains("publish refused by the ACL"));
    let rows = s.export_rows("b", ms("2026-11-20T09:00:00Z"), ms("2026-11-20T11:00:00Z"));
    assert!(rows.is_empty(), "{rows:?}");
    // Subscriptions: only the device's own command topics.
    let (host, port) = host_port(&mqtt);
    for (filter, allowed) in [
        ("wattline/a/commands", true),
        ("wattline/b/commands", false),
        ("wattline/a/readings", false),
        ("#", false),
    ] {
        let sub = Command::new("mosquitto_sub")
            .args([
                "-h", &host, "-p", &port, "-V", "mqttv5", "-u", &user_a, "-P", &pass_a, "-t",
                filter, "-W", "2", "-v",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        let out = wait_output(sub, Duration::from_secs(10));
        let denied = text(&out).contains("denied");
        assert_eq!(!denied, allowed, "filter {filter}: {}", text(&out));
    }
}

#[test]
fn tasmota_binding_pending_accept_and_lwt() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(
        &s,
        "plug-1",
        Some(json!({"format": "tasmota", "id": "plug1"})),
    );
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "tele/plug1/SENSOR",
            "-m",
            &fixture("tasmota/sensor_single.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let latest = s.get("/api/v1/devices/plug-1", Some(ADMIN)).json();
    assert_eq!(latest["latest"]["main"]["energy"], json!(3.705), "{latest}");
    assert_eq!(latest["latest"]["main"]["power"], json!(5.0), "{latest}");

    // A plug nobody registered, publishing with the site's credential, becomes pending.
    let token = s
        .post_json(
            "/api/v1/sites/default/tokens",
            Some(ADMIN),
            &json!({"name": "plugs"}),
        )
        .json()["token"]
        .as_str()
        .expect("site token")
        .to_owned();
    // The username is a device's, the password the site token: a gateway, not a bad password.
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            &user,
            "-P",
            &token,
            "-t",
            "tele/plug9/SENSOR",
            "-m",
            &fixture("tasmota/sensor_two_channels.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let pending = s.get("/api/v1/pending-devices", Some(ADMIN)).json();
    let list = pending["pending"].as_array().expect("list");
    assert_eq!(list.len(), 1, "{pending}");
    assert_eq!(list[0]["format"], "tasmota");
    assert_eq!(list[0]["id"], "plug9");
    assert_eq!(list[0]["last_topic"], "tele/plug9/SENSOR");
    assert_eq!(
        s.get("/api/v1/devices", Some(ADMIN))
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing stored"
    );

    // One click: the device exists, is bound, and its next message is stored.
    let r = s.post_raw(
        "/api/v1/pending-devices/tasmota/plug9/accept",
        Some(ADMIN),
        "",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    assert_eq!(created["id"], "tasmota-plug9");
    assert!(created["mqtt"]["password"].is_string());
    assert!(
        s.get("/api/v1/pending-devices", Some(ADMIN)).json()["pending"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            "any",
            "-P",
            &token,
            "-t",
            "tele/plug9/SENSOR",
            "-m",
            &fixture("tasmota/sensor_two_channels.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dev = s.get("/api/v1/devices/tasmota-plug9", Some(ADMIN)).json();
    assert_eq!(dev["latest"]["main"]["energy"], json!(12.412), "{dev}");

    // Rejected identities are dropped and not listed again.
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            "any",
            "-P",
            &token,
            "-t",
            "tele/intruder/SENSOR",
            "-m",
            &fixture("tasmota/sensor_single.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        s.post_raw(
            "/api/v1/pending-devices/tasmota/intruder/reject",
            Some(ADMIN),
            ""
        )
        .status,
        204
    );
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            "any",
            "-P",
            &token,
            "-t",
            "tele/intruder/SENSOR",
            "-m",
            &fixture("tasmota/sensor_single.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        s.get("/api/v1/pending-devices", Some(ADMIN)).json()["pending"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        metric(&s, "wattline_mqtt_rejected_identity_messages_total"),
        1
    );

    // LWT: offline, then online.
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-r",
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "tele/plug1/LWT",
            "-m",
            "Offline",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let a = &s.get("/api/v1/devices/plug-1", Some(ADMIN)).json()["availability"];
    assert_eq!(a["online"], false, "{a}");
    assert_eq!(a["source"], "lwt", "{a}");
}

#[test]
fn malformed_payloads_are_refused_named_and_counted_and_good_data_still_flows() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(
        &s,
        "plug-1",
        Some(json!({"format": "tasmota", "id": "plug1"})),
    );
    for bad in [
        "{\"ENERGY\":{\"Power\":\"abc\"}}",
        "{not json",
        "{\"ENERGY\":{\"Power\":1e15}}",
    ] {
        let out = mosquitto_pub(
            &mqtt,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-u",
                &user,
                "-P",
                &pass,
                "-t",
                "tele/plug1/SENSOR",
                "-m",
                bad,
            ],
        );
        assert!(
            text(&out).to_lowercase().contains("payload format invalid"),
            "{bad}: {}",
            text(&out)
        );
    }
    assert!(
        s.log().contains("tele/plug1/SENSOR"),
        "the refusal names the topic"
    );
    assert_eq!(metric(&s, "wattline_mqtt_rejected_total"), 3);
    let list = s.get("/api/v1/rejected-readings", Some(ADMIN)).json();
    let mqtt_rejections: Vec<&Value> = list["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["transport"] == "mqtt")
        .collect();
    assert_eq!(mqtt_rejections.len(), 3, "{list}");
    assert!(
        mqtt_rejections
            .iter()
            .all(|e| e["actor"].as_str().unwrap().contains("plug-1")
                && e["message"].as_str().unwrap().contains("tele/plug1/SENSOR")),
        "each names the device and the topic: {list}"
    );
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "tele/plug1/SENSOR",
            "-m",
            &fixture("tasmota/sensor_single.json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dev = s.get("/api/v1/devices/plug-1", Some(ADMIN)).json();
    assert_eq!(dev["latest"]["main"]["power"], json!(5.0), "{dev}");
}

#[test]
fn revoking_a_credential_disconnects_and_rotation_replaces_it() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(&s, "m1", None);
    let (host, port) = host_port(&mqtt);
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "wattline/m1/commands",
            "-v",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    wait_until("device online", Duration::from_secs(10), || {
        s.get("/api/v1/devices/m1", Some(ADMIN)).json()["availability"]["online"] == true
    });
    // A retained command reaches the subscribed device.
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            "admin",
            "-P",
            ADMIN,
            "-t",
            "wattline/m1/commands",
            "-m",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.delete("/api/v1/devices/m1/mqtt", Some(ADMIN)).status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    // mosquitto_sub reconnects by itself; with the credential gone it is refused.
    while Instant::now() < deadline && !s.log().contains("disconnected by the server") {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sub.kill();
    let out = sub.wait_with_output().expect("sub output");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wattline/m1/commands off"),
        "{}",
        text(&out)
    );
    assert!(
        s.log().contains("disconnected by the server"),
        "{}",
        s.log()
    );
    let refused = mosquitto_pub(
        &mqtt,
        &[
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "wattline/m1/readings",
            "-m",
            "{}",
        ],
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    // Rotation: a new password works.
    let r = s.post_raw("/api/v1/devices/m1/mqtt", Some(ADMIN), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let new_pass = r.json()["mqtt"]["password"].as_str().unwrap().to_owned();
    let ok = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            &user,
            "-P",
            &new_pass,
            "-t",
            "wattline/m1/readings",
            "-m",
            "{\"power\": 5}",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn retained_messages_reach_later_subscribers() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(&s, "m1", None);
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-r",
            "-u",
            "admin",
            "-P",
            ADMIN,
            "-t",
            "wattline/m1/commands",
            "-m",
            "reboot",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (host, port) = host_port(&mqtt);
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "wattline/m1/commands",
            "-C",
            "1",
            "-W",
            "5",
            "-v",
            "-F",
            "%t %p %r",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let out = wait_output(sub, Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "wattline/m1/commands reboot 1",
        "{}",
        text(&out)
    );
}

#[test]
fn a_taken_mqtt_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wattline"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WATTLINE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run wattline");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--mqtt"),
        "{err}"
    );
}

/// A private Mosquitto on a free port, stopped on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(f, "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000").unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_nodes_split_one_stream_through_a_shared_subscription_each_reading_stored_once() {
    let Some(db) = fresh_pg_database("mqtt_two_nodes") else {
        return;
    };
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let options = Options {
        database: Some(db.clone()),
        args: vec!["--mqtt-broker".into(), url.clone()],
        ..Default::default()
    };
    let a = TestServer::start_with(options.clone());
    for i in 0..4 {
        a.create_device(&format!("n{i}"), None);
    }
    // The second node loads the devices at start.
    let b = TestServer::start_with(options);
    assert!(
        a.wait_for_log("connected to the external broker")
            && b.wait_for_log("connected to the external broker")
    );
    std::thread::sleep(Duration::from_millis(500));
    let start = ms("2026-11-20T00:00:00Z");
    let per_device = 1500;
    let mut lines = String::new();
    for k in 0..per_device {
        lines.push_str(&json!({"ts": start + k * 1000, "power": k, "voltage": 230}).to_string());
        lines.push('\n');
    }
    let addr = format!("127.0.0.1:{}", broker.port);
    let publishers: Vec<Child> = (0..4)
        .map(|i| {
            let mut child = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &broker.port.to_string(),
                    "-q",
                    "1",
                    "-l",
                    "-t",
                    &format!("wattline/n{i}/readings"),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_pub");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(lines.as_bytes())
                .unwrap();
            child
        })
        .collect();
    for p in publishers {
        let out = wait_output(p, Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out));
    }
    let _ = addr;
    let total = 4 * per_device as u64;
    wait_until("every reading stored", Duration::from_secs(60), || {
        metric(&a, "wattline_mqtt_readings_total") + metric(&b, "wattline_mqtt_readings_total")
            >= total
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ra, rb) = (
        metric(&a, "wattline_mqtt_readings_total"),
        metric(&b, "wattline_mqtt_readings_total"),
    );
    assert_eq!(
        ra + rb,
        total,
        "node a {ra}, node b {rb}: each message to exactly one node"
    );
    assert!(ra > 0 && rb > 0, "both nodes took part: a {ra}, b {rb}");
    for i in 0..4 {
        let rows = a.export_rows(
            &format!("n{i}"),
            ms("2026-11-19T23:00:00Z"),
            ms("2026-11-21T00:00:00Z"),
        );
        assert_eq!(rows.len(), per_device as usize, "device n{i}");
    }
    drop(a);
    drop(b);
    drop_pg_database(&db);
}

#[test]
fn mqtts_listener_takes_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed");
    assert!(made.status.success(), "{}", text(&made));
    let s = TestServer::start_with(Options {
        args: vec!["--mqtts".into(), "127.0.0.1:0".into()],
        env: vec![
            ("WATTLINE_MQTT_TLS_CERT".into(), cert.display().to_string()),
            ("WATTLINE_MQTT_TLS_KEY".into(), key.display().to_string()),
        ],
        ..Default::default()
    });
    assert!(s.wait_for_log("listening on mqtts://"));
    let log = s.log();
    let addr: String = log
        .split("listening on mqtts://")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    let (user, pass) = device_with_mqtt(&s, "m1", None);
    let ts = ms("2026-11-20T10:00:00Z");
    let out = mosquitto_pub(
        &addr,
        &[
            "--cafile",
            &cert.display().to_string(),
            "-q",
            "1",
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "wattline/m1/readings",
            "-m",
            &json!({"ts": ts, "power": 42}).to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rows = s.export_rows("m1", ts, ts + 1);
    assert_eq!(rows, ["m1,main,2026-11-20T10:00:00Z,,,42,,,,,,"]);
    // Plain MQTT on the TLS port is not MQTT: refused without harm.
    let plain = mosquitto_pub(
        &addr,
        &[
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "wattline/m1/readings",
            "-m",
            "{}",
        ],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
}

#[test]
fn persistent_session_keeps_subscriptions_and_queued_qos1_messages() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (user, pass) = device_with_mqtt(&s, "m1", None);
    let (host, port) = host_port(&mqtt);
    let sub = |extra: &[&str]| {
        let child = Command::new("mosquitto_sub")
            .args([
                "-h",
                &host,
                "-p",
                &port,
                "-u",
                &user,
                "-P",
                &pass,
                "-i",
                "m1-session",
                "-c",
                "-q",
                "1",
                "-v",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        wait_output(child, Duration::from_secs(10))
    };
    // Subscribe with clean session off, then leave.
    let first = sub(&["-t", "wattline/m1/commands", "-W", "1"]);
    assert!(!text(&first).contains("denied"), "{}", text(&first));
    // Published while the device is away: kept for its session.
    for cmd in ["on", "off"] {
        let out = mosquitto_pub(
            &mqtt,
            &[
                "-q",
                "1",
                "-u",
                "admin",
                "-P",
                ADMIN,
                "-t",
                "wattline/m1/commands",
                "-m",
                cmd,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    // Back without subscribing again: the session delivers both, in order.
    let second = sub(&["-C", "2", "-W", "5", "-t", "wattline/m1/nothing-new"]);
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["wattline/m1/commands on", "wattline/m1/commands off"],
        "{}",
        text(&second)
    );
}

#[test]
fn clemap_binary_and_esp32_cycles_are_stored_per_binding() {
    let s = TestServer::start();
    let mqtt = s.mqtt.clone().expect("broker address");
    let (cu, cp) = device_with_mqtt(
        &s,
        "clemap-1",
        Some(json!({"format": "clemap", "id": "SE05000160"})),
    );
    let out = mosquitto_pub(
        &mqtt,
        &[
            "-q",
            "1",
            "-u",
            &cu,
            "-P",
            &cp,
            "-t",
            "one-minute/SE05000160",
            "-f",
            &format!("{FIXTURES}/seed-clemap/type17_one_minute.bin"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dev = s.get("/api/v1/devices/clemap-1", Some(ADMIN)).json();
    let power: f64 = ["L1", "L2", "L3"]
        .iter()
        .map(|p| {
            dev["latest"][p]["power"]
                .as_f64()
                .unwrap_or_else(|| panic!("{p}: {dev}"))
        })
        .sum();
    assert!((power - 567.318).abs() < 1e-6, "{power}");
    assert_eq!(dev["latest"]["L1"]["voltage"], json!(235.491), "{dev}");

    let (eu, ep) = device_with_mqtt(
        &s,
        "miner-1",
        Some(json!({"format": "esp32", "id": "Smart_Energie"})),
    );
    for (topic, payload) in [
        ("Smart_Energie/temps", "0 Days, 00:31:38"),
        ("Smart_Energie/data/kWh", "0.06436kWh"),
        ("Smart_Energie/data/Current", "0.00A"),
        ("Smart_Energie/data/Voltage", "8.37V"),
    ] {
        // One connection per message, as QoS 1: the cycle is merged across connections of the
        // same credential too, since the adapter memory follows the identity.
        let out = mosquitto_pub(
            &mqtt,
            &["-q", "1", "-u", &eu, "-P", &ep, "-t", topic, "-m", payload],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let dev = s.get("/api/v1/devices/miner-1", Some(ADMIN)).json();
    assert_eq!(dev["latest"]["main"]["energy"], json!(0.06436), "{dev}");
    assert_eq!(dev["latest"]["main"]["voltage"], json!(8.37), "{dev}");
    assert_eq!(dev["latest"]["main"]["current"], json!(0.0), "{dev}");
}
