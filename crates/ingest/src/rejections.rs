//! The most recent rejected readings, in memory, for the dashboard's administrators: what a
//! meter sent wrong is otherwise only in the log and the per-code counters.

use std::collections::VecDeque;
use std::sync::Mutex;

use wattline_domain::TsMs;

/// Entries kept; older ones drop off.
const KEEP: usize = 200;
/// Entries taken from one request: a flood of garbage must not push out everything else
/// in one go, nor cost more than a few copies.
const PER_REQUEST: usize = 10;

#[derive(Debug, Clone)]
pub struct Rejection {
    /// When it was refused.
    pub ts: TsMs,
    /// How it arrived (`http`, `line_protocol`, `mqtt`, `tcp`).
    pub transport: String,
    /// Who sent it (the credential's actor name).
    pub actor: String,
    pub code: &'static str,
    pub message: String,
}

#[derive(Default)]
pub struct Rejections {
    recent: Mutex<VecDeque<Rejection>>,
}

impl Rejections {
    /// Records up to a few of one request's rejections.
    pub fn note<'a>(
        &self,
        transport: &str,
        actor: &str,
        errors: impl IntoIterator<Item = (&'static str, &'a str)>,
    ) {
        let ts = TsMs::now();
        let new: Vec<Rejection> = errors
            .into_iter()
            .take(PER_REQUEST)
            .map(|(code, message)| Rejection {
                ts,
                transport: transport.to_owned(),
                actor: actor.to_owned(),
                code,
                message: message.to_owned(),
            })
            .collect();
        if new.is_empty() {
            return;
        }
        let mut recent = self.recent.lock().expect("rejections poisoned");
        for r in new {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(r);
        }
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Rejection> {
        let recent = self.recent.lock().expect("rejections poisoned");
        recent.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_few_per_request() {
        let r = Rejections::default();
        let msgs: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        r.note("http", "a", msgs.iter().map(|m| ("bad_value", m.as_str())));
        assert_eq!(r.recent().len(), PER_REQUEST);
        for i in 0..KEEP {
            let m = format!("n{i}");
            r.note("mqtt", "b", [("bad_value", m.as_str())]);
        }
        let all = r.recent();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].message, format!("n{}", KEEP - 1), "newest first");
        assert!(all.iter().all(|e| e.transport == "mqtt"));
    }
}
