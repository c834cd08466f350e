//! Wattline's MQTT side.
//!
//! * [`broker`]: the built-in broker (MQTT 3.1.1 and 5), generic over [`broker::BrokerHooks`]
//!   so the implementation can change without touching what messages mean.
//! * [`hub`]: what messages mean to Wattline: credentials, the topic ACL, bindings of vendor
//!   topic identities to devices, pending devices, availability, readings into the engine.
//! * [`client`]: external-broker mode, a client of Mosquitto/EMQX with an MQTT 5 shared
//!   subscription so that several Wattline nodes split one stream.
//! * [`codec`]: the packets, behind our own vocabulary.

pub mod broker;
pub mod client;
pub mod codec;
pub mod hub;
pub mod tls;
pub mod topic;

pub use broker::{Broker, BrokerConfig, BrokerHooks};
pub use hub::{hash_secret, Availability, BrokerSide, Hub, GATEWAY_TOPIC};
