//! Stub: being written.
use wattline_domain::{Limits, TsMs};

use super::{adapter_codes, AdapterError, Decoded, TopicIdentity};

/// Memory between messages, per device id.
#[derive(Debug, Default)]
pub struct ShellyState {}

impl ShellyState {
    pub fn forget(&mut self, _id: &str) {}
}

pub(super) fn identity(_topic: &str) -> Option<TopicIdentity> {
    None
}

pub(super) fn decode(
    _state: &mut ShellyState,
    topic: &str,
    _identity: TopicIdentity,
    _payload: &[u8],
    _now: TsMs,
    _limits: &Limits,
) -> Result<Decoded, AdapterError> {
    Err(AdapterError::new(
        topic,
        None,
        adapter_codes::UNKNOWN_TOPIC,
        "not implemented yet",
    ))
}
