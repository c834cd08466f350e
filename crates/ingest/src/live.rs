//! One group commit as live dashboards receive it: the readings, and an index by device that
//! the first stream to need it builds and every other stream shares.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;
use wattline_domain::{DeviceId, Reading};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Commits up to this many readings are indexed on the stream's own task; larger ones on the
/// blocking pool. Indexing costs about 23 ns a reading (2.3 ms for a 100,000-reading commit,
/// measured with a release build), and nothing may hold an async worker much past half a
/// millisecond.
const INDEX_INLINE_UP_TO: usize = 10_000;

pub struct LiveCommit {
    readings: Vec<Reading>,
    /// Without it, each of a hundred streams looked at every reading of every commit; with it,
    /// a stream looks at the devices it wants (a device page) or at each device of the commit
    /// once (an overview). Async, so that streams waiting for another's build do not block.
    by_device: OnceCell<DeviceIndex>,
}

/// Reading positions per device, in commit order.
pub struct DeviceIndex(FastMap<DeviceId, Vec<u32>>);

impl DeviceIndex {
    fn build(readings: &[Reading]) -> Self {
        let mut index: FastMap<DeviceId, Vec<u32>> = FastMap::default();
        for (i, r) in readings.iter().enumerate() {
            match index.get_mut(&r.device) {
                Some(list) => list.push(i as u32),
                None => {
                    index.insert(r.device.clone(), vec![i as u32]);
                }
            }
        }
        DeviceIndex(index)
    }

    /// Each device with readings in the commit, once.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.0.keys()
    }

    pub fn contains(&self, device: &DeviceId) -> bool {
        self.0.contains_key(device)
    }
}

impl LiveCommit {
    pub fn new(readings: Vec<Reading>) -> Self {
        LiveCommit {
            readings,
            by_device: OnceCell::new(),
        }
    }

    pub fn readings(&self) -> &[Reading] {
        &self.readings
    }

    /// The commit's index by device, built by the first caller.
    pub async fn index(self: &Arc<Self>) -> &DeviceIndex {
        self.by_device
            .get_or_init(|| async {
                if self.readings.len() <= INDEX_INLINE_UP_TO {
                    return DeviceIndex::build(&self.readings);
                }
                let commit = Arc::clone(self);
                tokio::task::spawn_blocking(move || DeviceIndex::build(&commit.readings))
                    .await
                    .expect("indexing a commit does not panic")
            })
            .await
    }

    /// One device's readings, in commit order.
    pub fn of_device<'a>(
        &'a self,
        index: &'a DeviceIndex,
        device: &DeviceId,
    ) -> impl Iterator<Item = &'a Reading> {
        index
            .0
            .get(device)
            .into_iter()
            .flatten()
            .map(|&i| &self.readings[i as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattline_domain::{ChannelName, TsMs, Values};

    fn reading(device: &str, ts: i64) -> Reading {
        Reading {
            device: DeviceId::parse(device).unwrap(),
            channel: ChannelName::default_channel(),
            ts: TsMs(ts),
            values: Values::default(),
        }
    }

    #[tokio::test]
    async fn readings_by_device_keep_their_order() {
        let c = Arc::new(LiveCommit::new(vec![
            reading("a", 1),
            reading("b", 2),
            reading("a", 3),
        ]));
        let index = c.index().await;
        let a = DeviceId::parse("a").unwrap();
        let ts: Vec<i64> = c.of_device(index, &a).map(|r| r.ts.0).collect();
        assert_eq!(ts, [1, 3]);
        let mut devices: Vec<&str> = index.devices().map(|d| d.as_str()).collect();
        devices.sort();
        assert_eq!(devices, ["a", "b"]);
        let z = DeviceId::parse("z").unwrap();
        assert_eq!(c.of_device(index, &z).count(), 0);
        assert!(index.contains(&a) && !index.contains(&z));
        assert_eq!(c.readings().len(), 3);
    }

    #[tokio::test]
    async fn a_large_commit_is_indexed_off_the_async_workers_once() {
        let readings: Vec<Reading> = (0..INDEX_INLINE_UP_TO as i64 + 7)
            .map(|i| reading(&format!("d{}", i % 10), i))
            .collect();
        let c = Arc::new(LiveCommit::new(readings));
        let (first, second) = tokio::join!(c.index(), c.index());
        assert!(std::ptr::eq(first, second), "one index, shared");
        assert_eq!(first.devices().count(), 10);
        let d3 = DeviceId::parse("d3").unwrap();
        // 10,007 readings over d0…d9: d0 to d6 get one more than the others.
        assert_eq!(c.of_device(first, &d3).count(), 1001);
    }
}
