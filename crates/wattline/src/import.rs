//! `wattline import FILE`: backfills historical readings into a running server.
//!
//! The file is sent to the server's own write API in batches, so everything the server does
//! for live data holds for imports too: a (device, channel, ts) is stored once however often
//! it is sent (running an import twice stores each reading once), late readings repair the
//! rollups they touch, and refused lines are reported with their reason. Going through the
//! server rather than the database file also means an import never races a running server
//! for the SQLite writer lock.
//!
//! Formats:
//! * line protocol (`.lp`, `.txt`, or `--format lp`), sent as is, with `--precision`;
//! * CSV with a header (`--format csv` or `.csv`): `device` (or `device_id`), optional
//!   `channel`, `ts` (or `time`, `timestamp`: RFC 3339, or a unix time whose unit is
//!   `--precision`, or guessed from its number of digits), and columns named as the
//!   quantities (`voltage`, `power`, `energy`, ...). The server's own `/api/v1/export` CSV
//!   imports unchanged. Other columns are ignored, and said so once.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wattline_domain::Quantity;

/// Lines per request: large enough to amortise a request, small enough that one refused
/// request is cheap to resend.
const BATCH_LINES: usize = 5000;

#[derive(Debug, Clone)]
pub struct ImportArgs {
    pub file: PathBuf,
    pub url: String,
    pub token: String,
    pub format: Option<String>,
    /// Unit of numeric timestamps: s, ms, us or ns; `None` guesses from the digits (CSV) or
    /// means nanoseconds (line protocol, as InfluxDB).
    pub precision: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub requests: u64,
    pub retries: u64,
    pub seconds: f64,
}

enum Format {
    LineProtocol,
    Csv,
}

pub fn run(args: &ImportArgs) -> anyhow::Result<Summary> {
    let format = match args.format.as_deref() {
        Some("lp") | Some("line-protocol") => Format::LineProtocol,
        Some("csv") => Format::Csv,
        Some(other) => bail!("--format {other:?}: use csv or lp"),
        None => match args.file.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("lp") | Some("txt") | Some("line") => Format::LineProtocol,
            _ => bail!(
                "cannot tell the format of {} from its name; add --format csv or --format lp",
                args.file.display()
            ),
        },
    };
    if let Some(p) = &args.precision {
        if !matches!(p.as_str(), "s" | "ms" | "us" | "ns") {
            bail!("--precision {p:?}: use s, ms, us or ns");
        }
    }
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = Counting {
        inner: BufReader::with_capacity(1 << 20, file),
        read: 0,
    };
    let client = Client::new(args)?;
    let mut progress = Progress::new(&args.file, total_bytes);
    let mut summary = Summary::default();
    let started = Instant::now();
    match format {
        Format::LineProtocol => {
            let precision = args.precision.clone().unwrap_or_else(|| "ns".into());
            let mut batch = String::new();
            let mut n = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                batch.push_str(&line);
                if !line.ends_with('\n') {
                    batch.push('\n');
                }
                n += 1;
                if n == BATCH_LINES {
                    client.send(&batch, n, &precision, &mut summary)?;
                    batch.clear();
                    n = 0;
                    progress.show(reader.read, &summary);
                }
            }
            if n > 0 {
                client.send(&batch, n, &precision, &mut summary)?;
            }
        }
        Format::Csv => {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let columns = CsvColumns::parse(header.trim_end_matches(['\r', '\n']))?;
            let precision = args.precision.clone();
            let mut batch = String::new();
            let mut n = 0;
            let mut line = String::new();
            let mut row = 1usize;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                row += 1;
                let text = line.trim_end_matches(['\r', '\n']);
                if text.is_empty() {
                    continue;
                }
                match columns.to_line_protocol(text, precision.as_deref()) {
                    Ok(Some(lp)) => {
                        batch.push_str(&lp);
                        batch.push('\n');
                        n += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        summary.lines += 1;
                        summary.rejected += 1;
                        eprintln!("row {row}: {e}");
                    }
                }
                if n == BATCH_LINES {
                    client.send(&batch, n, "ms", &mut summary)?;
                    batch.clear();
                    n = 0;
                    progress.show(reader.read, &summary);
                }
            }
            if n > 0 {
                client.send(&batch, n, "ms", &mut summary)?;
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    progress.done(reader.read, &summary);
    Ok(summary)
}

struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: BufRead> Counting<R> {
    fn read_line(&mut self, buf: &mut String) -> std::io::Result<usize> {
        let n = self.inner.read_line(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Which CSV column holds what.
struct CsvColumns {
    device: usize,
    channel: Option<usize>,
    ts: usize,
    quantities: Vec<(usize, Quantity)>,
    width: usize,
}

impl CsvColumns {
    fn parse(header: &str) -> anyhow::Result<CsvColumns> {
        let names: Vec<String> = header
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let find = |aliases: &[&str]| names.iter().position(|n| aliases.contains(&n.as_str()));
        let device = find(&["device", "device_id"]).with_context(|| {
            format!("the CSV header {header:?} has no device column (device or device_id); the first line must name the columns")
        })?;
        let ts = find(&["ts", "time", "timestamp"]).with_context(|| {
            format!("the CSV header {header:?} has no ts (or time, timestamp) column")
        })?;
        let channel = find(&["channel"]);
        let mut quantities = Vec::new();
        let mut ignored = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i == device || i == ts || Some(i) == channel {
                continue;
            }
            match Quantity::from_field(n) {
                Some(q) => quantities.push((i, q)),
                None => ignored.push(n.as_str()),
            }
        }
        if quantities.is_empty() {
            bail!("the CSV header {header:?} names no quantity (voltage, current, power, energy, ...)");
        }
        if !ignored.is_empty() {
            eprintln!(
                "ignoring CSV columns that are no quantity: {}",
                ignored.join(", ")
            );
        }
        Ok(CsvColumns {
            device,
            channel,
            ts,
            quantities,
            width: names.len(),
        })
    }

    /// One CSV row as a line-protocol line in milliseconds; `None` for a row with no values
    /// (the export writes empty cells for absent quantities).
    fn to_line_protocol(
        &self,
        row: &str,
        precision: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let cells: Vec<&str> = row.split(',').map(str::trim).collect();
        if cells.len() != self.width {
            bail!("{} cells where the header has {}", cells.len(), self.width);
        }
        let device = cells[self.device];
        if device.is_empty() {
            bail!("empty device");
        }
        let ts = parse_ts(cells[self.ts], precision)?;
        let mut line = format!("import,device={}", escape_tag(device));
        if let Some(c) = self.channel.map(|i| cells[i]).filter(|c| !c.is_empty()) {
            line.push_str(",channel=");
            line.push_str(&escape_tag(c));
        }
        let mut sep = ' ';
        for (i, q) in &self.quantities {
            let v = cells[*i];
            if v.is_empty() {
                continue;
            }
            // The server checks numbers and ranges; here only that it is one, so a
            // spreadsheet's "n/a" is named with its row instead of its batch.
            v.parse::<f64>()
                .map_err(|_| anyhow::anyhow!("{}: {v:?} is not a number", q.field()))?;
            line.push(sep);
            sep = ',';
            line.push_str(q.field());
            line.push('=');
            line.push_str(v);
        }
        if sep == ' ' {
            return Ok(None);
        }
        line.push(' ');
        line.push_str(&ts.to_string());
        Ok(Some(line))
    }
}

fn escape_tag(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
        .replace(' ', "\\ ")
}

/// Unix milliseconds from RFC 3339 or a number in `precision` (guessed from the number of
/// digits when not given: 10 or fewer are seconds, up to 13 milliseconds, up to 16
/// microseconds, beyond nanoseconds — right for every date between 2001 and 2286).
fn parse_ts(cell: &str, precision: Option<&str>) -> anyhow::Result<i64> {
    if let Ok(n) = cell.parse::<i64>() {
        let digits = cell.trim_start_matches('-').len();
        let unit = precision.unwrap_or(match digits {
            0..=10 => "s",
            11..=13 => "ms",
            14..=16 => "us",
            _ => "ns",
        });
        return Ok(match unit {
            "s" => n.checked_mul(1000).context("timestamp overflows")?,
            "ms" => n,
            "us" => n.div_euclid(1000),
            _ => n.div_euclid(1_000_000),
        });
    }
    let ts: jiff::Timestamp = cell
        .parse()
        .map_err(|e| anyhow::anyhow!("ts {cell:?} is neither RFC 3339 nor a number: {e}"))?;
    Ok(ts.as_millisecond())
}

struct Client {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl Client {
    fn new(args: &ImportArgs) -> anyhow::Result<Client> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let url = args.url.trim_end_matches('/').to_owned();
        Ok(Client {
            agent,
            url,
            token: args.token.clone(),
        })
    }

    /// Sends one batch; retries what the server may take later (overloaded, unreachable),
    /// reports what it refuses. Stops the import on an authentication error.
    fn send(
        &self,
        body: &str,
        lines: usize,
        precision: &str,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let url = format!("{}/write?precision={precision}", self.url);
        let mut backoff = Duration::from_millis(250);
        for attempt in 0..10 {
            summary.requests += 1;
            let result = self
                .agent
                .post(&url)
                .header("Authorization", &format!("Token {}", self.token))
                .send(body.as_bytes());
            let retry = match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    match status {
                        200..=299 => {
                            summary.lines += lines as u64;
                            summary.accepted += lines as u64;
                            return Ok(());
                        }
                        401 | 403 => bail!("the server refused the token ({status}): {text}"),
                        503 | 429 | 500 | 502 | 504 => format!("server answered {status}"),
                        _ => {
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            let accepted = v["error"]["accepted"].as_u64().unwrap_or(0);
                            summary.lines += lines as u64;
                            summary.accepted += accepted;
                            summary.rejected += lines as u64 - accepted.min(lines as u64);
                            eprintln!(
                                "batch partly refused: {}",
                                v["error"]["message"].as_str().unwrap_or(&text)
                            );
                            for l in v["error"]["lines"].as_array().into_iter().flatten().take(5) {
                                eprintln!("  {}", l["message"].as_str().unwrap_or_default());
                            }
                            return Ok(());
                        }
                    }
                }
                Err(e) => format!("{e}"),
            };
            summary.retries += 1;
            eprintln!(
                "attempt {} failed ({retry}); retrying in {backoff:?}",
                attempt + 1
            );
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        bail!("giving up on a batch after 10 attempts: the server does not take writes")
    }
}

struct Progress {
    name: String,
    total: u64,
    last: Instant,
    started: Instant,
    tty: bool,
}

impl Progress {
    fn new(path: &Path, total: u64) -> Progress {
        Progress {
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            total,
            last: Instant::now(),
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, read: u64, s: &Summary) -> String {
        let pct = if self.total > 0 {
            read as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let width = 30;
        let filled = ((pct / 100.0) * width as f64).round() as usize;
        let rate = s.accepted as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} [{}{}] {pct:5.1}%  {} stored, {} refused, {rate:.0} readings/s",
            self.name,
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width)),
            s.accepted,
            s.rejected
        )
    }

    fn show(&mut self, read: u64, s: &Summary) {
        if self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last = Instant::now();
        let line = self.line(read, s);
        let mut err = std::io::stderr();
        // A terminal gets one line redrawn; a log file gets a line per update.
        let _ = if self.tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
    }

    fn done(&mut self, read: u64, s: &Summary) {
        let line = self.line(read, s);
        let _ = if self.tty {
            writeln!(std::io::stderr(), "\r{line}")
        } else {
            writeln!(std::io::stderr(), "{line}")
        };
    }
}

/// Reads a token from a file when given as `@path` (keeps it out of the process list).
pub fn token_arg(raw: &str) -> anyhow::Result<String> {
    match raw.strip_prefix('@') {
        Some(path) => {
            let mut s = String::new();
            File::open(path)
                .with_context(|| format!("reading token file {path}"))?
                .read_to_string(&mut s)?;
            Ok(s.trim().to_owned())
        }
        None => Ok(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_line_protocol() {
        let c = CsvColumns::parse("device,channel,ts,voltage,current,power,energy,extra").unwrap();
        assert_eq!(
            c.to_line_protocol("m 1,L1,2026-01-05T17:00:00Z,230.5,,512,1523.4,x", None).unwrap().as_deref(),
            Some("import,device=m\\ 1,channel=L1 voltage=230.5,power=512,energy=1523.4 1767632400000")
        );
        assert_eq!(
            c.to_line_protocol("m1,L1,1767632400,,,,,", None).unwrap(),
            None
        );
        assert!(c
            .to_line_protocol("m1,L1,1767632400,n/a,,,,", None)
            .is_err());
        assert!(c.to_line_protocol("m1,L1,1767632400", None).is_err());
        assert!(CsvColumns::parse("1,2026-01-05T17:00:00Z,224.36").is_err());
    }

    #[test]
    fn timestamps_guess_their_unit_from_digits_unless_told() {
        assert_eq!(parse_ts("1767632400", None).unwrap(), 1_767_632_400_000);
        assert_eq!(parse_ts("1767632400123", None).unwrap(), 1_767_632_400_123);
        assert_eq!(
            parse_ts("1767632400123456", None).unwrap(),
            1_767_632_400_123
        );
        assert_eq!(
            parse_ts("1767632400123456789", None).unwrap(),
            1_767_632_400_123
        );
        assert_eq!(parse_ts("1767632400", Some("ms")).unwrap(), 1_767_632_400);
        assert_eq!(
            parse_ts("2026-01-05T18:00:00+01:00", None).unwrap(),
            1_767_632_400_000
        );
        assert!(parse_ts("yesterday", None).is_err());
    }
}
