//! Registration through the admin API, and the credentials it yields, kept in the state dir
//! (`credentials.json`, mode 600) so a restarted simulator does not register again.
//!
//! With `--admin-token`: the site is created (or found) and its zone read; a site ingest token
//! is made for the HTTP and gateway protocols; every device is created with its kind and,
//! for vendor protocols, its binding (`tasmota`/`shelly`/`clemap` with the device name as the
//! vendor id); per-device MQTT passwords are kept. Socket meters are enrolled instead: the
//! site's TCP enrollment is opened, each meter asks for an id, and enrollment is closed again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commlog::CommLog;
use crate::encode::Protocol;
use crate::profile::Kind;
use crate::sink::{HttpConn, SinkError};
use crate::RunError;

/// Admin requests in flight at once while registering.
const PARALLEL: usize = 8;

/// One simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub index: u32,
    pub name: String,
    pub protocol: Protocol,
    pub kind: Kind,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Credentials {
    pub site: Option<String>,
    pub timezone: Option<String>,
    pub site_token: Option<String>,
    /// Devices created (or found existing) on the server.
    #[serde(default)]
    pub registered: BTreeSet<String>,
    /// Device name -> MQTT password (the username is the device name).
    #[serde(default)]
    pub mqtt: BTreeMap<String, String>,
    /// Device name -> socket-meter id assigned at enrollment.
    #[serde(default)]
    pub tcp: BTreeMap<String, String>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, RunError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| RunError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(RunError::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), RunError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| RunError::io(&tmp, e))?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("credentials JSON"))
            .and_then(|()| f.sync_all())
            .map_err(|e| RunError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
    }
}

/// What the senders need.
#[derive(Debug, Clone)]
pub struct Access {
    /// Token for HTTP writes and password for the gateway topic.
    pub token: Option<String>,
    pub tz: jiff::tz::TimeZone,
    pub tz_name: String,
    /// Device index -> (MQTT username, password).
    pub mqtt: Arc<HashMap<u32, (String, String)>>,
    /// Device index -> socket-meter id.
    pub tcp: Arc<HashMap<u32, String>>,
}

pub struct Registrar<'a> {
    pub http: &'a str,
    pub tcp: &'a str,
    pub admin_token: Option<&'a str>,
    pub token: Option<&'a str>,
    pub site: &'a str,
    pub timezone: Option<&'a str>,
    pub creds_path: &'a Path,
    pub comm: CommLog,
    pub quiet: bool,
}

fn api_error(what: &str, status: u16, body: &str) -> RunError {
    RunError::Register(format!("{what}: HTTP {status}: {}", body.trim()))
}

fn transport(what: &str) -> impl Fn(SinkError) -> RunError + '_ {
    move |e| RunError::Register(format!("{what}: {e}"))
}

impl Registrar<'_> {
    pub async fn run(&self, plan: &[DevicePlan]) -> Result<Access, RunError> {
        let mut creds = Credentials::load(self.creds_path)?;
        if creds.site.as_deref().is_some_and(|s| s != self.site) {
            return Err(RunError::Config(format!(
                "this state dir registered devices in site {:?}, not {:?}; use another --state-dir",
                creds.site.as_deref().unwrap_or_default(),
                self.site
            )));
        }
        let needs_token = plan.iter().any(|d| {
            matches!(
                d.protocol,
                Protocol::HttpJson | Protocol::HttpLp | Protocol::MqttGateway
            )
        });
        if let Some(admin) = self.admin_token {
            self.admin_setup(admin, plan, &mut creds, needs_token)
                .await?;
        } else {
            creds.timezone = creds.timezone.or_else(|| self.timezone.map(str::to_owned));
        }
        let token = self
            .token
            .map(str::to_owned)
            .or_else(|| creds.site_token.clone())
            .or_else(|| self.admin_token.map(str::to_owned));
        if needs_token && token.is_none() {
            return Err(RunError::Config(
                "HTTP and gateway protocols need --token (a site or admin token) or --admin-token"
                    .into(),
            ));
        }
        // Socket meters enroll over TCP itself.
        let to_enroll: Vec<&DevicePlan> = plan
            .iter()
            .filter(|d| d.protocol == Protocol::Tcp && !creds.tcp.contains_key(&d.name))
            .collect();
        if !to_enroll.is_empty() {
            self.enroll(&to_enroll, &mut creds).await?;
        }
        let tz_name = creds.timezone.clone().unwrap_or_else(|| "UTC".into());
        let tz = jiff::tz::TimeZone::get(&tz_name)
            .map_err(|e| RunError::Config(format!("time zone {tz_name:?}: {e}")))?;
        let mut mqtt = HashMap::new();
        let mut tcp = HashMap::new();
        for d in plan {
            if d.protocol.per_device_connection() && d.protocol != Protocol::Tcp {
                let Some(pass) = creds.mqtt.get(&d.name) else {
                    return Err(RunError::Config(format!(
                        "no MQTT credential for {} in {}: run once with --admin-token to register it",
                        d.name,
                        self.creds_path.display()
                    )));
                };
                mqtt.insert(d.index, (d.name.clone(), pass.clone()));
            }
            if d.protocol == Protocol::Tcp {
                tcp.insert(d.index, creds.tcp[&d.name].clone());
            }
        }
        Ok(Access {
            token,
            tz,
            tz_name,
            mqtt: Arc::new(mqtt),
            tcp: Arc::new(tcp),
        })
    }

    async fn admin_setup(
        &self,
        admin: &str,
        plan: &[DevicePlan],
        creds: &mut Credentials,
        needs_token: bool,
    ) -> Result<(), RunError> {
        let mut conn = HttpConn::new(self.http, self.comm.clone(), "register".into())
            .map_err(transport("admin API"))?;
        let site = self.site;
        let mut body = json!({"id": site, "name": format!("Simulated site {site}")});
        if let Some(tz) = self.timezone {
            body["timezone"] = tz.into();
        }
        let r = conn
            .post_json("/api/v1/sites", Some(admin), &body)
            .await
            .map_err(transport("create site"))?;
        if r.status != 201 && r.status != 409 {
            return Err(api_error("create site", r.status, &r.body));
        }
        let r = conn
            .get(&format!("/api/v1/sites/{site}"), Some(admin))
            .await
            .map_err(transport("read site"))?;
        if r.status != 200 {
            return Err(api_error("read site", r.status, &r.body));
        }
        creds.site = Some(site.to_owned());
        creds.timezone = r.json()["timezone"].as_str().map(str::to_owned);
        if needs_token && self.token.is_none() && creds.site_token.is_none() {
            let r = conn
                .post_json(
                    &format!("/api/v1/sites/{site}/tokens"),
                    Some(admin),
                    &json!({"name": "simulator"}),
                )
                .await
                .map_err(transport("create site token"))?;
            if r.status != 201 {
                return Err(api_error("create site token", r.status, &r.body));
            }
            creds.site_token = r.json()["token"].as_str().map(str::to_owned);
        }
        creds.save(self.creds_path)?;

        // Devices that still need something: creation, an MQTT password.
        let todo: Vec<&DevicePlan> = plan
            .iter()
            .filter(|d| d.protocol != Protocol::Tcp)
            .filter(|d| {
                !creds.registered.contains(&d.name)
                    || (d.protocol.per_device_connection() && !creds.mqtt.contains_key(&d.name))
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        if !self.quiet {
            eprintln!(
                "simulate: registering {} devices in site {site}",
                todo.len()
            );
        }
        let chunk = todo.len().div_ceil(PARALLEL);
        let mut jobs = Vec::new();
        for part in todo.chunks(chunk) {
            let mut conn = HttpConn::new(self.http, self.comm.clone(), "register".into())
                .map_err(transport("admin API"))?;
            let part: Vec<DevicePlan> = part.iter().map(|d| (*d).clone()).collect();
            let admin = admin.to_owned();
            let site = site.to_owned();
            let registered = creds.registered.clone();
            jobs.push(async move {
                let mut out = Vec::new();
                for d in part {
                    let r = register_device(&mut conn, &admin, &site, &d, &registered).await;
                    let failed = r.is_err();
                    out.push((d.name.clone(), r));
                    if failed {
                        break;
                    }
                }
                out
            });
        }
        let mut first_error = None;
        for results in futures::future::join_all(jobs).await {
            for (name, r) in results {
                match r {
                    Ok(password) => {
                        creds.registered.insert(name.clone());
                        if let Some(p) = password {
                            creds.mqtt.insert(name, p);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        creds.save(self.creds_path)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn enroll(
        &self,
        devices: &[&DevicePlan],
        creds: &mut Credentials,
    ) -> Result<(), RunError> {
        let site = self.site;
        let mut conn = HttpConn::new(self.http, self.comm.clone(), "register".into())
            .map_err(transport("admin API"))?;
        let path = format!("/api/v1/sites/{site}/tcp-enrollment");
        if let Some(admin) = self.admin_token {
            let r = conn
                .put_json(&path, Some(admin), &json!({"open": true}))
                .await
                .map_err(transport("open TCP enrollment"))?;
            if r.status != 200 {
                return Err(api_error("open TCP enrollment", r.status, &r.body));
            }
        }
        let mut result = Ok(());
        for d in devices {
            match crate::sink::tcp_enroll(self.tcp).await {
                Ok(id) => {
                    self.comm.log(
                        "register",
                        format_args!("{} enrolled as socket meter {id}", d.name),
                    );
                    creds.tcp.insert(d.name.clone(), id);
                }
                Err(e) => {
                    result = Err(RunError::Register(format!(
                        "enroll {} at tcp://{}: {e}",
                        d.name, self.tcp
                    )));
                    break;
                }
            }
        }
        // Save before anything else can fail: an id handed out is a device created.
        creds.save(self.creds_path)?;
        if let Some(admin) = self.admin_token {
            let r = conn
                .put_json(&path, Some(admin), &json!({"open": false}))
                .await
                .map_err(transport("close TCP enrollment"))?;
            if r.status != 200 {
                return Err(api_error("close TCP enrollment", r.status, &r.body));
            }
        }
        result
    }
}

/// Creates one device (or completes an existing one); returns its new MQTT password when
/// its protocol needs one.
async fn register_device(
    conn: &mut HttpConn,
    admin: &str,
    site: &str,
    d: &DevicePlan,
    registered: &BTreeSet<String>,
) -> Result<Option<String>, RunError> {
    let wants_mqtt = d.protocol.per_device_connection();
    if !registered.contains(&d.name) {
        let mut body = json!({
            "id": d.name, "name": format!("Simulated {} {}", d.kind.as_str(), d.index),
            "site": site, "kind": d.kind.as_str(),
        });
        if let Some(format) = d.protocol.binding_format() {
            body["binding"] = json!({"format": format, "id": d.name});
        }
        let r = conn
            .post_json("/api/v1/devices", Some(admin), &body)
            .await
            .map_err(transport("create device"))?;
        match r.status {
            201 => {
                return Ok(wants_mqtt
                    .then(|| r.json()["mqtt"]["password"].as_str().map(str::to_owned))
                    .flatten());
            }
            409 => {} // there from an earlier run: complete it below
            s => return Err(api_error(&format!("create device {}", d.name), s, &r.body)),
        }
    }
    if let Some(format) = d.protocol.binding_format() {
        let r = conn
            .post_json(
                &format!("/api/v1/devices/{}/bindings", d.name),
                Some(admin),
                &json!({"format": format, "id": d.name}),
            )
            .await
            .map_err(transport("bind device"))?;
        if !matches!(r.status, 200 | 201 | 409) {
            return Err(api_error(&format!("bind {}", d.name), r.status, &r.body));
        }
    }
    if !wants_mqtt {
        return Ok(None);
    }
    let r = conn
        .post_json(
            &format!("/api/v1/devices/{}/mqtt", d.name),
            Some(admin),
            &json!({}),
        )
        .await
        .map_err(transport("rotate MQTT credential"))?;
    if r.status != 200 && r.status != 201 {
        return Err(api_error(
            &format!("MQTT credential of {}", d.name),
            r.status,
            &r.body,
        ));
    }
    Ok(r.json()["mqtt"]["password"].as_str().map(str::to_owned))
}
