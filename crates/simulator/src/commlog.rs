//! `comm.log`: the communication log of a run (connects, disconnects, errors, retries and
//! backoffs, recoveries, control commands), one line per event, as a meter's service log.
//! Acknowledgements are counted, not logged: they would drown everything else.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct CommLog {
    file: Option<Arc<Mutex<File>>>,
}

impl CommLog {
    pub fn open(path: &Path) -> std::io::Result<CommLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CommLog {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// A log that writes nothing (unit tests).
    pub fn discard() -> CommLog {
        CommLog { file: None }
    }

    /// `<RFC 3339 time> <who> <event>`; `who` is e.g. `group-0003 http-json`.
    pub fn log(&self, who: &str, event: impl std::fmt::Display) {
        let Some(file) = &self.file else { return };
        let line = format!("{} {who} {event}\n", jiff::Timestamp::now());
        // A failing comm log must not stop the meter; the error is visible as a missing line.
        let _ = file
            .lock()
            .expect("comm log lock")
            .write_all(line.as_bytes());
    }
}
