//! `wattline serve`: open storage, start the engine, serve HTTP, shut down cleanly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wattline_domain::{Site, SiteId, TsMs};
use wattline_ingest::{Engine, EngineConfig};
use wattline_mqtt::{Broker, BrokerConfig, BrokerSide, Hub};
use wattline_storage::{DynStore, StoreError};
use wattline_web::{auth, AppState};

use crate::config::Config;

/// The site devices join when created without one; exists from the first start.
pub const DEFAULT_SITE: &str = "default";

pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn open_store(config: &Config) -> anyhow::Result<DynStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    match &config.database {
        None => {
            let path = config.data_dir.join("wattline.db");
            let store = wattline_storage::sqlite::SqliteStore::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            tracing::info!(path = %path.display(), "embedded store open");
            Ok(Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        Some(url) => {
            let store = wattline_storage::postgres::PgStore::connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            tracing::info!("PostgreSQL store open");
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => anyhow::bail!("this build has no PostgreSQL support (feature `postgres`)"),
    }
}

/// The admin token's hash: from the configuration, else from `<data_dir>/admin-token`,
/// generated there on first start and readable by the owner only.
fn admin_token_hash(config: &Config) -> anyhow::Result<String> {
    Ok(auth::hash_token(&admin_token(config)?))
}

/// The admin token itself: configured, or read from `<data_dir>/admin-token`, or generated
/// there (mode 600) on first start.
pub fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = config.admin_token.as_ref().filter(|t| !t.is_empty()) {
        anyhow::ensure!(
            token.len() >= 16,
            "admin_token must be at least 16 characters"
        );
        return Ok(token.clone());
    }
    let path = config.data_dir.join("admin-token");
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        tracing::info!(path = %path.display(), "admin token read from file");
        return Ok(token.trim().to_owned());
    }
    let token = auth::new_token("wla");
    write_private(&path, &token)?;
    tracing::warn!(path = %path.display(), "generated an admin token; read it from this file (mode 600)");
    Ok(token)
}

/// Creates `path` readable by its owner only; fails when it exists.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub async fn ensure_default_site(store: &DynStore, timezone: &str) -> anyhow::Result<()> {
    let site = Site {
        id: SiteId::parse(DEFAULT_SITE).expect("valid id"),
        name: "Default site".into(),
        timezone: timezone.into(),
        created_at: TsMs::now(),
    };
    match store.create_site(&site).await {
        Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Drops ended browser sessions hourly; an ended session is refused anyway, this only keeps
/// the table small.
async fn purge_sessions(store: DynStore, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => match store.purge_sessions(TsMs::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "expired sessions purged"),
                Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
            },
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight writes");
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Every MQTT device holds a connection: raise the open-file limit to what the system allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let addr = config.http_addr()?;
    // Bind first: a taken port should fail before anything else is touched.
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for HTTP on {addr} (in use?); choose another with --http ADDR or WATTLINE_HTTP")
    })?;
    let mqtt_listener = match (&config.mqtt_broker, config.mqtt_addr()?) {
        (None, Some(addr)) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for MQTT on {addr} (port {} in use? another broker such as Mosquitto may hold it); choose another with --mqtt ADDR (e.g. --mqtt 0.0.0.0:1884), WATTLINE_MQTT, or turn the built-in broker off with --mqtt off", addr.port())
        })?),
        _ => None,
    };
    let mqtts_listener = match (&config.mqtt_broker, &config.mqtts) {
        (None, Some(addr)) => {
            let addr: std::net::SocketAddr = addr.parse()?;
            let acceptor = wattline_mqtt::tls::acceptor(
                config
                    .mqtt_tls_cert
                    .as_deref()
                    .context("mqtts needs mqtt_tls_cert")?,
                config
                    .mqtt_tls_key
                    .as_deref()
                    .context("mqtts needs mqtt_tls_key")?,
            )?;
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for MQTT over TLS on {addr} (port {} in use?); choose another with --mqtts ADDR", addr.port())
            })?;
            Some((listener, acceptor))
        }
        _ => None,
    };
    let tcp_listener = match config.tcp_addr()? {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for TCP meters on {addr} (port {} in use?); choose another with --tcp ADDR or WATTLINE_TCP, or turn the listener off with --tcp off", addr.port())
        })?),
        None => None,
    };
    // Before storage: a certificate problem should stop the start-up before anything is touched.
    let https = crate::tls::https_config(&config)?;
    let store = open_store(&config).await?;
    ensure_default_site(&store, &config.timezone).await?;
    let admin_token_hash = admin_token_hash(&config)?;
    let engine_config = EngineConfig {
        energy: wattline_domain::energy::EnergyConfig {
            max_power_w: config.max_power_w,
            max_gap_ms: config.max_integration_gap_s as i64 * 1000,
            ..Default::default()
        },
        max_queued_readings: config.max_queued_readings,
        rollup_flush_interval: std::time::Duration::from_millis(config.rollup_flush_ms.max(100)),
        reorder_window: std::time::Duration::from_secs(config.reorder_window_s),
        retention: config.retention(),
        ..EngineConfig::default()
    };
    let (engine, tasks) = Engine::start(store, engine_config).await?;
    let limits = wattline_domain::Limits::default();
    let hub = Hub::new(
        engine.clone(),
        admin_token_hash.clone(),
        limits.clone(),
        Duration::from_secs(config.offline_after_s),
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut mqtt_tasks = Vec::new();
    mqtt_tasks.push(tokio::spawn(
        hub.clone()
            .run_pending_flusher(Duration::from_secs(2), stop_rx.clone()),
    ));
    let broker = match &config.mqtt_broker {
        Some(url) => {
            let client_config = wattline_mqtt::client::ClientConfig {
                url: wattline_mqtt::client::BrokerUrl::parse(url).map_err(anyhow::Error::msg)?,
                group: config.mqtt_group.clone(),
                client_id: format!("wattline-{:08x}", rand_u32()),
                ca_pem: match &config.mqtt_broker_ca {
                    Some(p) => {
                        Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    }
                    None => None,
                },
            };
            tracing::info!(host = %client_config.url.host, port = client_config.url.port, group = %client_config.group, "using the external MQTT broker (built-in broker not started)");
            let hub = hub.clone();
            let stop = stop_rx.clone();
            mqtt_tasks.push(tokio::spawn(async move {
                if let Err(e) = wattline_mqtt::client::run(hub, client_config, stop).await {
                    tracing::error!(error = %e, "external MQTT broker client stopped");
                }
            }));
            None
        }
        None => {
            let broker = Broker::new(Arc::new(BrokerSide(hub.clone())), BrokerConfig::default());
            hub.set_kicker(Box::new(broker.kicker()));
            if let Some(listener) = mqtt_listener {
                let bound = listener.local_addr()?;
                tracing::info!(mqtt_addr = %bound, "Wattline MQTT broker listening on mqtt://{bound}");
                let b = broker.clone();
                let stop = stop_rx.clone();
                mqtt_tasks.push(tokio::spawn(async move {
                    b.serve(listener, stop, |tcp| async move { Ok(tcp) }).await;
                }));
            }
            if let Some((listener, acceptor)) = mqtts_listener {
                let bound = listener.local_addr()?;
                tracing::info!(mqtts_addr = %bound, "Wattline MQTT broker (TLS) listening on mqtts://{bound}");
                let b = broker.clone();
                let stop = stop_rx.clone();
                mqtt_tasks.push(tokio::spawn(async move {
                    b.serve(listener, stop, move |tcp| {
                        let acceptor = acceptor.clone();
                        async move {
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        "TLS handshake timed out",
                                    ))
                                })
                        }
                    })
                    .await;
                }));
            }
            Some(broker)
        }
    };
    mqtt_tasks.push(tokio::spawn(purge_sessions(
        engine.store().clone(),
        stop_rx.clone(),
    )));
    let tcp_metrics = match tcp_listener {
        Some(listener) => {
            let tcp_config = wattline_tcp::TcpConfig {
                idle_timeout: Duration::from_secs(config.tcp_idle_timeout_s),
                max_connections: config.tcp_max_connections,
                ..Default::default()
            };
            let meters =
                wattline_tcp::TcpMeters::new(engine.clone(), limits.clone(), tcp_config).await?;
            let stats = meters.stats();
            let bound = listener.local_addr()?;
            tracing::info!(tcp_addr = %bound, "Wattline TCP meters listening on tcp://{bound}");
            mqtt_tasks.push(tokio::spawn(meters.serve(listener, stop_rx.clone())));
            // Only the counters: a handle on the engine here would outlive shutdown.
            Some(Arc::new(move || stats.render()) as _)
        }
        None => None,
    };
    let state = AppState {
        engine,
        hub,
        broker_metrics: broker.map(|b| Arc::new(move || b.stats().render()) as _),
        tcp_metrics,
        admin_token_hash: admin_token_hash.into(),
        limits: Arc::new(limits),
        max_body_bytes: config.max_body_bytes,
        default_site: DEFAULT_SITE.into(),
        default_timezone: config.timezone.clone(),
        throttle: Default::default(),
        secure_cookies: https.is_some(),
        ingest_limiter: Arc::new(wattline_web::ratelimit::RateLimiter::new(
            config.ingest_rate_limit,
        )),
    };
    let bound = listener.local_addr()?;
    match https {
        Some(tls) => {
            tracing::info!(http_addr = %bound, "Wattline HTTP API listening on https://{bound} (HTTPS only)");
            wattline_web::serve_tls(listener, tls, state, shutdown_signal()).await?;
        }
        None => {
            tracing::info!(http_addr = %bound, "Wattline HTTP API listening on http://{bound}");
            wattline_web::serve(listener, state, shutdown_signal()).await?;
        }
    }
    // MQTT and TCP meters stop after HTTP: acknowledged messages are already durable, and the
    // engine's shutdown below flushes the rest.
    let _ = stop_tx.send(true);
    for t in mqtt_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    tasks.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
