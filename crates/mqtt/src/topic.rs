//! Topic names, filters, and the index that finds the subscriptions a topic matches.

use std::collections::HashMap;

pub use rumqttc::mqttbytes::{matches, valid_filter};

/// A topic a client may publish to: no wildcards, not empty, no U+0000.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains('\0') && rumqttc::mqttbytes::valid_topic(topic)
}

/// Subscriptions by the first level of their filter. Devices subscribe to their own command
/// topics (`cmnd/plug1/#`, `wattline/m1/commands`), so with 100,000 of them a telemetry
/// message (`tele/…`) meets only the few filters that start with its own first level or with
/// a wildcard, not all of them.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    by_first_level: HashMap<String, Vec<Entry>>,
    /// Filters whose first level is `+` or `#`.
    wildcard_first: Vec<Entry>,
    count: usize,
}

#[derive(Debug)]
struct Entry {
    filter: String,
    client_id: String,
    qos: u8,
}

fn first_level(filter: &str) -> &str {
    filter.split('/').next().unwrap_or("")
}

impl SubscriptionIndex {
    fn bucket(&mut self, filter: &str) -> &mut Vec<Entry> {
        match first_level(filter) {
            "+" | "#" => &mut self.wildcard_first,
            level => self.by_first_level.entry(level.to_owned()).or_default(),
        }
    }

    /// Adds or updates the subscription of `client_id` to `filter`.
    pub fn insert(&mut self, filter: &str, client_id: &str, qos: u8) {
        let bucket = self.bucket(filter);
        match bucket
            .iter_mut()
            .find(|e| e.filter == filter && e.client_id == client_id)
        {
            Some(e) => e.qos = qos,
            None => {
                bucket.push(Entry {
                    filter: filter.to_owned(),
                    client_id: client_id.to_owned(),
                    qos,
                });
                self.count += 1;
            }
        }
    }

    pub fn remove(&mut self, filter: &str, client_id: &str) {
        let level = first_level(filter).to_owned();
        let bucket = self.bucket(filter);
        let before = bucket.len();
        bucket.retain(|e| !(e.filter == filter && e.client_id == client_id));
        let removed = before - bucket.len();
        if bucket.is_empty() && !matches!(level.as_str(), "+" | "#") {
            self.by_first_level.remove(&level);
        }
        self.count -= removed;
    }

    /// The clients to deliver `topic` to, each once with the highest QoS of its matching
    /// filters (MQTT 5 3.3.4 allows one copy per client).
    pub fn matches(&self, topic: &str) -> Vec<(String, u8)> {
        if self.count == 0 {
            return Vec::new();
        }
        let mut out: Vec<(String, u8)> = Vec::new();
        let direct = self.by_first_level.get(first_level(topic));
        // MQTT 4.7.2: topics starting with `$` are not matched by filters starting with a
        // wildcard.
        let wild = (!topic.starts_with('$')).then_some(&self.wildcard_first);
        for e in direct.into_iter().chain(wild).flatten() {
            if matches(topic, &e.filter) {
                match out.iter_mut().find(|(c, _)| *c == e.client_id) {
                    Some(existing) => existing.1 = existing.1.max(e.qos),
                    None => out.push((e.client_id.clone(), e.qos)),
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_matching_subscriptions_once_per_client() {
        let mut index = SubscriptionIndex::default();
        index.insert("cmnd/plug1/#", "plug1", 1);
        index.insert("cmnd/plug2/#", "plug2", 1);
        index.insert("#", "admin", 0);
        index.insert("cmnd/+/POWER", "admin", 1);
        assert_eq!(index.len(), 4);
        let mut got = index.matches("cmnd/plug1/POWER");
        got.sort();
        assert_eq!(
            got,
            vec![("admin".to_string(), 1), ("plug1".to_string(), 1)]
        );
        assert_eq!(
            index.matches("tele/plug1/SENSOR"),
            vec![("admin".to_string(), 0)]
        );
        assert!(index.matches("$SYS/x").is_empty());
        index.remove("#", "admin");
        index.remove("cmnd/+/POWER", "admin");
        index.remove("cmnd/plug1/#", "plug1");
        assert!(index.matches("cmnd/plug1/POWER").is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn topic_validity() {
        assert!(valid_topic("tele/plug1/SENSOR"));
        assert!(!valid_topic("tele/+/SENSOR"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a\0b"));
    }
}
