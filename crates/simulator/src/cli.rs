//! The `wattline simulate` command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::{control, Config, ProfileChoice, Protocol, RetryPolicy, RunError};

/// Simulated meters sending to a Wattline server, with store-and-forward.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Protocols, comma-separated; device k uses the (k mod n)-th. One of http-json, http-lp,
    /// mqtt-native, mqtt-gateway, tasmota, shelly, clemap, tcp, null.
    #[arg(long, default_value = "http-json", value_delimiter = ',')]
    pub protocol: Vec<String>,
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    pub devices: u32,
    /// Index of the first device (to split a fleet over several processes).
    #[arg(long, default_value_t = 0)]
    pub first_device: u32,
    /// Readings per second per device (change it per device at run time with --control).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Load model: household, building (three-phase), miner (GPU rig) or mix.
    #[arg(long, default_value = "household")]
    pub profile: String,
    /// Seed: the same seed gives the same readings.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Time of the first reading: RFC 3339 or unix milliseconds (default: now; with --fast,
    /// early enough for the run to end by now).
    #[arg(long)]
    pub start: Option<String>,
    /// Generate as fast as the server acknowledges instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Readings per device, then stop.
    #[arg(long)]
    pub count: Option<u64>,
    /// Simulated time to run, e.g. 90s, 15m, 2h, 1d.
    #[arg(long)]
    pub duration: Option<String>,
    /// Logs (one CSV per device group), acknowledgement pointers, credentials, comm.log.
    /// Running again with the same dir resumes: unacknowledged readings are sent first.
    #[arg(long, default_value = "wattline-sim")]
    pub state_dir: PathBuf,
    /// Wattline's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// Wattline's MQTT broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Wattline's socket-meter listener, host:port.
    #[arg(long, default_value = "127.0.0.1:4005")]
    pub tcp: String,
    /// Admin token: register the site, its ingest token and the devices.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Token for HTTP writes and the MQTT gateway (default: a site token made at registration).
    #[arg(long)]
    pub token: Option<String>,
    /// Site of the devices (created with --admin-token if missing).
    #[arg(long, default_value = "sim")]
    pub site: String,
    /// Zone of a site created here (default: the server's default zone).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Device names are <prefix><index, 6 digits>.
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// Devices per group: one log, one sender, one shared connection (default 1000; 250 for
    /// protocols with a connection per device).
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Rows per batch sent.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// How often a group writes and fsyncs its log in real time, ms.
    #[arg(long, default_value_t = 200)]
    pub sync_ms: u64,
    /// First retry backoff, ms (doubling).
    #[arg(long, default_value_t = 200)]
    pub backoff_ms: u64,
    /// Longest retry backoff, ms.
    #[arg(long, default_value_t = 5000)]
    pub max_backoff_ms: u64,
    /// A batch failing this long stops the run (its readings stay logged), e.g. 10m.
    #[arg(long, default_value = "10m")]
    pub give_up_after: String,
    /// After Ctrl-C or SIGTERM, how long to keep sending what is logged.
    #[arg(long, default_value = "10s")]
    pub drain_timeout: String,
    /// With --fast, how many unacknowledged rows a group may run ahead.
    #[arg(long, default_value_t = 200_000)]
    pub max_buffered: u64,
    /// Run-time commands (`rate <device> <hz>`, `scale <device> <factor>`): `-` for stdin, or
    /// a file to follow.
    #[arg(long)]
    pub control: Option<String>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `90`, `90s`, `15m`, `2h`, `1d`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, RunError> {
    let s = s.trim();
    let bad = || RunError::Config(format!("{s:?} is not a duration (e.g. 90s, 15m, 2h, 1d)"));
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn parse_start(s: &str) -> Result<i64, RunError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| RunError::Config(format!("--start {s:?}: {e}")))
}

impl SimulateArgs {
    pub fn config(&self) -> Result<Config, RunError> {
        let mut protocols = Vec::new();
        for p in &self.protocol {
            let p = Protocol::parse(p.trim()).ok_or_else(|| {
                RunError::Config(format!(
                    "--protocol {p:?}: one of {}",
                    Protocol::ALL.map(|p| p.as_str()).join(", ")
                ))
            })?;
            if protocols.contains(&p) {
                return Err(RunError::Config(format!("--protocol {p} given twice")));
            }
            protocols.push(p);
        }
        Ok(Config {
            protocols,
            devices: self.devices,
            first_device: self.first_device,
            prefix: self.prefix.clone(),
            seed: self.seed,
            profile: ProfileChoice::parse(&self.profile).ok_or_else(|| {
                RunError::Config(format!(
                    "--profile {:?}: household, building, miner or mix",
                    self.profile
                ))
            })?,
            rate_hz: self.rate,
            start: self.start.as_deref().map(parse_start).transpose()?,
            fast: self.fast,
            count: self.count,
            duration: self.duration.as_deref().map(parse_duration).transpose()?,
            state_dir: self.state_dir.clone(),
            group_size: self.group_size,
            batch_rows: self.batch.max(1),
            sync_every: Duration::from_millis(self.sync_ms.max(1)),
            retry: RetryPolicy {
                initial: Duration::from_millis(self.backoff_ms.max(1)),
                max: Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms).max(1)),
                give_up_after: parse_duration(&self.give_up_after)?,
            },
            drain_timeout: parse_duration(&self.drain_timeout)?,
            max_buffered_rows: self.max_buffered.max(1),
            http: self.http.clone(),
            mqtt: self.mqtt.clone(),
            tcp: self.tcp.clone(),
            admin_token: self.admin_token.clone(),
            token: self.token.clone(),
            site: self.site.clone(),
            timezone: self.timezone.clone(),
            control: self.control.as_deref().map(control::Source::parse),
            progress: !self.quiet,
        })
    }
}

/// Runs `wattline simulate`: the summary as one JSON line on stdout; the exit code is 1 when
/// a group gave up (its readings stay in its log for the next run), else 0.
pub fn main(args: &SimulateArgs) -> Result<i32, RunError> {
    let cfg = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Config(format!("tokio runtime: {e}")))?;
    let summary = runtime.block_on(crate::run(cfg))?;
    // The senders' connection tasks may still be closing; they are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    println!("{}", serde_json::to_string(&summary).expect("summary JSON"));
    if !args.quiet {
        eprintln!(
            "simulate: generated {} rows, acknowledged {}, resent {}, replayed {}, rejected {}, \
             still buffered {} ({:.0} acknowledged/s over {:.1} s)",
            summary.generated,
            summary.acknowledged,
            summary.resent,
            summary.replayed,
            summary.rejected,
            summary.buffered,
            summary.acked_per_s,
            summary.elapsed_s
        );
        for f in &summary.failures {
            eprintln!("simulate: {f}");
        }
    }
    Ok(if summary.failures.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5y").is_err());
        assert!(parse_start("2026-01-05T17:00:00Z").unwrap() == 1_767_632_400_000);
    }
}
