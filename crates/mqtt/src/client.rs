//! External-broker mode: Wattline as a client of Mosquitto, EMQX or any MQTT 5 broker.
//!
//! Every node subscribes to the device topics through one MQTT 5 shared subscription
//! (`$share/<group>/<filter>`), so the broker hands each message to one node of the group and
//! several nodes split one stream. Acknowledgements are manual: a QoS 1 message is
//! acknowledged to the broker only after its readings are durable, so a node that dies
//! mid-batch leaves the message with the broker, which delivers it again.
//!
//! The broker's own authentication and ACL protect the topics in this mode; messages that
//! reach Wattline are taken as published by the admin (any registered device).
//!
//! Adapters that merge several messages (the ESP32 sketch's four topics, Shelly deltas on
//! a full status) keep their memory per node: with several nodes the broker may split one
//! device's messages between them, so those families want a single node (or one group per
//! device family).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::sync::{mpsc, watch};
use wattline_domain::Principal;

use crate::codec::PublishPacket;
use crate::hub::Hub;

/// Topic filters of every payload family.
pub const DEVICE_FILTERS: &[&str] = &[
    "wattline/+/readings",
    "wattline/readings",
    "tele/+/SENSOR",
    "tele/+/LWT",
    "+/status/#",
    "+/events/rpc",
    "+/online",
    "shellies/#",
    "emon/#",
    "+/data/+",
    "+/temps",
    "one-minute/+",
    "ten-second/+",
];

/// Where the external broker is, parsed from `mqtt://user:pass@host:port` or `mqtts://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "{url:?}: the broker URL must start with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decode(user)?), Some(percent_decode(pass)?)),
                None => (Some(percent_decode(u)?), None),
            },
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number 0..=65535"))?,
            ),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(BrokerUrl {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            username,
            password,
        })
    }
}

/// `%40` in a password is `@`: URLs cannot carry some characters literally.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 after unescaping"))
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: BrokerUrl,
    /// Shared-subscription group: nodes of one group split the stream.
    pub group: String,
    pub client_id: String,
    /// CA certificate (PEM) for mqtts://.
    pub ca_pem: Option<Vec<u8>>,
}

/// Runs the client until `shutdown` turns true: connects (and reconnects), subscribes, and
/// feeds what arrives to the hub.
pub async fn run(
    hub: Arc<Hub>,
    config: ClientConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.url.host.clone(),
        config.url.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_manual_acks(true);
    // The broker may send this many unacknowledged QoS 1 messages: enough to fill a group
    // commit while the previous one is being made durable.
    options.set_receive_maximum(Some(2000));
    options.set_max_packet_size(Some(1 << 20));
    options.set_clean_start(true);
    if let Some(user) = &config.url.username {
        options.set_credentials(
            user.clone(),
            config.url.password.clone().unwrap_or_default(),
        );
    }
    if config.url.tls {
        let ca = config
            .ca_pem
            .clone()
            .ok_or("mqtts:// needs the broker's CA certificate (mqtt_broker_ca)")?;
        options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 4096);

    let (tx, mut rx) = mpsc::channel::<Publish>(20_000);
    let consumer_hub = hub.clone();
    let consumer_client = client.clone();
    let consumer = tokio::spawn(async move {
        let mut conn = consumer_hub.new_conn();
        let mut batch: Vec<Publish> = Vec::new();
        while rx.recv_many(&mut batch, 5000).await > 0 {
            let packets: Vec<PublishPacket> = batch
                .iter()
                .map(|p| PublishPacket {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.clone(),
                    qos: p.qos as u8,
                    retain: p.retain,
                    dup: p.dup,
                    pkid: p.pkid,
                    topic_alias: None,
                })
                .collect();
            let verdicts = consumer_hub
                .ingest_messages(&mut conn, &Principal::Admin, &packets)
                .await;
            for (p, verdict) in batch.drain(..).zip(verdicts) {
                // A message storage failed on is not acknowledged: the broker sends it again
                // after a reconnect. Refused payloads are acknowledged: resending won't help.
                if verdict != Err(crate::codec::AckRefusal::Unspecified) && p.qos != QoS::AtMostOnce
                {
                    if let Err(e) = consumer_client.ack(&p).await {
                        tracing::warn!(error = %e, "mqtt client: could not acknowledge");
                    }
                }
            }
        }
    });

    let filters: Vec<String> = DEVICE_FILTERS
        .iter()
        .map(|f| format!("$share/{}/{f}", config.group))
        .collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(host = %config.url.host, port = config.url.port, code = ?ack.code, "mqtt client: connected to the external broker");
                // Subscribing from the event loop's own task would deadlock on a full request
                // channel, so hand it to a task.
                let client = client.clone();
                let filters = filters.clone();
                tokio::spawn(async move {
                    for f in filters {
                        if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                            tracing::error!(filter = %f, error = %e, "mqtt client: subscribe failed");
                        }
                    }
                });
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                tracing::debug!(?ack, "mqtt client: subscribed");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "mqtt client: connection to the external broker failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    drop(tx);
    let _ = client.try_disconnect();
    let _ = consumer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let u = BrokerUrl::parse("mqtt://wl:p%40ss@127.0.0.1:18830").unwrap();
        assert_eq!(
            u,
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 18830,
                username: Some("wl".into()),
                password: Some("p@ss".into()),
            }
        );
        let u = BrokerUrl::parse("mqtts://broker.local").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 8883);
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://x:99999").is_err());
        assert!(BrokerUrl::parse("mqtt://u:p@").is_err());
    }
}
