//! The protocols and their payloads, written to match Wattline's decoders exactly.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::profile::Kind;
use crate::record::{device_name, round_to, Record};

/// How a device's readings reach Wattline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `POST /api/v1/readings`, JSON arrays, one request per batch of a group.
    HttpJson,
    /// `POST /write?precision=ms`, InfluxDB line protocol.
    HttpLp,
    /// `wattline/<device>/readings` with the device's own MQTT credential (QoS 1).
    MqttNative,
    /// `wattline/readings` with a site token: one connection per group (QoS 1).
    MqttGateway,
    /// `tele/<device>/SENSOR` (Tasmota energy telemetry).
    Tasmota,
    /// `<device>/status/switch:0` (Shelly Gen2 switch status).
    Shelly,
    /// `one-minute/<device>` (Clemap binary, 130 bytes, three phases).
    Clemap,
    /// The socket meter: unframed JSON over TCP, one reply per message.
    Tcp,
    /// Nothing is sent; every batch is acknowledged at once (generation ceiling).
    Null,
}

impl Protocol {
    pub const ALL: [Protocol; 9] = [
        Protocol::HttpJson,
        Protocol::HttpLp,
        Protocol::MqttNative,
        Protocol::MqttGateway,
        Protocol::Tasmota,
        Protocol::Shelly,
        Protocol::Clemap,
        Protocol::Tcp,
        Protocol::Null,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpJson => "http-json",
            Protocol::HttpLp => "http-lp",
            Protocol::MqttNative => "mqtt-native",
            Protocol::MqttGateway => "mqtt-gateway",
            Protocol::Tasmota => "tasmota",
            Protocol::Shelly => "shelly",
            Protocol::Clemap => "clemap",
            Protocol::Tcp => "tcp",
            Protocol::Null => "null",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the server stores a resent reading once: the reading carries its own time.
    /// Tasmota and Shelly status messages are stamped with the receive time, so a resend
    /// stores a second reading.
    pub fn idempotent(self) -> bool {
        !matches!(self, Protocol::Tasmota | Protocol::Shelly)
    }

    /// One connection per device (its own credential or socket), or shared per group.
    pub fn per_device_connection(self) -> bool {
        matches!(
            self,
            Protocol::MqttNative
                | Protocol::Tasmota
                | Protocol::Shelly
                | Protocol::Clemap
                | Protocol::Tcp
        )
    }

    /// The load models whose channels this protocol can carry.
    pub fn supports(self, kind: Kind) -> bool {
        match self {
            Protocol::Clemap => kind == Kind::Building,
            Protocol::Tasmota | Protocol::Shelly | Protocol::Tcp => kind != Kind::Building,
            _ => true,
        }
    }

    /// The vendor binding a device needs (format, vendor id = device name).
    pub fn binding_format(self) -> Option<&'static str> {
        match self {
            Protocol::Tasmota => Some("tasmota"),
            Protocol::Shelly => Some("shelly"),
            Protocol::Clemap => Some("clemap"),
            _ => None,
        }
    }

    /// The channel Wattline files a record's values under for this protocol.
    pub fn stored_channel(self, record: &Record) -> &'static str {
        match self {
            Protocol::Shelly => "switch:0",
            _ => record.channel_name(),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JSON array of readings as `POST /api/v1/readings` and the MQTT native topics take them.
/// `with_device`: name the device in each item (HTTP and the gateway topic); a device's own
/// topic names it already.
pub fn json_readings(records: &[&Record], prefix: &str, with_device: bool) -> String {
    let mut s = String::with_capacity(records.len() * 150 + 2);
    s.push('[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('{');
        if with_device {
            let _ = write!(s, "\"device\":\"{}\",", device_name(prefix, r.device));
        }
        let _ = write!(
            s,
            "\"ts\":{},\"channel\":\"{}\",\"voltage\":{},\"current\":{},\"power\":{},\
             \"power_factor\":{},\"energy\":{}}}",
            r.ts,
            r.channel_name(),
            r.voltage,
            r.current,
            r.power,
            r.pf,
            r.energy_kwh()
        );
    }
    s.push(']');
    s
}

/// InfluxDB line protocol with millisecond timestamps (`/write?precision=ms`).
pub fn line_protocol(records: &[&Record], prefix: &str) -> String {
    let mut s = String::with_capacity(records.len() * 140);
    for r in records {
        let _ = writeln!(
            s,
            "meter,device={},channel={} voltage={},current={},power={},power_factor={},energy={} {}",
            device_name(prefix, r.device),
            r.channel_name(),
            r.voltage,
            r.current,
            r.power,
            r.pf,
            r.energy_kwh(),
            r.ts
        );
    }
    s
}

/// Local wall time of a reading in the site's zone (Tasmota `Time`, the socket meter's
/// `datetime`), to the second.
pub fn local_time(ts_ms: i64, tz: &jiff::tz::TimeZone, sep: char) -> String {
    let dt = jiff::Timestamp::from_millisecond(ts_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
        .datetime();
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Tasmota `tele/<topic>/SENSOR`, rounded as Tasmota rounds (counters to Wh, power and
/// voltage to whole units, the factor to two places).
pub fn tasmota_sensor(r: &Record, tz: &jiff::tz::TimeZone) -> String {
    format!(
        "{{\"Time\":\"{}\",\"ENERGY\":{{\"TotalStartTime\":\"2024-01-01T00:00:00\",\"Total\":{},\
         \"Power\":{},\"ApparentPower\":{},\"ReactivePower\":{},\"Factor\":{},\"Voltage\":{},\
         \"Current\":{}}}}}",
        local_time(r.ts, tz, 'T'),
        round_to(r.energy_kwh(), 1000.0),
        r.power.round(),
        r.apparent_power().round(),
        r.reactive_power().round(),
        round_to(r.pf, 100.0),
        r.voltage.round(),
        r.current
    )
}

/// Shelly Gen2 `<prefix>/status/switch:0`: energy in Wh, as the device reports it.
pub fn shelly_switch_status(r: &Record) -> String {
    format!(
        "{{\"id\":0,\"source\":\"timer\",\"output\":true,\"apower\":{},\"voltage\":{},\
         \"freq\":50.0,\"current\":{},\"pf\":{},\"aenergy\":{{\"total\":{},\
         \"by_minute\":[0.0,0.0,0.0],\"minute_ts\":{}}},\"temperature\":{{\"tC\":41.2,\"tF\":106.2}}}}",
        r.power,
        r.voltage,
        r.current,
        round_to(r.pf, 100.0),
        round_to(r.energy_kwh() * 1000.0, 1000.0),
        r.ts.div_euclid(60_000) * 60
    )
}

/// Clemap one-minute binary message (type 17, 130 bytes) from the three phase records of one
/// reading (L1, L2, L3 in order). Values in thousandths, little-endian; see Wattline's
/// `decode/src/mqtt/clemap.rs` for the layout.
pub fn clemap_one_minute(phases: &[&Record], device: u32) -> Vec<u8> {
    debug_assert_eq!(phases.len(), 3);
    let mut b = Vec::with_capacity(130);
    b.push(17u8);
    b.extend_from_slice(&(phases[0].ts as f64 / 1000.0).to_le_bytes());
    // Sensor id: a BSON ObjectId in the vendor's database; any 12 bytes.
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(b"SIM\0");
    id[8..].copy_from_slice(&device.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(0); // phase byte, 0 in the vendor's fixtures
    let milli = |x: f64| (x * 1000.0).round() as i32;
    for r in phases {
        let s = r.apparent_power();
        let q = r.reactive_power();
        let phi = r.pf.clamp(-1.0, 1.0).acos().to_degrees();
        for v in [r.voltage, r.current, s, r.power, q, r.pf, phi] {
            b.extend_from_slice(&milli(v).to_le_bytes());
        }
    }
    for r in phases {
        // Energy of the interval in Wh (one minute at this power), in thousandths.
        let wh = r.power / 60.0;
        b.extend_from_slice(&((wh * 1000.0).round() as i64).to_le_bytes());
    }
    debug_assert_eq!(b.len(), 130);
    b
}

/// The socket meter's reading: byte-for-byte the prototype's format.
pub fn tcp_spent(id: &str, r: &Record, tz: &jiff::tz::TimeZone) -> String {
    format!(
        "{{\"id\": \"{id}\", \"consumption\": {:?}, \"datetime\": \"{}\", \"type\": \"/spent\"}}",
        r.energy_kwh(),
        local_time(r.ts, tz, ' ')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            device: 7,
            channel: 0,
            ts: 1_795_849_276_000, // 2026-11-28T07:01:16Z
            voltage: 231.4,
            current: 2.513,
            power: 561.3,
            pf: 0.965,
            energy_raw: 444_444_444_440_000,
        }
    }

    #[test]
    fn json_and_line_protocol() {
        let r = rec();
        assert_eq!(
            json_readings(&[&r], "sim-", true),
            "[{\"device\":\"sim-000007\",\"ts\":1795849276000,\"channel\":\"main\",\
             \"voltage\":231.4,\"current\":2.513,\"power\":561.3,\"power_factor\":0.965,\
             \"energy\":12345.679012}]"
        );
        assert_eq!(
            line_protocol(&[&r], "sim-"),
            "meter,device=sim-000007,channel=main voltage=231.4,current=2.513,power=561.3,\
             power_factor=0.965,energy=12345.679012 1795849276000\n"
        );
    }

    #[test]
    fn tcp_message_matches_the_prototype() {
        let mut r = rec();
        r.energy_raw = 36_000_000_000; // exactly 1 kWh: printed as 1.0, like the meter
        let zurich = jiff::tz::TimeZone::get("Europe/Zurich").unwrap();
        assert_eq!(
            tcp_spent("1", &r, &zurich),
            r#"{"id": "1", "consumption": 1.0, "datetime": "2026-11-28 08:01:16", "type": "/spent"}"#
        );
    }

    #[test]
    fn clemap_layout() {
        let phases: Vec<Record> = (1..=3)
            .map(|c| Record {
                channel: c,
                ..rec()
            })
            .collect();
        let refs: Vec<&Record> = phases.iter().collect();
        let b = clemap_one_minute(&refs, 7);
        assert_eq!(b.len(), 130);
        assert_eq!(b[0], 17);
        assert_eq!(
            f64::from_le_bytes(b[1..9].try_into().unwrap()),
            1_795_849_276.0
        );
        // L1 voltage at offset 22, L2 voltage 28 bytes later.
        assert_eq!(i32::from_le_bytes(b[22..26].try_into().unwrap()), 231_400);
        assert_eq!(i32::from_le_bytes(b[50..54].try_into().unwrap()), 231_400);
        assert_eq!(i32::from_le_bytes(b[34..38].try_into().unwrap()), 561_300);
    }
}
