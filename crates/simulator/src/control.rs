//! Run-time commands: change a device's reading rate or its consumption while it runs.
//!
//! ```text
//! rate <device> <hz>        readings per second (e.g. 0.2 = one every 5 s)
//! scale <device> <factor>   consumption × factor from now on (1 = the model as is)
//! ```
//!
//! `<device>` is a device name (`sim-000042`), its index (`42`) or `*` for all. Commands come
//! from stdin (`--control -`) or from a file that is followed like `tail -f`
//! (`--control FILE`: append lines to it). Blank lines and `#` comments are ignored.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::{broadcast, watch};

use crate::commlog::CommLog;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    All,
    Device(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Readings per second.
    Rate(f64),
    /// Consumption factor.
    Scale(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command {
    pub target: Target,
    pub action: Action,
}

impl Command {
    pub fn applies_to(&self, device: u32) -> bool {
        match self.target {
            Target::All => true,
            Target::Device(d) => d == device,
        }
    }
}

/// Reads one command line; `Ok(None)` for blank lines and comments.
pub fn parse(line: &str, prefix: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let [verb, device, value] = words[..] else {
        return Err(format!(
            "{line:?}: expected `rate <device> <hz>` or `scale <device> <factor>`"
        ));
    };
    let target = if device == "*" {
        Target::All
    } else {
        let digits = device.strip_prefix(prefix).unwrap_or(device);
        Target::Device(
            digits
                .parse()
                .map_err(|_| format!("{line:?}: {device:?} is no device name or index"))?,
        )
    };
    let value: f64 = value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{line:?}: {value:?} is not a non-negative number"))?;
    let action = match verb {
        "rate" if value > 0.0 && value <= 1000.0 => Action::Rate(value),
        "rate" => return Err(format!("{line:?}: a rate is above 0 and at most 1000 Hz")),
        "scale" if value <= 1000.0 => Action::Scale(value),
        "scale" => return Err(format!("{line:?}: a scale is at most 1000")),
        other => return Err(format!("{line:?}: unknown command {other:?}")),
    };
    Ok(Some(Command { target, action }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> Source {
        if s == "-" {
            Source::Stdin
        } else {
            Source::File(s.into())
        }
    }
}

fn dispatch(line: &str, prefix: &str, tx: &broadcast::Sender<Command>, comm: &CommLog) {
    match parse(line, prefix) {
        Ok(Some(c)) => {
            comm.log("control", format_args!("{}", line.trim()));
            let _ = tx.send(c);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("simulate: control: {e}");
            comm.log("control", format_args!("refused: {e}"));
        }
    }
}

/// Reads commands until `stop`, sending each to every group.
pub async fn run(
    source: Source,
    prefix: String,
    tx: broadcast::Sender<Command>,
    comm: CommLog,
    mut stop: watch::Receiver<bool>,
) {
    match source {
        Source::Stdin => {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => dispatch(&l, &prefix, &tx, &comm),
                        _ => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        }
        Source::File(path) => {
            // Follow the file: poll for appended bytes, act on complete lines.
            let mut pos = 0u64;
            let mut partial = String::new();
            loop {
                if let Ok(mut f) = tokio::fs::File::open(&path).await {
                    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                    if len < pos {
                        pos = 0; // truncated or replaced: start over
                        partial.clear();
                    }
                    if len > pos && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                        let mut buf = Vec::new();
                        if let Ok(n) = f.take(len - pos).read_to_end(&mut buf).await {
                            pos += n as u64;
                            partial.push_str(&String::from_utf8_lossy(&buf));
                            while let Some(i) = partial.find('\n') {
                                let line: String = partial.drain(..=i).collect();
                                dispatch(&line, &prefix, &tx, &comm);
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse("rate sim-000042 2.5", "sim-").unwrap(),
            Some(Command {
                target: Target::Device(42),
                action: Action::Rate(2.5)
            })
        );
        assert_eq!(
            parse("scale * 0.5", "sim-").unwrap(),
            Some(Command {
                target: Target::All,
                action: Action::Scale(0.5)
            })
        );
        assert_eq!(
            parse(" scale 7 3 ", "sim-").unwrap().unwrap().target,
            Target::Device(7)
        );
        assert_eq!(parse("# comment", "sim-").unwrap(), None);
        assert!(parse("rate sim-000042 0", "sim-").is_err());
        assert!(parse("rate x 1", "sim-").is_err());
        assert!(parse("jump 1 1", "sim-").is_err());
        assert!(parse("scale 1 -1", "sim-").is_err());
    }
}
