//! Accounts and authorization, against the built binary.
//!
//! `every_route_checks_who_asks` walks **every** route the router serves
//! (`wattline_web::routes()`), calling each with five callers (anonymous, a viewer of site A,
//! the owner of site B, the owner of site A, an admin user), all through real browser sessions
//! (cookie plus CSRF header), and checks each answer. A route without a case here fails the
//! test, so a new route cannot skip its access check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Reply, TestServer, ADMIN};

pub const PASSWORD: &str = "long enough passphrase 42";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    Viewer,
    OtherOwner,
    Owner,
    Admin,
}

const CALLERS: [Who; 5] = [
    Who::Anonymous,
    Who::Viewer,
    Who::OtherOwner,
    Who::Owner,
    Who::Admin,
];

/// A logged-in browser: its cookie and CSRF token.
#[derive(Clone)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    fn headers(&self) -> Vec<(&str, &str)> {
        vec![("Cookie", &self.cookie), ("X-CSRF-Token", &self.csrf)]
    }
}

/// Logs in and returns the session, asserting success.
pub fn login(s: &TestServer, email: &str, password: &str) -> Session {
    let r = s.request(
        "POST",
        "/api/v1/auth/login",
        &[],
        Some((
            "application/json",
            json!({"email": email, "password": password})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(r.status, 200, "login {email}: {}", r.body);
    let set_cookie = r.header("set-cookie").expect("a session cookie").to_owned();
    let cookie = set_cookie.split(';').next().unwrap().trim().to_owned();
    Session {
        cookie,
        csrf: r.json()["csrf_token"].as_str().unwrap().to_owned(),
    }
}

pub fn create_user(s: &TestServer, email: &str, role: &str, sites: &[&str]) -> String {
    let r = s.post_json(
        "/api/v1/users",
        Some(ADMIN),
        &json!({"email": email, "password": PASSWORD, "role": role, "sites": sites}),
    );
    assert_eq!(r.status, 201, "create user {email}: {}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

/// What each caller must get, in `CALLERS` order.
fn expect(class: Class) -> [u16; 5] {
    match class {
        Class::Public(s) => [s; 5],
        Class::Authenticated(s) => [401, s, s, s, s],
        Class::AdminOnly(s) => [401, 403, 403, 403, s],
        Class::SiteRead(s) => [401, s, 404, s, s],
        Class::SiteManage(s) => [401, 403, 404, s, s],
        Class::SiteAdmin(s) => [401, 403, 404, 403, s],
        Class::Custom(all) => all,
    }
}

#[derive(Clone, Copy, Debug)]
enum Class {
    /// Anyone, logged in or not.
    Public(u16),
    /// Any logged-in user; lists are filtered to what the caller may see.
    Authenticated(u16),
    /// Administrators only.
    AdminOnly(u16),
    /// Whoever may read site A (its owner and viewer, admins); others get 404.
    SiteRead(u16),
    /// Whoever may change site A (its owner, admins); its viewer 403, others 404.
    SiteManage(u16),
    /// Admins; site A's owner and viewer see it (403), others get 404.
    SiteAdmin(u16),
    /// Anonymous, viewer, other owner, owner, admin.
    Custom([u16; 5]),
}

struct World {
    s: TestServer,
    sessions: BTreeMap<Who, Session>,
    emails: BTreeMap<Who, String>,
    owner_a_id: String,
    viewer_a_id: String,
    counter: AtomicU32,
}

impl World {
    fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// A new device in site A (created with the admin token).
    fn device_a(&self) -> String {
        let id = self.fresh("dev");
        self.s.create_device(&id, Some("site-a"));
        id
    }

    /// A new empty site that site A's owner and viewer are also assigned.
    fn site_of_a(&self) -> String {
        let id = self.fresh("site");
        self.s.create_site(&id, "Europe/Zurich");
        for user in [&self.owner_a_id, &self.viewer_a_id] {
            let current = self
                .s
                .get(&format!("/api/v1/users/{user}"), Some(ADMIN))
                .json();
            let mut sites: Vec<Value> = current["sites"].as_array().unwrap().clone();
            sites.push(json!(id));
            let r = self.s.patch_json(
                &format!("/api/v1/users/{user}"),
                Some(ADMIN),
                &json!({"sites": sites}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
        id
    }

    fn user(&self) -> String {
        let email = format!("{}@x.test", self.fresh("user"));
        create_user(&self.s, &email, "viewer", &["site-a"])
    }

    /// An identity seen on MQTT that no device is bound to.
    fn pending(&self) -> String {
        let vendor = self.fresh("plug");
        let mqtt = self.s.mqtt.clone().expect("the built-in broker runs");
        let out = crate::mqtt::mosquitto_pub(
            &mqtt,
            &[
                "-u",
                "admin",
                "-P",
                ADMIN,
                "-q",
                "1",
                "-t",
                &format!("tele/{vendor}/SENSOR"),
                "-m",
                r#"{"Time":"2026-11-20T10:00:00","ENERGY":{"Total":1.5,"Power":100,"Voltage":230,"Current":0.5}}"#,
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.s.get("/api/v1/pending-devices", Some(ADMIN)).json();
            if list["pending"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == json!(vendor))
            {
                return vendor;
            }
            assert!(Instant::now() < deadline, "{vendor} never became pending");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A new API token of site A's owner.
    fn owner_token(&self) -> String {
        let session = &self.sessions[&Who::Owner];
        let r = self.s.request(
            "POST",
            "/api/v1/tokens",
            &session.headers(),
            Some((
                "application/json",
                json!({"name": "t", "scope": "read"})
                    .to_string()
                    .into_bytes(),
            )),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    }
}

/// One call to make: the concrete path and body, and whether it needs its own session (it
/// ends the one it uses).
struct Call {
    path: String,
    body: Option<Value>,
    raw: Option<String>,
    own_session: bool,
    /// An endless answer (event stream): only its status is read.
    stream: bool,
}

impl Call {
    fn at(path: impl Into<String>) -> Call {
        Call {
            path: path.into(),
            body: None,
            raw: None,
            own_session: false,
            stream: false,
        }
    }
    fn json(mut self, body: Value) -> Call {
        self.body = Some(body);
        self
    }
    fn raw(mut self, body: String) -> Call {
        self.raw = Some(body);
        self
    }
}

/// The access class of a route and how to build a call of it for a caller.
fn case(w: &World, method: &str, path: &str, who: Who) -> Option<(Class, Call)> {
    let now = crate::support::now_s();
    let lp = format!("energy,device=dev-a power=100 {now}");
    use Class::*;
    Some(match (method, path) {
        ("GET", "/") => (Public(200), Call::at(path)),
        // A name no build produces: the answer does not depend on whether the UI was built.
        ("GET", "/assets/{*path}") => (Public(404), Call::at("/assets/no-such-file.js")),
        ("GET", "/healthz") => (Public(200), Call::at(path)),
        ("GET", "/api/v1/openapi.json") => (Public(200), Call::at(path)),
        ("GET", "/metrics") => (AdminOnly(200), Call::at(path)),
        ("POST", "/api/v1/readings") => (
            Custom([401, 403, 404, 200, 200]),
            Call::at(path).json(json!([{"device": "dev-a", "ts": now * 1000, "power": 100}])),
        ),
        ("POST", "/write") => (
            Custom([401, 403, 404, 204, 204]),
            Call::at("/write?precision=s").raw(lp),
        ),
        ("POST", "/api/v2/write") => (
            Custom([401, 403, 404, 204, 204]),
            Call::at("/api/v2/write?precision=s").raw(lp),
        ),
        ("POST", "/api/v1/auth/login") => (
            Public(200),
            Call::at(path).json(json!({"email": "login@x.test", "password": PASSWORD})),
        ),
        ("POST", "/api/v1/auth/logout") => (
            Authenticated(204),
            Call {
                own_session: true,
                ..Call::at(path)
            },
        ),
        ("GET", "/api/v1/auth/me") => (Authenticated(200), Call::at(path)),
        ("POST", "/api/v1/auth/password") => (
            Authenticated(204),
            Call::at(path).json(json!({"current_password": PASSWORD, "new_password": PASSWORD})),
        ),
        ("GET", "/api/v1/tokens") => (Authenticated(200), Call::at(path)),
        ("POST", "/api/v1/tokens") => (
            Authenticated(201),
            Call::at(path).json(json!({"name": "script", "scope": "read"})),
        ),
        ("DELETE", "/api/v1/tokens/{id}") => (
            Custom([401, 404, 404, 204, 204]),
            Call::at(format!("/api/v1/tokens/{}", w.owner_token())),
        ),
        ("GET", "/api/v1/users") => (AdminOnly(200), Call::at(path)),
        ("POST", "/api/v1/users") => (
            AdminOnly(201),
            Call::at(path).json(json!({"email": format!("{}@x.test", w.fresh("new")),
                "password": PASSWORD, "role": "owner", "sites": ["site-a"]})),
        ),
        ("GET", "/api/v1/users/{id}") => (
            AdminOnly(200),
            Call::at(format!("/api/v1/users/{}", w.owner_a_id)),
        ),
        ("PATCH", "/api/v1/users/{id}") => (
            AdminOnly(200),
            Call::at(format!("/api/v1/users/{}", w.user())).json(json!({"role": "owner"})),
        ),
        ("DELETE", "/api/v1/users/{id}") => (
            AdminOnly(204),
            Call::at(format!("/api/v1/users/{}", w.user())),
        ),
        ("DELETE", "/api/v1/users/{id}/sessions") => (
            AdminOnly(200),
            Call::at(format!("/api/v1/users/{}/sessions", w.user())),
        ),
        ("GET", "/api/v1/audit") => (AdminOnly(200), Call::at(path)),
        ("GET", "/api/v1/sites") => (Authenticated(200), Call::at(path)),
        ("POST", "/api/v1/sites") => (
            AdminOnly(201),
            Call::at(path).json(json!({"id": w.fresh("new-site"), "name": "New"})),
        ),
        ("GET", "/api/v1/sites/{id}") => (SiteRead(200), Call::at("/api/v1/sites/site-a")),
        ("PATCH", "/api/v1/sites/{id}") => (
            SiteManage(200),
            Call::at("/api/v1/sites/site-a").json(json!({"name": "Site A"})),
        ),
        ("DELETE", "/api/v1/sites/{id}") => (
            SiteAdmin(204),
            Call::at(format!("/api/v1/sites/{}", w.site_of_a())),
        ),
        ("GET", "/api/v1/sites/{id}/summary") => {
            (SiteRead(200), Call::at("/api/v1/sites/site-a/summary"))
        }
        ("GET", "/api/v1/sites/{id}/tcp-enrollment") => (
            SiteRead(200),
            Call::at("/api/v1/sites/site-a/tcp-enrollment"),
        ),
        ("PUT", "/api/v1/sites/{id}/tcp-enrollment") => (
            SiteManage(200),
            Call::at("/api/v1/sites/site-a/tcp-enrollment").json(json!({"open": false})),
        ),
        ("GET", "/api/v1/sites/{id}/tokens") => {
            (SiteManage(200), Call::at("/api/v1/sites/site-a/tokens"))
        }
        ("POST", "/api/v1/sites/{id}/tokens") => (
            SiteManage(201),
            Call::at("/api/v1/sites/site-a/tokens").json(json!({"name": "gateway"})),
        ),
        ("DELETE", "/api/v1/sites/{id}/tokens/{token_id}") => {
            let r =
                w.s.post_json("/api/v1/sites/site-a/tokens", Some(ADMIN), &json!({}));
            let id = r.json()["id"].as_str().unwrap().to_owned();
            (
                SiteManage(204),
                Call::at(format!("/api/v1/sites/site-a/tokens/{id}")),
            )
        }
        ("GET", "/api/v1/devices") => (Authenticated(200), Call::at(path)),
        ("GET", "/api/v1/device-stats") => (Authenticated(200), Call::at(path)),
        ("POST", "/api/v1/devices") => (
            // Another owner naming site A learns nothing: "no such site", as for a typo.
            Custom([401, 403, 400, 201, 201]),
            Call::at(path).json(json!({"name": "new", "site": "site-a"})),
        ),
        ("GET", "/api/v1/devices/{id}") => (SiteRead(200), Call::at("/api/v1/devices/dev-a")),
        ("PATCH", "/api/v1/devices/{id}") => (
            SiteManage(200),
            Call::at("/api/v1/devices/dev-a").json(json!({"name": "Device A"})),
        ),
        ("DELETE", "/api/v1/devices/{id}") => (
            SiteManage(204),
            Call::at(format!("/api/v1/devices/{}", w.device_a())),
        ),
        ("POST", "/api/v1/devices/{id}/token") => (
            SiteManage(200),
            Call::at(format!("/api/v1/devices/{}/token", w.device_a())),
        ),
        ("DELETE", "/api/v1/devices/{id}/token") => (
            SiteManage(204),
            Call::at(format!("/api/v1/devices/{}/token", w.device_a())),
        ),
        ("POST", "/api/v1/devices/{id}/mqtt") => (
            SiteManage(200),
            Call::at(format!("/api/v1/devices/{}/mqtt", w.device_a())),
        ),
        ("DELETE", "/api/v1/devices/{id}/mqtt") => (
            SiteManage(204),
            Call::at(format!("/api/v1/devices/{}/mqtt", w.device_a())),
        ),
        ("GET", "/api/v1/devices/{id}/bindings") => {
            (SiteRead(200), Call::at("/api/v1/devices/dev-a/bindings"))
        }
        ("POST", "/api/v1/devices/{id}/bindings") => (
            SiteManage(201),
            Call::at(format!("/api/v1/devices/{}/bindings", w.device_a()))
                .json(json!({"format": "tasmota", "id": w.fresh("plug")})),
        ),
        ("DELETE", "/api/v1/devices/{id}/bindings/{format}/{vendor_id}") => {
            let device = w.device_a();
            let vendor = w.fresh("plug");
            let r = w.s.post_json(
                &format!("/api/v1/devices/{device}/bindings"),
                Some(ADMIN),
                &json!({"format": "tasmota", "id": vendor}),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            (
                SiteManage(204),
                Call::at(format!(
                    "/api/v1/devices/{device}/bindings/tasmota/{vendor}"
                )),
            )
        }
        ("GET", "/api/v1/pending-devices") => (AdminOnly(200), Call::at(path)),
        ("POST", "/api/v1/pending-devices/{format}/{vendor_id}/accept") => {
            // Only the admin's call gets as far as looking the identity up.
            let vendor = if who == Who::Admin {
                w.pending()
            } else {
                w.fresh("plug")
            };
            (
                AdminOnly(201),
                Call::at(format!("/api/v1/pending-devices/tasmota/{vendor}/accept"))
                    .json(json!({"site": "site-a"})),
            )
        }
        ("POST", "/api/v1/pending-devices/{format}/{vendor_id}/reject") => {
            let vendor = if who == Who::Admin {
                w.pending()
            } else {
                w.fresh("plug")
            };
            (
                AdminOnly(204),
                Call::at(format!("/api/v1/pending-devices/tasmota/{vendor}/reject")),
            )
        }
        ("GET", "/api/v1/devices/{id}/series") => (
            SiteRead(200),
            Call::at("/api/v1/devices/dev-a/series?quantity=power"),
        ),
        ("GET", "/api/v1/devices/{id}/stats") => {
            (SiteRead(200), Call::at("/api/v1/devices/dev-a/stats"))
        }
        ("GET", "/api/v1/devices/{id}/energy") => (
            SiteRead(200),
            Call::at("/api/v1/devices/dev-a/energy?interval=day"),
        ),
        ("GET", "/api/v1/export") => (SiteRead(200), Call::at("/api/v1/export?device=dev-a")),
        ("GET", "/api/v1/rejected-readings") => (AdminOnly(200), Call::at(path)),
        ("GET", "/api/v1/live") => (
            SiteRead(200),
            Call {
                stream: true,
                ..Call::at("/api/v1/live?device=dev-a")
            },
        ),
        _ => return None,
    })
}

fn call(w: &World, method: &str, who: Who, c: &Call) -> Reply {
    let session = match who {
        Who::Anonymous => None,
        _ if c.own_session => Some(super::authz::login(&w.s, &w.emails[&who], PASSWORD)),
        _ => Some(w.sessions[&who].clone()),
    };
    let headers = session.as_ref().map(Session::headers).unwrap_or_default();
    if c.stream {
        let status = w.s.open_stream(&c.path, &headers).status;
        return Reply {
            status,
            body: String::new(),
            headers: Vec::new(),
        };
    }
    let body = match (&c.body, &c.raw) {
        (Some(v), _) => Some(("application/json", v.to_string().into_bytes())),
        (None, Some(raw)) => Some(("text/plain", raw.clone().into_bytes())),
        (None, None) => None,
    };
    w.s.request(method, &c.path, &headers, body)
}

fn world() -> World {
    let s = TestServer::start();
    s.create_site("site-a", "Europe/Zurich");
    s.create_site("site-b", "Europe/Zurich");
    s.create_device("dev-a", Some("site-a"));
    s.create_device("dev-b", Some("site-b"));
    s.write_lp(&format!(
        "energy,device=dev-a power=50,energy=1.5 {}",
        crate::support::now_s() - 60
    ));
    let mut emails = BTreeMap::new();
    emails.insert(Who::Viewer, "viewer-a@x.test".to_owned());
    emails.insert(Who::OtherOwner, "owner-b@x.test".to_owned());
    emails.insert(Who::Owner, "owner-a@x.test".to_owned());
    emails.insert(Who::Admin, "admin@x.test".to_owned());
    let viewer_a_id = create_user(&s, "viewer-a@x.test", "viewer", &["site-a"]);
    create_user(&s, "owner-b@x.test", "owner", &["site-b"]);
    let owner_a_id = create_user(&s, "owner-a@x.test", "owner", &["site-a"]);
    create_user(&s, "admin@x.test", "admin", &[]);
    create_user(&s, "login@x.test", "viewer", &[]);
    let sessions = emails
        .iter()
        .map(|(who, email)| (*who, login(&s, email, PASSWORD)))
        .collect();
    World {
        s,
        sessions,
        emails,
        owner_a_id,
        viewer_a_id,
        counter: AtomicU32::new(0),
    }
}

#[test]
fn every_route_checks_who_asks() {
    let w = world();
    let routes = wattline_web::routes();
    let mut failures = Vec::new();
    let mut checked = 0;
    for route in &routes {
        let method = route.method.as_str();
        for who in CALLERS {
            let Some((class, c)) = case(&w, method, route.path, who) else {
                panic!(
                    "{method} {} has no authorization case in tests/it/authz.rs; add one",
                    route.path
                );
            };
            let want = expect(class)[CALLERS.iter().position(|c| *c == who).unwrap()];
            let got = call(&w, method, who, &c);
            checked += 1;
            if got.status != want {
                failures.push(format!(
                    "{method} {} as {who:?}: want {want}, got {} {}",
                    c.path,
                    got.status,
                    got.body.chars().take(200).collect::<String>()
                ));
            }
            // What another owner is shown never mentions site A or its devices.
            if who == Who::OtherOwner
                && (200..300).contains(&got.status)
                && (got.body.contains("site-a") || got.body.contains("dev-a"))
            {
                failures.push(format!(
                    "{method} {} as OtherOwner leaks site A: {}",
                    c.path,
                    got.body.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, routes.len() * CALLERS.len());
    // The owner of site B saw lists, but only its own things.
    let b = &w.sessions[&Who::OtherOwner];
    let devices =
        w.s.request("GET", "/api/v1/devices", &b.headers(), None)
            .json();
    let ids: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-b"]);
}

#[test]
fn sessions_need_the_csrf_header_and_read_tokens_only_read() {
    let s = TestServer::start();
    s.create_site("site-a", "UTC");
    create_user(&s, "owner@x.test", "owner", &["site-a"]);
    let session = login(&s, "owner@x.test", PASSWORD);
    // A cross-site form would send the cookie but cannot add the header.
    let body = || Some(("application/json", br#"{"name": "x"}"#.to_vec()));
    let r = s.request(
        "PATCH",
        "/api/v1/sites/site-a",
        &[("Cookie", &session.cookie)],
        body(),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, json!("csrf")),
        "{}",
        r.body
    );
    let r = s.request(
        "PATCH",
        "/api/v1/sites/site-a",
        &[("Cookie", &session.cookie), ("X-CSRF-Token", "guess")],
        body(),
    );
    assert_eq!(r.status, 403);
    let r = s.request("PATCH", "/api/v1/sites/site-a", &session.headers(), body());
    assert_eq!(r.status, 200, "{}", r.body);
    // Reads need no header.
    let r = s.request(
        "GET",
        "/api/v1/sites/site-a",
        &[("Cookie", &session.cookie)],
        None,
    );
    assert_eq!(r.status, 200);
    // A read token reads the owner's sites and writes nothing.
    let r = s.request(
        "POST",
        "/api/v1/tokens",
        &session.headers(),
        Some((
            "application/json",
            br#"{"name": "pandas", "scope": "read"}"#.to_vec(),
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let read = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/sites/site-a", Some(&read)).status, 200);
    let r = s.patch_json("/api/v1/sites/site-a", Some(&read), &json!({"name": "y"}));
    assert_eq!(
        (r.status, r.code()),
        (403, "read_only_token".into()),
        "{}",
        r.body
    );
    // A write token narrowed to no site of the user's sees nothing.
    let r = s.request(
        "POST",
        "/api/v1/tokens",
        &session.headers(),
        Some((
            "application/json",
            br#"{"name": "w", "scope": "write", "sites": []}"#.to_vec(),
        )),
    );
    let narrow = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/sites/site-a", Some(&narrow)).status, 404);
    // Tokens are listed without their secrets, and revoking one stops it at once.
    let list = s.request("GET", "/api/v1/tokens", &session.headers(), None);
    assert!(!list.body.contains(&read) && list.body.contains("pandas"));
    let id = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "pandas")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.request(
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        &session.headers(),
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(s.get("/api/v1/sites/site-a", Some(&read)).status, 401);
    // Logout ends the session server-side: the old cookie no longer works.
    let r = s.request("POST", "/api/v1/auth/logout", &session.headers(), None);
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = s.request(
        "GET",
        "/api/v1/auth/me",
        &[("Cookie", &session.cookie)],
        None,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn login_cookie_is_hardened_and_disabling_a_user_ends_their_sessions() {
    let s = TestServer::start();
    let id = create_user(&s, "ann@x.test", "admin", &[]);
    create_user(&s, "bob@x.test", "admin", &[]);
    let r = s.request(
        "POST",
        "/api/v1/auth/login",
        &[],
        Some((
            "application/json",
            json!({"email": "ANN@x.test", "password": PASSWORD})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let session = login(&s, "ann@x.test", PASSWORD);
    assert_eq!(
        s.request("GET", "/api/v1/auth/me", &session.headers(), None)
            .status,
        200
    );
    let r = s.patch_json(
        &format!("/api/v1/users/{id}"),
        Some(ADMIN),
        &json!({"disabled": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.request("GET", "/api/v1/auth/me", &session.headers(), None)
            .status,
        401
    );
    let r = s.request(
        "POST",
        "/api/v1/auth/login",
        &[],
        Some((
            "application/json",
            json!({"email": "ann@x.test", "password": PASSWORD})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(r.status, 401);
    // The last enabled admin cannot be disabled or deleted.
    let bob = s
        .get("/api/v1/users", Some(ADMIN))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "bob@x.test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.delete(&format!("/api/v1/users/{bob}"), Some(ADMIN));
    assert_eq!(
        (r.status, r.code()),
        (409, "last_admin".into()),
        "{}",
        r.body
    );
    // A password change ends the user's other sessions but not the one making it.
    let first = login(&s, "bob@x.test", PASSWORD);
    let second = login(&s, "bob@x.test", PASSWORD);
    let r = s.request(
        "POST",
        "/api/v1/auth/password",
        &second.headers(),
        Some((
            "application/json",
            json!({"current_password": PASSWORD, "new_password": "another long passphrase"})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        s.request("GET", "/api/v1/auth/me", &first.headers(), None)
            .status,
        401
    );
    assert_eq!(
        s.request("GET", "/api/v1/auth/me", &second.headers(), None)
            .status,
        200
    );
    login(&s, "bob@x.test", "another long passphrase");
}

#[test]
fn repeated_failed_logins_are_slowed_but_the_usual_address_keeps_access() {
    let s = TestServer::start();
    create_user(&s, "ann@x.test", "admin", &[]);
    create_user(&s, "eve-target@x.test", "owner", &[]);
    let attempt = |email: &str, password: &str| {
        s.request(
            "POST",
            "/api/v1/auth/login",
            &[],
            Some((
                "application/json",
                json!({"email": email, "password": password})
                    .to_string()
                    .into_bytes(),
            )),
        )
    };
    // Ann has logged in from here before.
    login(&s, "ann@x.test", PASSWORD);
    for _ in 0..5 {
        assert_eq!(attempt("eve-target@x.test", "wrong guess 123").status, 401);
        assert_eq!(attempt("ann@x.test", "wrong guess 123").status, 401);
    }
    // An account with 5 failures is locked for 30 s (Retry-After says so), even for the
    // right password...
    let r = attempt("eve-target@x.test", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(r.json()["error"]["code"], "too_many_attempts");
    // ...but not from an address the account logged in from before: an attacker elsewhere
    // cannot lock the admin out.
    assert_eq!(attempt("ann@x.test", PASSWORD).status, 200);
    // Every failure is in the audit log with its address.
    let log = s
        .get("/api/v1/audit?action=login_failed&limit=100", Some(ADMIN))
        .json();
    let failed = log.as_array().unwrap();
    assert_eq!(failed.len(), 10, "{log}");
    assert_eq!(failed[0]["address"], "127.0.0.1");
    assert_eq!(failed[0]["detail"]["reason"], "wrong_password");
    let throttled = s
        .get("/api/v1/audit?action=login_throttled", Some(ADMIN))
        .json();
    assert_eq!(throttled.as_array().unwrap().len(), 1);
}

#[test]
fn bad_account_input_gets_clear_errors() {
    let s = TestServer::start();
    let post = |body: Value| s.post_json("/api/v1/users", Some(ADMIN), &body);
    let r = post(json!({"email": "a@x.test", "password": PASSWORD, "role": "superuser"}));
    assert_eq!((r.status, r.code()), (400, "bad_role".into()));
    assert!(
        r.body.contains("superuser") && r.body.contains("admin, owner or viewer"),
        "{}",
        r.body
    );
    let r = post(json!({"email": "a@x.test", "password": "short", "role": "owner"}));
    assert_eq!((r.status, r.code()), (400, "weak_password".into()));
    assert!(r.body.contains("at least 10 characters"), "{}", r.body);
    let r = post(json!({"email": "a@x.test", "password": "aaaaaaaaaaaa", "role": "owner"}));
    assert_eq!(r.code(), "weak_password");
    let r = post(json!({"email": "not-an-email", "password": PASSWORD, "role": "owner"}));
    assert_eq!((r.status, r.code()), (400, "bad_email".into()));
    let r = post(
        json!({"email": "a@x.test", "password": PASSWORD, "role": "owner", "sites": ["nowhere"]}),
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "unknown_site".into()),
        "{}",
        r.body
    );
    assert_eq!(
        post(json!({"email": "a@x.test", "password": PASSWORD, "role": "owner"})).status,
        201
    );
    let r = post(json!({"email": "A@X.test", "password": PASSWORD, "role": "viewer"}));
    assert_eq!(
        (r.status, r.code()),
        (409, "duplicate_email".into()),
        "{}",
        r.body
    );
    // Malformed and unknown tokens.
    let r = s.get("/api/v1/sites", Some("has spaces in it"));
    assert_eq!(
        (r.status, r.code()),
        (401, "malformed_token".into()),
        "{}",
        r.body
    );
    let r = s.get("/api/v1/sites", Some("wlt_0000"));
    assert_eq!((r.status, r.code()), (401, "unauthorized".into()));
    let r = s.request(
        "GET",
        "/api/v1/sites",
        &[("Cookie", "wattline_session=forged")],
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (401, json!("session_expired"))
    );
    // A login body is small; a huge one is refused before any parsing or hashing.
    let huge = json!({"email": "a@x.test", "password": "p".repeat(10_000)});
    let r = s.post_json("/api/v1/auth/login", None, &huge);
    assert_eq!((r.status, r.code()), (413, "body_too_large".into()));
    let r = s.post_json("/api/v1/auth/login", None, &json!({"email": "a@x.test"}));
    assert_eq!((r.status, r.code()), (400, "bad_json".into()), "{}", r.body);
    // Nothing above stopped the server.
    assert_eq!(s.get("/healthz", None).status, 200);
}

/// Every secret Wattline issued, searched for in every file of the data directory: none is
/// there. Passwords are argon2id, tokens SHA-256 hashes that do not work as tokens.
#[test]
fn a_leaked_database_reveals_no_usable_secret() {
    let mut s = TestServer::start();
    s.create_site("site-a", "UTC");
    let r = s.post_json(
        "/api/v1/devices",
        Some(ADMIN),
        &json!({"id": "m1", "name": "m", "site": "site-a"}),
    );
    let device = r.json();
    let device_token = device["token"].as_str().unwrap().to_owned();
    let mqtt_password = device["mqtt"]["password"].as_str().unwrap().to_owned();
    let site_token = s
        .post_json("/api/v1/sites/site-a/tokens", Some(ADMIN), &json!({}))
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    create_user(&s, "ann@x.test", "owner", &["site-a"]);
    let session = login(&s, "ann@x.test", PASSWORD);
    let session_id = session.cookie.split_once('=').unwrap().1.to_owned();
    let api_token = s
        .request(
            "POST",
            "/api/v1/tokens",
            &session.headers(),
            Some((
                "application/json",
                br#"{"name": "n", "scope": "write"}"#.to_vec(),
            )),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Stop cleanly so that everything is in the files.
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(s.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "admin-token" {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let secrets = [
        ("device token", device_token.as_str()),
        ("MQTT password", mqtt_password.as_str()),
        ("site token", site_token.as_str()),
        ("password", PASSWORD),
        ("session id", session_id.as_str()),
        ("CSRF token", session.csrf.as_str()),
        ("API token", api_token.as_str()),
        ("admin token", ADMIN),
    ];
    for (what, secret) in secrets {
        assert!(!text.contains(secret), "the {what} is stored in clear");
    }
    assert!(
        text.contains("$argon2id$v=19$"),
        "no argon2id password hash found"
    );
    let device_hash = hex_sha256(&device_token);
    assert!(
        text.contains(&device_hash),
        "the device token's hash is not what is stored"
    );
    // What a thief finds does not open the door.
    let s = s.restart();
    for hash in [device_hash, hex_sha256(&api_token), hex_sha256(&session_id)] {
        assert_eq!(s.get("/api/v1/sites", Some(&hash)).status, 401);
        let cookie = format!("wattline_session={hash}");
        assert_eq!(
            s.request("GET", "/api/v1/sites", &[("Cookie", &cookie)], None)
                .status,
            401
        );
    }
    // The real ones still do.
    assert_eq!(s.get("/api/v1/sites", Some(&api_token)).status, 200);
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The first admin of a new installation comes from the command line (password on stdin).
#[test]
fn the_first_admin_is_added_from_the_command_line() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = TestServer::start();
    let add = |email: &str, role: &str, password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wattline"))
            .args(["user", "add", email, "--role", role, "--data-dir"])
            .arg(s.data_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = add("root@x.test", "admin", PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["role"], "admin");
    // The running server sees the new user at once.
    let session = login(&s, "root@x.test", PASSWORD);
    let me = s
        .request("GET", "/api/v1/auth/me", &session.headers(), None)
        .json();
    assert_eq!(me["user"]["email"], "root@x.test");
    // Bad input is refused with the reason and a failure exit code.
    let out = add("x@x.test", "root", PASSWORD);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role \"root\""));
    let out = add("y@x.test", "owner", "123");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10 characters"));
    let out = add("root@x.test", "viewer", PASSWORD);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // The CLI's creation is audited.
    let log = s.get("/api/v1/audit?actor=cli", Some(ADMIN)).json();
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
}

/// A route that refuses before reading the request body (here: no token, a read-only
/// caller) says `Connection: close`, since the unread rest spoils the connection; one that
/// read the body keeps it. Without this, a client reusing the connection got a reset on its
/// next request (seen in CI as "Peer disconnected" in the table above).
#[test]
fn answers_given_before_the_body_was_read_close_the_connection() {
    let s = TestServer::start();
    let body = || Some(("application/json", br#"{"id": "x1"}"#.to_vec()));
    let r = s.request("POST", "/api/v1/devices", &[], body());
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    let r = s.request(
        "POST",
        "/api/v1/sites/default/tokens",
        &[("Authorization", "Token not-a-real-token-at-all")],
        body(),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    // Read to its end: the connection stays open, and later requests are answered.
    let r = s.post_json(
        "/api/v1/devices",
        Some(ADMIN),
        &json!({"id": "x2", "name": "X2"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("connection"), None);
    for _ in 0..20 {
        assert_eq!(
            s.request("POST", "/api/v1/devices", &[], body()).status,
            401
        );
        assert_eq!(s.get("/api/v1/devices/x2", Some(ADMIN)).status, 200);
    }
}
