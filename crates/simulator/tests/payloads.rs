//! Every payload the simulator sends, decoded by Wattline's own decoders: the values that
//! arrive are exactly the simulated ones (device, channel, time, quantities).

use wattline_decode::mqtt::{decode_gateway, Decoded, MqttDecoder};
use wattline_decode::tcp_meter::{parse_message, Message, MeterTime};
use wattline_decode::{parse_json_readings, parse_line_protocol, Precision};
use wattline_domain::{Limits, Quantity as Q, TsMs, Values};
use wattline_simulator::encode::{
    clemap_one_minute, json_readings, line_protocol, shelly_switch_status, tasmota_sensor,
    tcp_spent,
};
use wattline_simulator::meter::{Meter, Zone};
use wattline_simulator::record::Record;
use wattline_simulator::Kind;

/// 2026-01-05T17:00:00Z.
const START: i64 = 1_767_632_400_000;

fn records(kind: Kind, device: u32, n: i64) -> Vec<Record> {
    let zone = Zone::utc();
    let mut m = Meter::new(kind, 42, device, START);
    let mut out = Vec::new();
    for i in 0..n {
        m.read(START + i * 1000, &zone, &mut out);
    }
    out
}

fn now() -> TsMs {
    TsMs(START + 3_600_000)
}

fn expected(r: &Record) -> Values {
    Values::new()
        .with(Q::Voltage, r.voltage)
        .with(Q::Current, r.current)
        .with(Q::Power, r.power)
        .with(Q::PowerFactor, r.pf)
        .with(Q::Energy, r.energy_kwh())
}

#[test]
fn http_json_and_line_protocol_carry_every_value_exactly() {
    let limits = Limits::default();
    for kind in [Kind::Household, Kind::Building, Kind::Miner] {
        let rs = records(kind, 3, 20);
        let refs: Vec<&Record> = rs.iter().collect();
        let json = json_readings(&refs, "sim-", true);
        let lp = line_protocol(&refs, "sim-");
        let from_json = parse_json_readings(json.as_bytes(), now(), &limits);
        let from_lp = parse_line_protocol(lp.as_bytes(), Precision::Ms, now(), &limits);
        for outcome in [from_json, from_lp] {
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
            assert_eq!(outcome.readings.len(), rs.len());
            for (got, r) in outcome.readings.iter().zip(&rs) {
                assert_eq!(got.device.as_str(), "sim-000003");
                assert_eq!(got.channel.as_str(), r.channel_name());
                assert_eq!(got.ts, TsMs(r.ts));
                assert_eq!(got.values, expected(r));
            }
        }
    }
}

#[test]
fn mqtt_native_device_and_gateway_topics() {
    let limits = Limits::default();
    let rs = records(Kind::Building, 9, 5);
    let refs: Vec<&Record> = rs.iter().collect();
    let mut d = MqttDecoder::new(limits.clone());
    let own = json_readings(&refs, "sim-", false);
    match d
        .decode("wattline/sim-000009/readings", own.as_bytes(), now())
        .unwrap()
    {
        Decoded::Readings {
            identity,
            readings,
            rejected,
        } => {
            assert_eq!(identity.id, "sim-000009");
            assert!(rejected.is_empty());
            assert_eq!(readings.len(), rs.len());
            for (got, r) in readings.iter().zip(&rs) {
                assert_eq!((got.ts, got.values), (TsMs(r.ts), expected(r)));
            }
        }
        other => panic!("{other:?}"),
    }
    let gw = json_readings(&refs, "sim-", true);
    let (readings, rejected) =
        decode_gateway("wattline/readings", gw.as_bytes(), now(), &limits).unwrap();
    assert!(rejected.is_empty());
    assert_eq!(readings.len(), rs.len());
    assert_eq!(readings[4].values, expected(&rs[4]));
}

#[test]
fn tasmota_shelly_and_clemap_payloads_decode() {
    let limits = Limits::default();
    let mut d = MqttDecoder::new(limits);
    let r = records(Kind::Household, 1, 3)[2];
    let tz = jiff::tz::TimeZone::UTC;
    match d
        .decode(
            "tele/sim-000001/SENSOR",
            tasmota_sensor(&r, &tz).as_bytes(),
            now(),
        )
        .unwrap()
    {
        Decoded::Readings { readings, .. } => {
            assert_eq!(readings.len(), 1);
            let v = readings[0].values;
            assert_eq!(v.get(Q::Power), Some(r.power.round()));
            assert_eq!(
                v.get(Q::Energy),
                Some((r.energy_kwh() * 1000.0).round() / 1000.0)
            );
            assert_eq!(v.get(Q::Current), Some(r.current));
            // Tasmota status readings are stamped on arrival.
            assert_eq!(readings[0].ts, now());
        }
        other => panic!("{other:?}"),
    }
    match d
        .decode(
            "sim-000001/status/switch:0",
            shelly_switch_status(&r).as_bytes(),
            now(),
        )
        .unwrap()
    {
        Decoded::Readings { readings, .. } => {
            assert_eq!(readings.len(), 1);
            assert_eq!(readings[0].channel.as_str(), "switch:0");
            let v = readings[0].values;
            assert_eq!(v.get(Q::Power), Some(r.power));
            assert_eq!(v.get(Q::Voltage), Some(r.voltage));
            let kwh = v.get(Q::Energy).unwrap();
            assert!(
                (kwh - r.energy_kwh()).abs() < 1e-9,
                "{kwh} vs {}",
                r.energy_kwh()
            );
        }
        other => panic!("{other:?}"),
    }
    let phases = records(Kind::Building, 2, 1);
    let refs: Vec<&Record> = phases.iter().collect();
    let bytes = clemap_one_minute(&refs, 2);
    match d.decode("one-minute/sim-000002", &bytes, now()).unwrap() {
        Decoded::Readings { readings, .. } => {
            assert_eq!(readings.len(), 3);
            for (got, r) in readings.iter().zip(&phases) {
                assert_eq!(got.channel.as_str(), r.channel_name());
                assert_eq!(got.ts, TsMs(r.ts));
                assert_eq!(got.values.get(Q::Power), Some(r.power));
                assert_eq!(got.values.get(Q::Voltage), Some(r.voltage));
                assert_eq!(got.values.get(Q::PowerFactor), Some(r.pf));
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn socket_meter_message_decodes_to_the_local_time_and_counter() {
    let limits = Limits::default();
    let zurich = jiff::tz::TimeZone::get("Europe/Zurich").unwrap();
    let r = records(Kind::Miner, 4, 3)[2];
    let msg = tcp_spent("17", &r, &zurich);
    match parse_message(msg.as_bytes(), &limits).unwrap() {
        Message::Reading(m) => {
            assert_eq!(m.meter.0, 17);
            assert_eq!(m.consumption, r.energy_kwh());
            let MeterTime::Local(_) = m.time else {
                panic!("{:?}", m.time)
            };
            let (ts, values) = m.resolve(&zurich, None, &limits, now()).unwrap();
            assert_eq!(ts, TsMs(r.ts));
            assert_eq!(values.get(Q::Energy), Some(r.energy_kwh()));
        }
        other => panic!("{other:?}"),
    }
}
