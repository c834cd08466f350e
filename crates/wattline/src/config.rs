//! Configuration: built-in defaults, then a TOML file, then `WATTLINE_*` environment
//! variables, then command-line flags; each layer overrides the one before.
//!
//! Loading takes the environment as a map, so tests never touch the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Every option, with its default. `docs()` describes each; a test keeps the two in step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: bool,
    pub mqtt: String,
    pub mqtts: Option<String>,
    pub mqtt_tls_cert: Option<PathBuf>,
    pub mqtt_tls_key: Option<PathBuf>,
    pub mqtt_broker: Option<String>,
    pub mqtt_broker_ca: Option<PathBuf>,
    pub mqtt_group: String,
    pub tcp: String,
    pub tcp_idle_timeout_s: u64,
    pub tcp_max_connections: usize,
    pub offline_after_s: u64,
    pub data_dir: PathBuf,
    pub database: Option<String>,
    pub admin_token: Option<String>,
    pub timezone: String,
    pub max_body_bytes: usize,
    pub ingest_rate_limit: u32,
    pub retention_raw_days: u32,
    pub retention_minute_days: u32,
    pub retention_hour_days: u32,
    pub retention_day_days: u32,
    pub max_queued_readings: usize,
    pub rollup_flush_ms: u64,
    pub reorder_window_s: u64,
    pub max_power_w: f64,
    pub max_integration_gap_s: u64,
    pub log_format: String,
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: "0.0.0.0:8080".into(),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            mqtt: "0.0.0.0:1883".into(),
            mqtts: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
            mqtt_broker: None,
            mqtt_broker_ca: None,
            mqtt_group: "wattline".into(),
            tcp: "off".into(),
            tcp_idle_timeout_s: 120,
            tcp_max_connections: 10_000,
            offline_after_s: 600,
            data_dir: PathBuf::from("wattline-data"),
            database: None,
            admin_token: None,
            timezone: "UTC".into(),
            max_body_bytes: 16 * 1024 * 1024,
            ingest_rate_limit: 1_000,
            retention_raw_days: 30,
            retention_minute_days: 365,
            retention_hour_days: 0,
            retention_day_days: 0,
            max_queued_readings: 500_000,
            rollup_flush_ms: 2_000,
            reorder_window_s: 30,
            max_power_w: 1_000_000.0,
            max_integration_gap_s: 600,
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

/// (option, description) for every field, in the order the README lists them.
pub fn docs() -> &'static [(&'static str, &'static str)] {
    &[
        ("http", "Address of the HTTP API (port 0 picks a free port; the bound address is logged)."),
        ("tls_cert", "PEM certificate chain for HTTPS; with `tls_key` the HTTP API serves HTTPS only."),
        ("tls_key", "PEM private key for HTTPS (with `tls_cert`)."),
        ("tls_self_signed", "Without `tls_cert`/`tls_key`: serve HTTPS with a self-signed certificate, generated on first start in `<data_dir>/tls/` and reused; its SHA-256 fingerprint is logged."),
        ("mqtt", "Address of the built-in MQTT broker (3.1.1 and 5; port 0 picks a free port; `off` disables it). Not started when `mqtt_broker` is set."),
        ("mqtts", "Address of the built-in broker's TLS listener (needs `mqtt_tls_cert` and `mqtt_tls_key`)."),
        ("mqtt_tls_cert", "PEM certificate chain for `mqtts`."),
        ("mqtt_tls_key", "PEM private key for `mqtts`."),
        ("mqtt_broker", "`mqtt://user:pass@host:port` or `mqtts://…`: use this external broker (shared subscription) instead of the built-in one."),
        ("mqtt_broker_ca", "PEM CA certificate to verify an `mqtts://` external broker."),
        ("mqtt_group", "Shared-subscription group on the external broker; nodes of one group split the stream."),
        ("tcp", "Address of the listener for raw TCP socket meters (unframed JSON; e.g. 0.0.0.0:4005; port 0 picks a free port; `off` disables it)."),
        ("tcp_idle_timeout_s", "A TCP meter connection that sends nothing for this long is closed."),
        ("tcp_max_connections", "TCP meter connections open at once; more are refused."),
        ("offline_after_s", "A device that sends nothing for this long is shown offline."),
        ("data_dir", "Directory for the embedded database and the generated admin token; created on first start."),
        ("database", "`postgres://user:pass@host:port/db` to store in PostgreSQL instead of the embedded SQLite file."),
        ("admin_token", "The admin token. Unset: read from `<data_dir>/admin-token`, generated there (mode 600) on first start."),
        ("timezone", "IANA time zone of the default site and of sites created without one."),
        ("max_body_bytes", "Largest request body accepted (after gzip decompression)."),
        ("ingest_rate_limit", "Ingest requests per second per client address (bursts of twice that); more get 429. 0 = no limit."),
        ("retention_raw_days", "Days raw readings are kept (0 = forever)."),
        ("retention_minute_days", "Days per-minute rollups are kept (0 = forever)."),
        ("retention_hour_days", "Days hourly rollups are kept (0 = forever)."),
        ("retention_day_days", "Days daily rollups are kept (0 = forever)."),
        ("max_queued_readings", "Readings that may wait for storage before writers are held back (backpressure)."),
        ("rollup_flush_ms", "How often pending rollups are merged into storage."),
        ("reorder_window_s", "How far behind a series' newest reading a reading may arrive and still join the rollups without a repair."),
        ("max_power_w", "Highest plausible power of one channel; a counter jump needing more is a meter change, not use."),
        ("max_integration_gap_s", "Longest gap across which power is integrated into energy when a meter sends no counter."),
        ("log_format", "`text` or `json`."),
        ("log_level", "Log filter, e.g. `info` or `wattline=debug` (RUST_LOG overrides)."),
    ]
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub http: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--tls-self-signed` given; it can only switch the option on.
    pub tls_self_signed: bool,
    pub mqtt: Option<String>,
    pub mqtts: Option<String>,
    pub mqtt_broker: Option<String>,
    pub tcp: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub log_format: Option<String>,
}

impl Config {
    /// Builds the configuration from its layers: `file` (TOML, optional), `env` (only keys
    /// starting with `WATTLINE_` are read) and `flags`.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        flags: &Overrides,
    ) -> anyhow::Result<(Config, Vec<String>)> {
        let mut warnings = Vec::new();
        let defaults = toml::Table::try_from(Config::default()).context("serializing defaults")?;
        let mut table = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let file_table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?;
            table.extend(file_table);
        }
        let known: Vec<&str> = docs().iter().map(|(k, _)| *k).collect();
        // WATTLINE_TEST_* variables configure the test suite, not the server.
        let mut env_keys: Vec<&String> = env
            .keys()
            .filter(|k| k.starts_with("WATTLINE_") && !k.starts_with("WATTLINE_TEST_"))
            .collect();
        env_keys.sort();
        for key in env_keys {
            let name = key["WATTLINE_".len()..].to_ascii_lowercase();
            if !known.contains(&name.as_str()) {
                // Warned about, not fatal: other tools share the prefix, and a typo is visible.
                warnings.push(format!(
                    "ignoring unknown environment variable {key}; known options: {}",
                    known.join(", ")
                ));
                continue;
            }
            let raw = &env[key];
            let value = match defaults.get(&name) {
                Some(toml::Value::Integer(_)) => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .with_context(|| format!("{key}={raw:?} is not a whole number"))?,
                ),
                Some(toml::Value::Float(_)) => toml::Value::Float(
                    raw.trim()
                        .parse()
                        .with_context(|| format!("{key}={raw:?} is not a number"))?,
                ),
                Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                    raw.trim()
                        .parse()
                        .with_context(|| format!("{key}={raw:?} is not true or false"))?,
                ),
                _ => toml::Value::String(raw.clone()),
            };
            table.insert(name, value);
        }
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                table.insert(k.into(), toml::Value::String(v));
            }
        };
        set("http", flags.http.clone());
        set(
            "tls_cert",
            flags.tls_cert.as_ref().map(|p| p.display().to_string()),
        );
        set(
            "tls_key",
            flags.tls_key.as_ref().map(|p| p.display().to_string()),
        );
        set("mqtt", flags.mqtt.clone());
        set("mqtts", flags.mqtts.clone());
        set("mqtt_broker", flags.mqtt_broker.clone());
        set("tcp", flags.tcp.clone());
        set(
            "data_dir",
            flags.data_dir.as_ref().map(|p| p.display().to_string()),
        );
        set("database", flags.database.clone());
        set("log_format", flags.log_format.clone());
        if flags.tls_self_signed {
            table.insert("tls_self_signed".into(), toml::Value::Boolean(true));
        }
        let mut config: Config = table.try_into().context("invalid configuration")?;
        // An empty value (`WATTLINE_TLS_CERT=` in a compose file) means unset, not "the file ''".
        for path in [&mut config.tls_cert, &mut config.tls_key] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
        config.validate()?;
        Ok((config, warnings))
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.http_addr()?;
        self.mqtt_addr()?;
        self.tcp_addr()?;
        if self.tcp_idle_timeout_s == 0 {
            bail!("tcp_idle_timeout_s must be at least 1");
        }
        if self.tcp_max_connections == 0 {
            bail!("tcp_max_connections must be at least 1");
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), None) => bail!(
                "tls_cert is set ({}) but tls_key is not; HTTPS needs both PEM files (or neither, with tls_self_signed)",
                cert.display()
            ),
            (None, Some(key)) => bail!(
                "tls_key is set ({}) but tls_cert is not; HTTPS needs both PEM files (or neither, with tls_self_signed)",
                key.display()
            ),
            _ => {}
        }
        if let Some(a) = &self.mqtts {
            parse_addr("mqtts", a)?;
            if self.mqtt_tls_cert.is_none() || self.mqtt_tls_key.is_none() {
                bail!("mqtts needs mqtt_tls_cert and mqtt_tls_key (PEM files)");
            }
        }
        if let Some(url) = &self.mqtt_broker {
            wattline_mqtt::client::BrokerUrl::parse(url)
                .map_err(|e| anyhow::anyhow!("mqtt_broker: {e}"))?;
        }
        if self.mqtt_group.is_empty() || self.mqtt_group.contains(['/', '+', '#']) {
            bail!("mqtt_group must be a non-empty topic level without / + #");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be text or json, not {:?}", self.log_format);
        }
        wattline_domain::time::parse_zone(&self.timezone)
            .map_err(|e| anyhow::anyhow!("timezone: {e}"))?;
        if let Some(db) = &self.database {
            if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
                bail!("database must be a postgres:// URL (leave it unset for the embedded store)");
            }
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        Ok(())
    }

    /// The built-in broker's address; `None` when it is off (or an external broker is used).
    pub fn mqtt_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.mqtt == "off" || self.mqtt.is_empty() {
            return Ok(None);
        }
        parse_addr("mqtt", &self.mqtt).map(Some)
    }

    /// The socket-meter listener's address; `None` when it is off (the default).
    pub fn tcp_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.tcp == "off" || self.tcp.is_empty() {
            return Ok(None);
        }
        self.tcp.parse().map(Some).with_context(|| {
            format!(
                "tcp address {:?} is not host:port (e.g. 0.0.0.0:4005) or off",
                self.tcp
            )
        })
    }

    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.http.parse().with_context(|| {
            format!(
                "http address {:?} is not host:port (e.g. 0.0.0.0:8080)",
                self.http
            )
        })
    }

    pub fn retention(&self) -> wattline_storage::Retention {
        let days = |d: u32| (d > 0).then_some(d);
        wattline_storage::Retention {
            raw_days: days(self.retention_raw_days),
            minute_days: days(self.retention_minute_days),
            hour_days: days(self.retention_hour_days),
            day_days: days(self.retention_day_days),
        }
    }
}

fn parse_addr(option: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("{option} address {value:?} is not host:port (e.g. 0.0.0.0:1883)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_option_is_documented() {
        let mut fields: Vec<String> = toml::Table::try_from(Config {
            tls_cert: Some(PathBuf::new()),
            tls_key: Some(PathBuf::new()),
            database: Some(String::new()),
            admin_token: Some(String::new()),
            mqtts: Some(String::new()),
            mqtt_tls_cert: Some(PathBuf::new()),
            mqtt_tls_key: Some(PathBuf::new()),
            mqtt_broker: Some(String::new()),
            mqtt_broker_ca: Some(PathBuf::new()),
            ..Config::default()
        })
        .unwrap()
        .keys()
        .cloned()
        .collect();
        let mut documented: Vec<String> = docs().iter().map(|(k, _)| k.to_string()).collect();
        fields.sort();
        documented.sort();
        assert_eq!(fields, documented);
    }

    #[test]
    fn readme_documents_every_option() {
        let readme = include_str!("../../../README.md");
        for (k, _) in docs() {
            assert!(
                readme.contains(&format!("| `{k}` |")),
                "README's configuration table lacks {k}"
            );
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "http = \"127.0.0.1:9000\"\nretention_raw_days = 7\ntimezone = \"Europe/Zurich\"\n",
        )
        .unwrap();
        let e = env(&[
            ("WATTLINE_RETENTION_RAW_DAYS", "14"),
            ("WATTLINE_ADMIN_TOKEN", "123"),
            ("HOME", "/root"),
        ]);
        let flags = Overrides {
            http: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let (c, warnings) = Config::load(Some(&file), &e, &flags).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.http, "127.0.0.1:0", "flag beats file");
        assert_eq!(c.retention_raw_days, 14, "env beats file");
        assert_eq!(c.timezone, "Europe/Zurich", "file beats default");
        assert_eq!(
            c.admin_token.as_deref(),
            Some("123"),
            "a numeric-looking token stays a string"
        );
        assert_eq!(c.retention_minute_days, 365);
    }

    #[test]
    fn bad_configuration_names_the_option() {
        let err = Config::load(
            None,
            &env(&[("WATTLINE_RETENTION_RAW_DAYS", "a week")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("WATTLINE_RETENTION_RAW_DAYS"),
            "{err:#}"
        );
        let (_, warnings) =
            Config::load(None, &env(&[("WATTLINE_HTPP", "x")]), &Overrides::default()).unwrap();
        assert!(
            warnings[0].contains("unknown environment variable WATTLINE_HTPP"),
            "{warnings:?}"
        );
        let err = Config::load(
            None,
            &env(&[("WATTLINE_TIMEZONE", "Mars/Olympus")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("Mars/Olympus"));
    }

    #[test]
    fn https_needs_both_files_and_takes_them_from_any_layer() {
        let (c, _) = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            (c.tls_cert, c.tls_key, c.tls_self_signed),
            (None, None, false)
        );
        assert_eq!(c.ingest_rate_limit, 1000);
        let e = env(&[
            ("WATTLINE_TLS_CERT", "/env/cert.pem"),
            ("WATTLINE_TLS_KEY", "/env/key.pem"),
            ("WATTLINE_TLS_SELF_SIGNED", "true"),
            ("WATTLINE_INGEST_RATE_LIMIT", "0"),
        ]);
        let (c, _) = Config::load(None, &e, &Overrides::default()).unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/env/cert.pem")));
        assert!(c.tls_self_signed);
        assert_eq!(c.ingest_rate_limit, 0);
        let flags = Overrides {
            tls_cert: Some("/flag/cert.pem".into()),
            tls_self_signed: true,
            ..Default::default()
        };
        let (c, _) = Config::load(None, &e, &flags).unwrap();
        assert_eq!(
            c.tls_cert,
            Some(PathBuf::from("/flag/cert.pem")),
            "flag wins"
        );
        assert_eq!(c.tls_key, Some(PathBuf::from("/env/key.pem")));

        let err = Config::load(None, &env(&[]), &flags).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("tls_key is not") && msg.contains("/flag/cert.pem"),
            "{msg}"
        );
        let err = Config::load(
            None,
            &env(&[
                ("WATTLINE_TLS_KEY", "/env/key.pem"),
                ("WATTLINE_TLS_CERT", ""),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("tls_cert is not"), "{err:#}");
    }

    #[test]
    fn tcp_listener_is_off_unless_asked_for() {
        let (c, _) = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.tcp_addr().unwrap(), None);
        let (c, _) = Config::load(
            None,
            &env(&[("WATTLINE_TCP", "127.0.0.1:4005")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.tcp_addr().unwrap(),
            Some("127.0.0.1:4005".parse().unwrap())
        );
        let flags = Overrides {
            tcp: Some("off".into()),
            ..Default::default()
        };
        let (c, _) =
            Config::load(None, &env(&[("WATTLINE_TCP", "127.0.0.1:4005")]), &flags).unwrap();
        assert_eq!(c.tcp_addr().unwrap(), None, "the flag wins");
        let err = Config::load(
            None,
            &env(&[("WATTLINE_TCP", "port 4005")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("tcp address"), "{err:#}");
        let err = Config::load(
            None,
            &env(&[("WATTLINE_TCP_MAX_CONNECTIONS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("tcp_max_connections"),
            "{err:#}"
        );
    }
}
