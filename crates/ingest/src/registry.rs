//! What the write and query paths need to know about sites, devices and series, kept in
//! memory so that no request touches the database to resolve a device or a time zone.

use std::collections::HashMap;
use std::sync::RwLock;

use jiff::tz::TimeZone;
use wattline_domain::time::parse_zone;
use wattline_domain::{ChannelName, Device, DeviceId, SeriesId, Site, SiteId};

#[derive(Debug, Clone)]
pub struct SeriesMeta {
    pub device: DeviceId,
    pub channel: String,
}

/// The registry's maps are looked up for every reading. Their keys come from the admin API
/// and storage, never from a request, so a fast hash is safe here: a request can only look
/// keys up, not make chains longer.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Inner {
    sites: FastMap<SiteId, TimeZone>,
    devices: FastMap<DeviceId, SiteId>,
    series_meta: FastMap<SeriesId, SeriesMeta>,
    /// Each device's series sorted by channel: the device list and every query need them.
    by_device: FastMap<DeviceId, Vec<(String, SeriesId)>>,
}

impl Inner {
    fn series(&self, device: &DeviceId, channel: &ChannelName) -> Option<SeriesId> {
        self.by_device
            .get(device)?
            .iter()
            .find(|(c, _)| c == channel.as_str())
            .map(|(_, s)| *s)
    }
}

/// The registry under one read lock, for looking up every reading of a batch: a lock per
/// reading cost more than the look-up. Hold it briefly; writers wait for it.
pub struct RegistryView<'a>(std::sync::RwLockReadGuard<'a, Inner>);

impl RegistryView<'_> {
    /// The site of a registered device.
    pub fn device_site(&self, id: &DeviceId) -> Option<&SiteId> {
        self.0.devices.get(id)
    }

    /// The series of a device's channel, when it has one.
    pub fn series(&self, device: &DeviceId, channel: &ChannelName) -> Option<SeriesId> {
        self.0.series(device, channel)
    }
}

#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
    /// Bumped by every change, so callers can cache what they derived (a series' zone).
    generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("registry poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.inner.write().expect("registry poisoned")
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records a site; an unknown zone name falls back to UTC with a warning, since the site
    /// was validated when it was created and the zone database may have changed since.
    pub fn put_site(&self, site: &Site) {
        let tz = parse_zone(&site.timezone).unwrap_or_else(|e| {
            tracing::warn!(site = %site.id, error = %e, "site time zone unknown; using UTC");
            TimeZone::UTC
        });
        self.write().sites.insert(site.id.clone(), tz);
    }

    pub fn remove_site(&self, id: &SiteId) {
        self.write().sites.remove(id);
    }

    pub fn put_device(&self, device: &Device) {
        self.write()
            .devices
            .insert(device.id.clone(), device.site.clone());
    }

    pub fn remove_device(&self, id: &DeviceId) {
        let mut inner = self.write();
        inner.devices.remove(id);
        let gone: Vec<SeriesId> = inner
            .series_meta
            .iter()
            .filter(|(_, m)| &m.device == id)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            inner.series_meta.remove(&s);
        }
        inner.by_device.remove(id);
    }

    pub fn put_series(&self, id: SeriesId, device: &DeviceId, channel: &str) {
        let mut inner = self.write();
        inner.series_meta.insert(
            id,
            SeriesMeta {
                device: device.clone(),
                channel: channel.to_owned(),
            },
        );
        let list = inner.by_device.entry(device.clone()).or_default();
        if !list.iter().any(|(_, s)| *s == id) {
            list.push((channel.to_owned(), id));
            list.sort();
        }
    }

    pub fn device_site(&self, id: &DeviceId) -> Option<SiteId> {
        self.read().devices.get(id).cloned()
    }

    pub fn device_exists(&self, id: &DeviceId) -> bool {
        self.read().devices.contains_key(id)
    }

    pub fn device_zone(&self, id: &DeviceId) -> TimeZone {
        let inner = self.read();
        inner
            .devices
            .get(id)
            .and_then(|s| inner.sites.get(s))
            .cloned()
            .unwrap_or(TimeZone::UTC)
    }

    /// Looks up without allocating (devices have few channels). For many readings, use
    /// [`Registry::view`].
    pub fn series(&self, device: &DeviceId, channel: &ChannelName) -> Option<SeriesId> {
        self.read().series(device, channel)
    }

    /// A read view for looking up a batch of readings under one lock.
    pub fn view(&self) -> RegistryView<'_> {
        RegistryView(self.read())
    }

    pub fn series_zone(&self, id: SeriesId) -> TimeZone {
        let device = self.read().series_meta.get(&id).map(|m| m.device.clone());
        device.map_or(TimeZone::UTC, |d| self.device_zone(&d))
    }

    /// Every series of a device as (channel, id), sorted by channel.
    pub fn device_series(&self, id: &DeviceId) -> Vec<(String, SeriesId)> {
        self.read().by_device.get(id).cloned().unwrap_or_default()
    }
}
