//! `wattline demo`: the server with its embedded store and broker, plus a simulated site.
//!
//! A home (appliances over MQTT), a three-phase building (HTTP) and a small mining farm
//! (socket meters, enrolled over TCP) are simulated in the same process, so a fresh checkout
//! shows live data at once. It takes `serve`'s flags; where a default port is taken (a
//! Mosquitto on 1883, say) it picks a free one and says so, where `serve` would stop.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use wattline_simulator::{Config as SimConfig, Kind, ProfileChoice, Protocol};

use crate::config::Config;

/// The demo's dashboard account: an administrator, so every page of the dashboard shows.
const DEMO_EMAIL: &str = "demo@example.com";

/// Which addresses the user chose; those are kept even when taken (and fail like `serve`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Chosen {
    pub http: bool,
    pub mqtt: bool,
    pub tcp: bool,
}

/// `addr` if it can be bound, else the same host on a free port (with a note on stderr).
fn free_or_same(what: &str, addr: &str, chosen: bool) -> anyhow::Result<String> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("{what} address {addr:?} is not host:port"))?;
    if parsed.port() != 0 && (chosen || TcpListener::bind(parsed).is_ok()) {
        return Ok(addr.to_owned());
    }
    // Port 0 is resolved here, not by the server: the simulators and the banner need it.
    let free = TcpListener::bind(SocketAddr::new(parsed.ip(), 0))?.local_addr()?;
    if parsed.port() != 0 {
        eprintln!(
            "demo: {what} port {} is taken (another server holds it); using {} instead",
            parsed.port(),
            free.port()
        );
    }
    Ok(free.to_string())
}

/// The address clients on this machine use for a listener bound to `addr`.
fn local(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => addr.to_owned(),
    }
}

pub fn prepare(mut config: Config, chosen: Chosen) -> anyhow::Result<(Config, String)> {
    // The simulated meters and the enrollment call speak plain http://.
    anyhow::ensure!(
        config.tls_cert.is_none() && !config.tls_self_signed,
        "the demo serves plain HTTP (its simulated meters use http://); use `wattline serve` for HTTPS"
    );
    config.http = free_or_same("HTTP", &config.http, chosen.http)?;
    if config.mqtt != "off" {
        config.mqtt = free_or_same("MQTT", &config.mqtt, chosen.mqtt)?;
    }
    let tcp = if config.tcp == "off" || config.tcp.is_empty() {
        "0.0.0.0:4005".to_owned()
    } else {
        config.tcp.clone()
    };
    config.tcp = free_or_same("TCP meter", &tcp, chosen.tcp)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let token = match &config.admin_token {
        Some(t) if !t.is_empty() => t.clone(),
        _ => crate::serve::admin_token(&config)?,
    };
    config.admin_token = Some(token.clone());
    Ok((config, token))
}

async fn wait_for_http(addr: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the server did not start listening on {addr}")
}

/// A client for the demo's own calls to the API: statuses are answers to check, not errors.
fn api_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Opens TCP enrollment for `site` so the farm's socket meters get devices.
fn open_enrollment(http: &str, token: &str, site: &str, tz: &str) -> anyhow::Result<()> {
    let agent = api_agent();
    let auth = format!("Token {token}");
    let body = serde_json::json!({"id": site, "name": "Mining farm", "timezone": tz}).to_string();
    let status = agent
        .post(&format!("http://{http}/api/v1/sites"))
        .header("Authorization", &auth)
        .send(body.as_bytes())?
        .status()
        .as_u16();
    anyhow::ensure!(
        matches!(status, 201 | 409),
        "creating site {site}: HTTP {status}"
    );
    let status = agent
        .put(&format!("http://{http}/api/v1/sites/{site}/tcp-enrollment"))
        .header("Authorization", &auth)
        .send(br#"{"open": true}"#.as_slice())?
        .status()
        .as_u16();
    anyhow::ensure!(
        (200..300).contains(&status),
        "opening TCP enrollment: HTTP {status}"
    );
    Ok(())
}

/// Makes sure the demo's dashboard account exists and its password is in
/// `<data_dir>/demo-password` (mode 600); returns that file. A later demo on the same data
/// keeps the password; if the file was removed, the password is reset and written again.
fn ensure_demo_user(
    http: &str,
    token: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let path = data_dir.join("demo-password");
    if path.exists() {
        return Ok(path);
    }
    let agent = api_agent();
    let auth = format!("Token {token}");
    // Not "demo_…": a password may not contain the e-mail's name part.
    let password = wattline_web::auth::new_token("wlp");
    let body = serde_json::json!({"email": DEMO_EMAIL, "password": password, "role": "admin"});
    let mut created = agent
        .post(&format!("http://{http}/api/v1/users"))
        .header("Authorization", &auth)
        .send(body.to_string().as_bytes())?;
    match created.status().as_u16() {
        201 => {}
        409 => {
            let users: serde_json::Value = serde_json::from_str(
                &agent
                    .get(&format!("http://{http}/api/v1/users"))
                    .header("Authorization", &auth)
                    .call()?
                    .body_mut()
                    .read_to_string()?,
            )?;
            let id = users
                .as_array()
                .into_iter()
                .flatten()
                .find(|u| u["email"] == DEMO_EMAIL)
                .and_then(|u| u["id"].as_str())
                .context("the demo user exists but is not listed")?
                .to_owned();
            let status = agent
                .patch(&format!("http://{http}/api/v1/users/{id}"))
                .header("Authorization", &auth)
                .send(
                    serde_json::json!({"password": password})
                        .to_string()
                        .as_bytes(),
                )?
                .status()
                .as_u16();
            anyhow::ensure!(
                status == 200,
                "resetting the demo user's password: HTTP {status}"
            );
        }
        status => anyhow::bail!(
            "creating the demo user: HTTP {status}: {}",
            created.body_mut().read_to_string().unwrap_or_default()
        ),
    }
    crate::serve::write_private(&path, &password)?;
    Ok(path)
}

fn simulation(
    config: &Config,
    token: &str,
    name: &str,
    kind: Kind,
    protocol: Protocol,
    devices: u32,
    site: &str,
) -> SimConfig {
    SimConfig {
        protocols: vec![protocol],
        devices,
        prefix: format!("{name}-"),
        seed: 7,
        profile: ProfileChoice::Fixed(kind),
        rate_hz: 0.2,
        state_dir: config.data_dir.join("demo-simulator").join(name),
        http: format!("http://{}", local(&config.http)),
        mqtt: local(&config.mqtt),
        tcp: local(&config.tcp),
        admin_token: Some(token.to_owned()),
        site: site.to_owned(),
        timezone: Some(config.timezone.clone()),
        progress: false,
        ..SimConfig::default()
    }
}

pub async fn run(config: Config, token: String) -> anyhow::Result<()> {
    let http = local(&config.http);
    let server = tokio::spawn(crate::serve::run(config.clone()));
    wait_for_http(&http).await?;
    let farm_site = "farm";
    {
        let (http, token, tz) = (http.clone(), token.clone(), config.timezone.clone());
        tokio::task::spawn_blocking(move || open_enrollment(&http, &token, farm_site, &tz))
            .await??;
    }
    let password_file = {
        let (http, token, dir) = (http.clone(), token.clone(), config.data_dir.clone());
        tokio::task::spawn_blocking(move || ensure_demo_user(&http, &token, &dir)).await??
    };
    let mut sims = Vec::new();
    let mut groups = vec![
        simulation(
            &config,
            &token,
            "home",
            Kind::Household,
            Protocol::MqttNative,
            4,
            "home",
        ),
        simulation(
            &config,
            &token,
            "building",
            Kind::Building,
            Protocol::HttpJson,
            1,
            "building",
        ),
        simulation(
            &config,
            &token,
            "farm",
            Kind::Miner,
            Protocol::Tcp,
            3,
            farm_site,
        ),
    ];
    if config.mqtt == "off" {
        groups[0].protocols = vec![Protocol::HttpLp];
    }
    for sim in groups {
        sims.push(tokio::spawn(async move {
            let name = sim.prefix.clone();
            if let Err(e) = wattline_simulator::run(sim).await {
                tracing::error!(group = %name, error = %e, "demo simulation stopped");
            }
        }));
    }
    let token_file = config.data_dir.join("admin-token");
    println!(
        "\nWattline demo is running.\n  API and dashboard: http://{http}/\n  MQTT broker:       mqtt://{}\n  socket meters:     tcp://{}\n  dashboard login:   {DEMO_EMAIL}, password in {} (cat {})\n  API:               the admin token in {} (curl -H \"Authorization: Token $(cat {})\" http://{http}/api/v1/devices)\n  simulated: a home (4 meters over MQTT), a three-phase building (HTTP), a mining farm (3 socket meters, TCP enrollment open)\n  Ctrl-C stops it.\n",
        local(&config.mqtt),
        local(&config.tcp),
        password_file.display(),
        password_file.display(),
        token_file.display(),
        token_file.display(),
    );
    let result = server.await.context("server task")?;
    for s in sims {
        let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_default_port_is_replaced_but_a_chosen_one_is_kept() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap().to_string();
        let replaced = free_or_same("MQTT", &taken, false).unwrap();
        assert_ne!(replaced, taken);
        assert!(TcpListener::bind(&replaced).is_ok(), "{replaced} is free");
        assert_eq!(free_or_same("MQTT", &taken, true).unwrap(), taken);
        let resolved = free_or_same("HTTP", "127.0.0.1:0", true).unwrap();
        assert!(!resolved.ends_with(":0"), "{resolved}");
    }
}
