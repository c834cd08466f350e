//! MQTT 3.1.1 and 5 on the wire, behind one packet vocabulary of our own.
//!
//! The broker speaks [`Inbound`] and [`Outbound`]; which protocol version a connection uses is
//! decided by its CONNECT and then only matters here. The byte-level work is done by
//! rumqttc's `mqttbytes` codecs, so swapping them out touches this file only.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol level a client chose in its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    pub version: Version,
    pub client_id: String,
    /// 3.1.1 "clean session" / 5 "clean start".
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    /// MQTT 5 only; `None` on 3.1.1, where a non-clean session never expires.
    pub session_expiry_s: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// 0 at QoS 0.
    pub pkid: u16,
    /// MQTT 5 topic alias set or used by this PUBLISH (inbound only).
    pub topic_alias: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connect(ConnectPacket),
    Publish(PublishPacket),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        /// (filter, requested QoS).
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5 "disconnect with will message": the client asks for its will anyway.
        with_will: bool,
    },
    /// A packet a client must not send to a server (CONNACK, SUBACK...), by name.
    Unexpected(&'static str),
}

/// Why a CONNECT is refused, in terms both versions can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    ServerUnavailable,
}

/// Why a PUBLISH was not taken (MQTT 5 says it in the PUBACK; 3.1.1 cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefusal {
    NotAuthorized,
    /// Payload refused by the adapter.
    PayloadInvalid,
    /// Storage failed: the client should retry.
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck {
        session_present: bool,
        refusal: Option<ConnectRefusal>,
    },
    PubAck {
        pkid: u16,
        refusal: Option<AckRefusal>,
    },
    PubRec {
        pkid: u16,
        refusal: Option<AckRefusal>,
    },
    PubRel(u16),
    PubComp(u16),
    Publish(PublishPacket),
    SubAck {
        pkid: u16,
        /// Granted QoS per filter, `None` where refused.
        granted: Vec<Option<u8>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    /// MQTT 5 only (3.1.1 servers just close): the server ends the session, e.g. a revoked
    /// credential or a client id taken over.
    Disconnect {
        reason: DisconnectReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    NotAuthorized,
    SessionTakenOver,
    KeepAliveTimeout,
    ServerShuttingDown,
    ProtocolError,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol level {0} (3.1.1 and 5 are supported)")]
    UnsupportedVersion(u8),
    #[error("the first packet must be CONNECT")]
    NotConnect,
}

/// How many bytes a complete packet at the front of `buf` takes, if it is all there.
/// `Err` for a malformed remaining-length field or one above `max`.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 1 + i + 1 + len;
            if total > max {
                return Err(CodecError::TooLarge { size: total, max });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// The protocol level a CONNECT frame asks for (without parsing the rest).
fn connect_level(frame: &[u8]) -> Result<u8, CodecError> {
    if frame.first().map(|b| b >> 4) != Some(1) {
        return Err(CodecError::NotConnect);
    }
    let header = 1
        + frame[1..]
            .iter()
            .take(4)
            .position(|b| b & 0x80 == 0)
            .unwrap_or(3)
        + 1;
    let name_len = frame
        .get(header..header + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| CodecError::Malformed("CONNECT too short".into()))?;
    frame
        .get(header + 2 + name_len)
        .copied()
        .ok_or_else(|| CodecError::Malformed("CONNECT too short".into()))
}

/// Reads one packet from the front of `buf` if a whole one is there. Before the CONNECT,
/// `version` is `None` and only a CONNECT is accepted.
pub fn read(
    buf: &mut BytesMut,
    version: Option<Version>,
    max: usize,
) -> Result<Option<Inbound>, CodecError> {
    let Some(len) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let version = match version {
        Some(v) => v,
        None => match connect_level(&buf[..len])? {
            4 => Version::V311,
            5 => Version::V5,
            other => return Err(CodecError::UnsupportedVersion(other)),
        },
    };
    let malformed = |e: &dyn std::fmt::Display| CodecError::Malformed(e.to_string());
    let packet = match version {
        Version::V311 => from_v4(v4::Packet::read(buf, max).map_err(|e| malformed(&e))?),
        Version::V5 => from_v5(v5::Packet::read(buf, Some(max as u32)).map_err(|e| malformed(&e))?),
    };
    Ok(Some(packet))
}

fn from_v4(p: v4::Packet) -> Inbound {
    match p {
        v4::Packet::Connect(c) => Inbound::Connect(ConnectPacket {
            version: Version::V311,
            client_id: c.client_id,
            clean_start: c.clean_session,
            keep_alive_s: c.keep_alive,
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| l.password),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
            }),
            session_expiry_s: None,
        }),
        v4::Packet::Publish(p) => Inbound::Publish(PublishPacket {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            topic_alias: None,
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect { with_will: false },
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> Inbound {
    match p {
        v5::Packet::Connect(c, will, login) => Inbound::Connect(ConnectPacket {
            version: Version::V5,
            client_id: c.client_id,
            clean_start: c.clean_start,
            keep_alive_s: c.keep_alive,
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| l.password),
            will: will.map(|w| Will {
                topic: String::from_utf8_lossy(&w.topic).into_owned(),
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
            }),
            session_expiry_s: Some(
                c.properties
                    .and_then(|p| p.session_expiry_interval)
                    .unwrap_or(0),
            ),
        }),
        v5::Packet::Publish(p) => Inbound::Publish(PublishPacket {
            // With a topic alias the topic may be empty; the connection owns the alias table.
            topic_alias: p.properties.as_ref().and_then(|pr| pr.topic_alias),
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }),
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    }
}

fn qos4(q: u8) -> rumqttc::mqttbytes::QoS {
    match q {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Appends `packet` to `out` in the connection's protocol version.
pub fn write(packet: &Outbound, version: Version, out: &mut BytesMut) {
    // Outbound packets are built here from validated parts, and the only size limit that can
    // be exceeded is the client's: ours is `usize::MAX` so encoding never fails.
    let result = match version {
        Version::V311 => to_v4(packet).map(|p| {
            p.write(out, usize::MAX)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        Version::V5 => {
            to_v5(packet).map(|p| p.write(out, None).map(drop).map_err(|e| e.to_string()))
        }
    };
    if let Some(Err(e)) = result {
        tracing::error!(error = %e, ?packet, "could not encode an MQTT packet");
    }
}

fn to_v4(packet: &Outbound) -> Option<v4::Packet> {
    use v4::ConnectReturnCode as C;
    Some(match packet {
        Outbound::ConnAck {
            session_present,
            refusal,
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            match refusal {
                None => C::Success,
                Some(ConnectRefusal::BadCredentials) => C::BadUserNamePassword,
                Some(ConnectRefusal::NotAuthorized) => C::NotAuthorized,
                Some(ConnectRefusal::BadClientId) => C::BadClientId,
                Some(ConnectRefusal::ServerUnavailable) => C::ServiceUnavailable,
            },
            *session_present,
        )),
        // 3.1.1 has no negative acknowledgement: a refused message is acknowledged (as
        // Mosquitto does) so the client does not resend it forever; the refusal is logged.
        Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Outbound::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Outbound::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(*pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Outbound::Publish(p) => {
            let mut publish =
                v4::Publish::from_bytes(p.topic.clone(), qos4(p.qos), p.payload.clone());
            publish.pkid = p.pkid;
            publish.retain = p.retain;
            publish.dup = p.dup;
            v4::Packet::Publish(publish)
        }
        Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            granted
                .iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(qos4(*q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Disconnect { .. } => return None,
    })
}

fn to_v5(packet: &Outbound) -> Option<v5::Packet> {
    use v5::ConnectReturnCode as C;
    Some(match packet {
        Outbound::ConnAck {
            session_present,
            refusal,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present: *session_present,
            code: match refusal {
                None => C::Success,
                Some(ConnectRefusal::BadCredentials) => C::BadUserNamePassword,
                Some(ConnectRefusal::NotAuthorized) => C::NotAuthorized,
                Some(ConnectRefusal::BadClientId) => C::ClientIdentifierNotValid,
                Some(ConnectRefusal::ServerUnavailable) => C::ServerUnavailable,
            },
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(u16::MAX),
                max_qos: Some(1),
                retain_available: Some(1),
                max_packet_size: None,
                assigned_client_identifier: None,
                topic_alias_max: Some(TOPIC_ALIAS_MAX),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outbound::PubAck { pkid, refusal } => v5::Packet::PubAck(v5::PubAck {
            pkid: *pkid,
            reason: match refusal {
                None => v5::PubAckReason::Success,
                Some(AckRefusal::NotAuthorized) => v5::PubAckReason::NotAuthorized,
                Some(AckRefusal::PayloadInvalid) => v5::PubAckReason::PayloadFormatInvalid,
                Some(AckRefusal::Unspecified) => v5::PubAckReason::UnspecifiedError,
            },
            properties: None,
        }),
        Outbound::PubRec { pkid, refusal } => v5::Packet::PubRec(v5::PubRec {
            pkid: *pkid,
            reason: match refusal {
                None => v5::PubRecReason::Success,
                Some(AckRefusal::NotAuthorized) => v5::PubRecReason::NotAuthorized,
                Some(AckRefusal::PayloadInvalid) => v5::PubRecReason::PayloadFormatInvalid,
                Some(AckRefusal::Unspecified) => v5::PubRecReason::UnspecifiedError,
            },
            properties: None,
        }),
        Outbound::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel {
            pkid: *pkid,
            reason: v5::PubRelReason::Success,
            properties: None,
        }),
        Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp {
            pkid: *pkid,
            reason: v5::PubCompReason::Success,
            properties: None,
        }),
        Outbound::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: qos5(p.qos),
            retain: p.retain,
            topic: Bytes::copy_from_slice(p.topic.as_bytes()),
            pkid: p.pkid,
            payload: p.payload.clone(),
            properties: None,
        }),
        Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
            pkid: *pkid,
            return_codes: granted
                .iter()
                .map(|g| match g {
                    Some(q) => v5::SubscribeReasonCode::Success(qos5(*q)),
                    None => v5::SubscribeReasonCode::NotAuthorized,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: *pkid,
            reasons: vec![v5::UnsubAckReason::Success; *count],
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::Disconnect { reason } => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: match reason {
                DisconnectReason::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                DisconnectReason::ServerShuttingDown => {
                    v5::DisconnectReasonCode::ServerShuttingDown
                }
                DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
            },
            properties: None,
        }),
    })
}

/// How many topic aliases an MQTT 5 client may set up per connection.
pub const TOPIC_ALIAS_MAX: u16 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(version: Version, user: &str, pass: &str) -> BytesMut {
        let mut out = BytesMut::new();
        match version {
            Version::V311 => {
                let mut c = v4::Connect::new("dev-1");
                c.set_login(user, pass);
                v4::Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
            }
            Version::V5 => {
                let c = v5::Connect {
                    keep_alive: 30,
                    client_id: "dev-1".into(),
                    clean_start: true,
                    properties: None,
                };
                let login = v5::Login {
                    username: user.into(),
                    password: pass.into(),
                };
                v5::Packet::Connect(c, None, Some(login))
                    .write(&mut out, None)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn reads_connect_of_both_versions() {
        for version in [Version::V311, Version::V5] {
            let mut buf = connect_bytes(version, "u", "p");
            let Some(Inbound::Connect(c)) = read(&mut buf, None, 1 << 20).unwrap() else {
                panic!("no connect");
            };
            assert_eq!(c.version, version);
            assert_eq!(c.client_id, "dev-1");
            assert_eq!(c.username.as_deref(), Some("u"));
            assert_eq!(c.password.as_deref(), Some("p"));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let full = connect_bytes(Version::V311, "user", "secret");
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                read(&mut buf, None, 1 << 20).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn refuses_garbage_oversize_and_other_first_packets() {
        let mut buf = BytesMut::from(&b"\x30\x05\x00\x01axy"[..]);
        assert!(matches!(
            read(&mut buf, None, 1 << 20),
            Err(CodecError::NotConnect)
        ));
        let mut buf = BytesMut::from(&b"\x10\xff\xff\xff\xff\x01"[..]);
        assert!(read(&mut buf, None, 1 << 20).is_err());
        let mut big = connect_bytes(Version::V311, "user", &"x".repeat(500));
        assert!(matches!(
            read(&mut big, None, 100),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn publish_round_trips_in_both_versions() {
        for version in [Version::V311, Version::V5] {
            let p = PublishPacket {
                topic: "tele/plug1/SENSOR".into(),
                payload: Bytes::from_static(b"{}"),
                qos: 1,
                retain: true,
                dup: false,
                pkid: 7,
                topic_alias: None,
            };
            let mut out = BytesMut::new();
            write(&Outbound::Publish(p.clone()), version, &mut out);
            assert_eq!(
                read(&mut out, Some(version), 1 << 20).unwrap(),
                Some(Inbound::Publish(p))
            );
        }
    }
}
