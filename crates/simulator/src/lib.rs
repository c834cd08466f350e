//! `wattline simulate`: many simulated meters sending to a Wattline server.
//!
//! * **Profiles** (`profile/`): households, three-phase buildings and GPU mining rigs, each a
//!   pure function of (seed, device index, time), with an exact energy counter (`meter.rs`).
//!   Device k's series is the same whatever the device count, order or reading rate.
//! * **Protocols** (`encode.rs`, `sink/`): HTTP JSON and line protocol, MQTT native (device
//!   topic or gateway topic), Tasmota, Shelly Gen2, Clemap, and the TCP socket meter.
//! * **Store-and-forward** (`journal.rs`, `forward.rs`): every reading is appended to its
//!   group's CSV log and fsynced before it is sent; an acknowledgement pointer per log says
//!   how far the server has confirmed; after an outage, or a restart of the simulator with the
//!   same state dir, sending resumes from the pointer. Nothing is lost, and since Wattline
//!   stores a (device, channel, ts) once, a resend never doubles a reading.
//! * **Runs** (`run.rs`): device groups, each with one generator task, one log and one sender
//!   (sharing its connection where the protocol allows), progress on stderr, a JSON summary.

pub mod cli;
pub mod commlog;
pub mod control;
pub mod encode;
pub mod forward;
pub mod journal;
pub mod meter;
pub mod profile;
pub mod record;
pub mod register;
pub mod rng;
pub mod run;
pub mod sink;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use encode::Protocol;
pub use forward::RetryPolicy;
pub use profile::Kind;
pub use run::run;
pub use stats::Summary;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("registration: {0}")]
    Register(String),
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
    #[error("{0}")]
    Sink(#[from] sink::SinkError),
}

impl RunError {
    pub fn io(path: &Path, source: std::io::Error) -> RunError {
        RunError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Which load model each device gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileChoice {
    Fixed(Kind),
    /// Households, buildings and rigs mixed (by each device's own hash), limited to what the
    /// device's protocol can carry.
    Mix,
}

impl ProfileChoice {
    pub fn parse(s: &str) -> Option<ProfileChoice> {
        match s {
            "mix" => Some(ProfileChoice::Mix),
            other => Kind::parse(other).map(ProfileChoice::Fixed),
        }
    }

    /// The model of device `index` sending over `protocol`.
    pub fn kind_for(self, protocol: Protocol, seed: u64, index: u32) -> Kind {
        match self {
            ProfileChoice::Fixed(k) => k,
            ProfileChoice::Mix => {
                let u = rng::Key::new(seed, u64::from(index)).unit(0xf00, 0);
                if protocol == Protocol::Clemap {
                    Kind::Building
                } else if !protocol.supports(Kind::Building) {
                    if u < 0.8 {
                        Kind::Household
                    } else {
                        Kind::Miner
                    }
                } else if u < 0.7 {
                    Kind::Household
                } else if u < 0.9 {
                    Kind::Building
                } else {
                    Kind::Miner
                }
            }
        }
    }
}

/// Everything a run needs; `cli.rs` builds it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device k sends over `protocols[k % len]`.
    pub protocols: Vec<Protocol>,
    pub devices: u32,
    /// Index of the first device (to split a fleet over several processes).
    pub first_device: u32,
    /// Device names are `<prefix><index, 6 digits>`.
    pub prefix: String,
    pub seed: u64,
    pub profile: ProfileChoice,
    /// Readings per second per device (changeable per device at run time).
    pub rate_hz: f64,
    /// Time of the first reading (unix ms); `None`: now (real time) or, with `fast`, as far
    /// back as the run will span.
    pub start: Option<i64>,
    /// Generate as fast as the server takes it instead of in real time.
    pub fast: bool,
    /// Readings per device.
    pub count: Option<u64>,
    /// Simulated time span.
    pub duration: Option<Duration>,
    pub state_dir: PathBuf,
    /// Devices per group (one log, one sender, one shared connection each); `None`: by protocol.
    pub group_size: Option<usize>,
    /// Rows per batch sent.
    pub batch_rows: usize,
    /// How often a real-time group writes and fsyncs its log (and so sends).
    pub sync_every: Duration,
    pub retry: RetryPolicy,
    /// After a stop signal, how long to keep sending what is logged.
    pub drain_timeout: Duration,
    /// In fast mode, how far (rows) a group's generator may run ahead of acknowledgements.
    pub max_buffered_rows: u64,
    /// `http://host:port` of the API.
    pub http: String,
    /// `host:port` of the MQTT broker.
    pub mqtt: String,
    /// `host:port` of the socket-meter listener.
    pub tcp: String,
    pub admin_token: Option<String>,
    pub token: Option<String>,
    pub site: String,
    pub timezone: Option<String>,
    pub control: Option<control::Source>,
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocols: vec![Protocol::HttpJson],
            devices: 10,
            first_device: 0,
            prefix: "sim-".into(),
            seed: 42,
            profile: ProfileChoice::Fixed(Kind::Household),
            rate_hz: 1.0,
            start: None,
            fast: false,
            count: None,
            duration: None,
            state_dir: "wattline-sim".into(),
            group_size: None,
            batch_rows: 5000,
            sync_every: Duration::from_millis(200),
            retry: RetryPolicy::default(),
            drain_timeout: Duration::from_secs(10),
            max_buffered_rows: 200_000,
            http: "http://127.0.0.1:8080".into(),
            mqtt: "127.0.0.1:1883".into(),
            tcp: "127.0.0.1:4005".into(),
            admin_token: None,
            token: None,
            site: "sim".into(),
            timezone: None,
            control: None,
            progress: true,
        }
    }
}

impl Config {
    /// The devices of this run, in index order.
    pub fn plan(&self) -> Vec<register::DevicePlan> {
        (self.first_device..self.first_device + self.devices)
            .map(|index| {
                let protocol = self.protocols[index as usize % self.protocols.len()];
                register::DevicePlan {
                    index,
                    name: record::device_name(&self.prefix, index),
                    protocol,
                    kind: self.profile.kind_for(protocol, self.seed, index),
                }
            })
            .collect()
    }

    pub fn check(&self) -> Result<(), RunError> {
        let bad = |m: String| Err(RunError::Config(m));
        if self.protocols.is_empty() {
            return bad("no protocol".into());
        }
        if self.devices == 0 || self.devices > 1_000_000 {
            return bad(format!("--devices {}: 1 to 1,000,000", self.devices));
        }
        if !(self.rate_hz > 0.0 && self.rate_hz <= 1000.0) {
            return bad(format!("--rate {}: above 0, at most 1000 Hz", self.rate_hz));
        }
        if self.fast && self.count.is_none() && self.duration.is_none() {
            return bad("--fast needs --count or --duration".into());
        }
        if let ProfileChoice::Fixed(k) = self.profile {
            for p in &self.protocols {
                if !p.supports(k) {
                    return bad(format!(
                        "protocol {p} cannot carry the {} profile (clemap is three-phase only; \
                         tasmota, shelly and tcp are single-channel)",
                        k.as_str()
                    ));
                }
            }
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(format!(
                "--prefix {:?}: letters, digits, - _ .",
                self.prefix
            ));
        }
        Ok(())
    }
}
