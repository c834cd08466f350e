//! Store-and-forward: one append-only CSV log per device group (the meter's SD card) and
//! an acknowledgement pointer beside it.
//!
//! * `group-NNNN.csv`: every reading, appended before it is sent. Rows are written and
//!   `fdatasync`ed in batches ([`Journal::sync`]); only synced rows are ever sent, so a row the
//!   server has seen is always on disk.
//! * `group-NNNN.ack`: the byte offset up to which every row is acknowledged by the server.
//!   It only moves forward, at row boundaries, once a whole batch is acknowledged. It is
//!   replaced by write-then-rename and not fsynced: a stale or lost pointer only means rows
//!   are sent again, and Wattline stores a (device, channel, ts) once, so a resend never
//!   doubles a reading. A pointer ahead of the data is impossible by construction.
//!
//! On start ([`Journal::open`]) the log is scanned: a torn last line (a crash mid-write) is
//! cut off, each device's last reading (time, raw counters, count) is recovered so generation
//! resumes where it stopped, and the rows after the pointer are what gets replayed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::profile::MAX_CHANNELS;
use crate::record::{ParseError, Record, CSV_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, byte {offset}: {source}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        source: ParseError,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a device had generated when the log was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTail {
    pub last_ts: i64,
    /// Raw counters by channel position (0 for `main` or `L1`, 1 for `L2`, 2 for `L3`).
    pub energy: [u64; MAX_CHANNELS],
    /// Readings (instants) logged.
    pub readings: u64,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Acknowledged up to here (byte offset).
    pub ack: u64,
    /// End of the log (all of it synced now).
    pub end: u64,
    pub devices: HashMap<u32, DeviceTail>,
    /// Rows after the acknowledgement pointer: they will be sent again.
    pub unacked_rows: u64,
    /// Bytes of a torn last line that were cut off.
    pub truncated: u64,
}

/// Position of a channel among its device's channels (records name channels by index into
/// `CHANNEL_NAMES`: `main` = 0, `L1..L3` = 1..3).
pub fn channel_position(channel: u8) -> usize {
    usize::from(channel.saturating_sub(1))
}

/// The append side of a group's log.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    buf: String,
    prefix: String,
    /// Bytes on disk and synced.
    synced: u64,
    rows_buffered: u64,
}

pub fn log_path(dir: &Path, group: usize) -> PathBuf {
    dir.join(format!("group-{group:04}.csv"))
}

pub fn ack_path(dir: &Path, group: usize) -> PathBuf {
    dir.join(format!("group-{group:04}.ack"))
}

impl Journal {
    /// Opens (or creates) group `group`'s log in `dir` and recovers its state.
    pub fn open(
        dir: &Path,
        group: usize,
        prefix: &str,
    ) -> Result<(Journal, Recovered), JournalError> {
        let path = log_path(dir, group);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut rec = Recovered::default();
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len == 0 {
            (&file)
                .write_all(CSV_HEADER.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
            rec.end = CSV_HEADER.len() as u64;
        } else {
            rec.end = scan(&path, &file, prefix, &mut rec)?;
            if rec.end < len {
                rec.truncated = len - rec.end;
                file.set_len(rec.end)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&path))?;
            }
        }
        let stored = AckPointer::read(&ack_path(dir, group));
        rec.ack = stored.clamp(CSV_HEADER.len() as u64, rec.end);
        if rec.ack > CSV_HEADER.len() as u64 || rec.end > CSV_HEADER.len() as u64 {
            rec.unacked_rows = count_rows(&file, rec.ack, rec.end).map_err(io_err(&path))?;
        }
        Ok((
            Journal {
                path,
                file,
                buf: String::with_capacity(1 << 16),
                prefix: prefix.to_owned(),
                synced: rec.end,
                rows_buffered: 0,
            },
            rec,
        ))
    }

    pub fn append(&mut self, r: &Record) {
        r.write_csv(&self.prefix, &mut self.buf);
        self.rows_buffered += 1;
    }

    pub fn rows_buffered(&self) -> u64 {
        self.rows_buffered
    }

    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Writes what was appended and `fdatasync`s it; returns the new synced end. Runs on a
    /// blocking thread: an fsync can take milliseconds, which would stall other groups.
    pub async fn sync(&mut self) -> Result<u64, JournalError> {
        if self.buf.is_empty() {
            return Ok(self.synced);
        }
        let buf = std::mem::take(&mut self.buf);
        let file = self.file.try_clone().map_err(io_err(&self.path))?;
        let n = buf.len() as u64;
        let (result, mut buf) = tokio::task::spawn_blocking(move || {
            let r = (&file)
                .write_all(buf.as_bytes())
                .and_then(|()| file.sync_data());
            (r, buf)
        })
        .await
        .expect("journal sync task");
        result.map_err(io_err(&self.path))?;
        buf.clear();
        self.buf = buf;
        self.synced += n;
        self.rows_buffered = 0;
        Ok(self.synced)
    }

    /// The same file, opened for reading by the sender.
    pub fn reader(&self, from: u64) -> Result<Reader, JournalError> {
        let file = File::open(&self.path).map_err(io_err(&self.path))?;
        Ok(Reader {
            path: self.path.clone(),
            file: std::sync::Arc::new(file),
            pos: from,
            prefix: self.prefix.clone(),
        })
    }
}

/// Reads the whole log: the per-device tails, and where the last complete, readable line ends.
fn scan(path: &Path, file: &File, prefix: &str, rec: &mut Recovered) -> Result<u64, JournalError> {
    let mut reader = BufReader::with_capacity(1 << 20, file.try_clone().map_err(io_err(path))?);
    let mut line = String::new();
    let mut offset = 0u64;
    let mut good_end = 0u64;
    let mut bad: Option<(u64, ParseError)> = None;
    loop {
        line.clear();
        let n = match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(n) => n,
            // Not UTF-8: garbage from a torn write, handled as an unreadable line.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bad.get_or_insert((
                    offset,
                    ParseError {
                        line: String::new(),
                        what: "not UTF-8",
                    },
                ));
                break;
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let at = offset;
        offset += n as u64;
        if !line.ends_with('\n') {
            break; // torn last line
        }
        let text = line.trim_end_matches('\n');
        if at == 0 && text.starts_with("device,") {
            good_end = offset;
            continue;
        }
        match Record::parse_csv(text, prefix) {
            Ok(r) => {
                if let Some((o, e)) = bad.take() {
                    // A bad line followed by good ones is not a torn tail: refuse to guess.
                    return Err(JournalError::Corrupt {
                        path: path.to_owned(),
                        offset: o,
                        source: e,
                    });
                }
                let t = rec.devices.entry(r.device).or_insert(DeviceTail {
                    last_ts: r.ts,
                    energy: [0; MAX_CHANNELS],
                    readings: 0,
                });
                let pos = channel_position(r.channel);
                if pos == 0 {
                    t.readings += 1;
                }
                t.last_ts = r.ts;
                t.energy[pos] = r.energy_raw;
                good_end = offset;
            }
            Err(e) => {
                bad.get_or_insert((at, e));
            }
        }
    }
    Ok(good_end)
}

fn count_rows(file: &File, from: u64, to: u64) -> std::io::Result<u64> {
    let mut rows = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)?;
        rows += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        pos += n as u64;
    }
    Ok(rows)
}

/// The sender's side: reads synced rows back from the log.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: std::sync::Arc<File>,
    pos: u64,
    prefix: String,
}

impl Reader {
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Reads up to about `max_rows` rows between the current position and `end` into `out`
    /// (cleared first) and returns the offset after them. A reading's channels are never
    /// split across two batches. Does not move the position: [`Reader::advance`] does, once
    /// the batch is acknowledged.
    pub async fn read(
        &self,
        end: u64,
        max_rows: usize,
        out: &mut Vec<Record>,
    ) -> Result<u64, JournalError> {
        out.clear();
        if self.pos >= end {
            return Ok(self.pos);
        }
        // Rows are under 128 bytes; a generous budget, cut back to whole lines below.
        let budget = (max_rows as u64 * 128).max(4096);
        let len = (end - self.pos).min(budget) as usize;
        let file = self.file.clone();
        let pos = self.pos;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .expect("journal read task")
        .map_err(io_err(&self.path))?;
        let reached_end = pos + len as u64 == end;
        // Parse whole lines, a few past `max_rows` to see where the last reading ends.
        let mut ends = Vec::new();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b != b'\n' {
                continue;
            }
            let corrupt = |source| JournalError::Corrupt {
                path: self.path.clone(),
                offset: pos + start as u64,
                source,
            };
            let text = std::str::from_utf8(&bytes[start..i]).map_err(|_| {
                corrupt(ParseError {
                    line: String::new(),
                    what: "not UTF-8",
                })
            })?;
            out.push(Record::parse_csv(text, &self.prefix).map_err(corrupt)?);
            start = i + 1;
            ends.push(pos + start as u64);
            if out.len() > max_rows + MAX_CHANNELS {
                break;
            }
        }
        let same = |a: &Record, b: &Record| (a.device, a.ts) == (b.device, b.ts);
        let keep = if out.len() > max_rows {
            // Cut at a reading boundary at or before `max_rows` (after it, if one reading
            // is longer than that).
            let mut cut = max_rows.max(1);
            while cut > 1 && same(&out[cut - 1], &out[cut]) {
                cut -= 1;
            }
            if same(&out[cut - 1], &out[cut]) {
                while cut < out.len() && same(&out[cut - 1], &out[cut]) {
                    cut += 1;
                }
            }
            cut
        } else if reached_end && ends.last() == Some(&end) {
            // Up to the synced end, which is always a reading boundary.
            out.len()
        } else {
            // The budget cut the chunk: the last reading's other channels may follow.
            let last = out.len().saturating_sub(1);
            match (0..last).rev().find(|&i| !same(&out[i], &out[last])) {
                Some(i) => i + 1,
                None => out.len(),
            }
        };
        out.truncate(keep);
        Ok(if out.is_empty() {
            pos
        } else {
            ends[out.len() - 1]
        })
    }

    pub fn advance(&mut self, to: u64) {
        self.pos = to;
    }
}

/// The persisted acknowledgement pointer of a group.
#[derive(Debug)]
pub struct AckPointer {
    path: PathBuf,
    stored: u64,
}

impl AckPointer {
    pub fn new(dir: &Path, group: usize, stored: u64) -> AckPointer {
        AckPointer {
            path: ack_path(dir, group),
            stored,
        }
    }

    /// The stored offset, or 0 when there is none or it cannot be read (everything is
    /// then sent again, which is safe).
    pub fn read(path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Persists `offset` (write to a temporary file, rename over the pointer).
    pub async fn store(&mut self, offset: u64) -> Result<(), JournalError> {
        if offset == self.stored {
            return Ok(());
        }
        let path = self.path.clone();
        let tmp = path.with_extension("ack.tmp");
        tokio::task::spawn_blocking(move || {
            std::fs::write(&tmp, format!("{offset}\n")).and_then(|()| std::fs::rename(&tmp, &path))
        })
        .await
        .expect("ack pointer task")
        .map_err(io_err(&self.path))?;
        self.stored = offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(device: u32, channel: u8, ts: i64, raw: u64) -> Record {
        Record {
            device,
            channel,
            ts,
            voltage: 230.0,
            current: 1.0,
            power: 230.0,
            pf: 1.0,
            energy_raw: raw,
        }
    }

    #[tokio::test]
    async fn append_sync_read_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, rec0) = Journal::open(dir.path(), 3, "d").unwrap();
        assert_eq!(rec0.end, CSV_HEADER.len() as u64);
        assert_eq!(rec0.ack, rec0.end);
        for i in 0..10 {
            j.append(&rec(1, 0, 1000 * i, 100 + i as u64));
            for c in 1..=3 {
                j.append(&rec(2, c, 1000 * i, 200 + i as u64 * 10 + c as u64));
            }
        }
        let end = j.sync().await.unwrap();
        let mut reader = j.reader(rec0.ack).unwrap();
        let mut out = Vec::new();
        // 6 rows asked: rows 1..=4 are instant 0 (device 1, device 2 x3); row 5 is device 1 at
        // 1000, row 6 the first channel of device 2 at 1000, which is dropped with its reading.
        let to = reader.read(end, 6, &mut out).await.unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[4], rec(1, 0, 1000, 101));
        reader.advance(to);
        let mut ack = AckPointer::new(dir.path(), 3, rec0.ack);
        ack.store(to).await.unwrap();
        drop(j);

        let (_, rec1) = Journal::open(dir.path(), 3, "d").unwrap();
        assert_eq!(rec1.ack, to);
        assert_eq!(rec1.end, end);
        assert_eq!(rec1.unacked_rows, 40 - 5);
        assert_eq!(
            rec1.devices[&2],
            DeviceTail {
                last_ts: 9000,
                energy: [291, 292, 293],
                readings: 10
            }
        );
        assert_eq!(rec1.devices[&1].readings, 10);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, "d").unwrap();
        j.append(&rec(1, 0, 1000, 5));
        let end = j.sync().await.unwrap();
        drop(j);
        let path = log_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"d000001,main,2000,23").unwrap();
        drop(f);
        let (_, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.end, end);
        assert_eq!(rec.truncated, 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    }

    #[tokio::test]
    async fn a_bad_line_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, "d").unwrap();
        j.append(&rec(1, 0, 1000, 5));
        j.sync().await.unwrap();
        drop(j);
        let path = log_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"garbage\n").unwrap();
        drop(f);
        let (mut j, _) = Journal::open(dir.path(), 0, "d").unwrap();
        j.append(&rec(1, 0, 2000, 6));
        j.sync().await.unwrap();
        drop(j);
        // the torn garbage line was cut, and the new line follows the good one
        let (_, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.devices[&1].readings, 2);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"garbage\nd000001,main,3000,1,1,1,1,1,7\n")
            .unwrap();
        drop(f);
        assert!(matches!(
            Journal::open(dir.path(), 0, "d"),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn missing_or_garbled_pointer_means_replay_all() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AckPointer::read(&dir.path().join("none.ack")), 0);
        std::fs::write(dir.path().join("bad.ack"), "x").unwrap();
        assert_eq!(AckPointer::read(&dir.path().join("bad.ack")), 0);
    }
}
