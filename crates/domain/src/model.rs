use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelName, DeviceId, SiteId};
use crate::quantity::Values;
use crate::time::TsMs;

/// A place with meters; its zone decides where hours, days and months begin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    /// IANA zone name, e.g. `Europe/Zurich`; validated when the site is created.
    pub timezone: String,
    pub created_at: TsMs,
}

/// A meter, plug or monitor registered with Wattline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub name: String,
    pub site: SiteId,
    /// Free-form category (`meter`, `plug`, `three_phase`, `miner`…) for the dashboard to group by.
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: TsMs,
}

/// One instant's values of one series, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts: TsMs,
    pub values: Values,
}

/// A validated reading as it arrives: which device and channel, when, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: DeviceId,
    pub channel: ChannelName,
    pub ts: TsMs,
    pub values: Values,
}

impl Reading {
    pub fn point(&self) -> Point {
        Point {
            ts: self.ts,
            values: self.values,
        }
    }
}
