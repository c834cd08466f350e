//! Where batches go: one sink per device group, owning that group's connections.
//!
//! A sink is handed a batch and a flag per record; it sends the records not yet
//! acknowledged and sets the flags of those the server acknowledged. A failed attempt
//! returns an error and leaves the other flags unset, so the forwarder retries only what is
//! missing (per-device connections fail independently).

mod http;
mod mqtt;
mod tcp;

use std::future::Future;
use std::time::Duration;

pub use http::{HttpConn, HttpSink, Reply};
pub use mqtt::{MqttDeviceSink, MqttGatewaySink};
pub use tcp::{enroll as tcp_enroll, TcpConfig, TcpSink};

use crate::record::Record;

/// The records of `batch` not acknowledged yet, per device in order of first appearance, each
/// device's indices in log order: per-device sinks send each list over its own connection.
pub(crate) fn unacked_per_device(batch: &[Record], acked: &[bool]) -> Vec<(u32, Vec<usize>)> {
    let mut per_device: Vec<(u32, Vec<usize>)> = Vec::new();
    let mut slot: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for (i, r) in batch.iter().enumerate() {
        if acked[i] {
            continue;
        }
        let k = *slot.entry(r.device).or_insert_with(|| {
            per_device.push((r.device, Vec::new()));
            per_device.len() - 1
        });
        per_device[k].1.push(i);
    }
    per_device
}

/// What an acknowledged attempt reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Records the server refused for good (they count as acknowledged, and are not resent).
    pub rejected: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{0}")]
    Transport(String),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Protocol(String),
}

pub trait Sink: Send {
    /// Sends the records of `batch` whose `acked` flag is false; sets the flags of those
    /// acknowledged. Ok means every flag is set.
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl Future<Output = Result<Delivery, SinkError>> + Send + 'a;

    /// Closes connections politely (end of run).
    fn close(&mut self) -> impl Future<Output = ()> + Send + '_ {
        async {}
    }
}

/// Acknowledges everything at once: measures generation and logging alone.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    #[allow(clippy::manual_async_fn)] // the trait needs the `Send` bound spelled out
    fn send<'a>(
        &'a mut self,
        _batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            acked.fill(true);
            Ok(Delivery::default())
        }
    }
}

/// Every sink, so a run can hold groups of different protocols without boxing futures.
pub enum AnySink {
    Http(HttpSink),
    MqttGateway(MqttGatewaySink),
    MqttDevices(MqttDeviceSink),
    Tcp(TcpSink),
    Null(NullSink),
}

impl Sink for AnySink {
    #[allow(clippy::manual_async_fn)]
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            match self {
                AnySink::Http(s) => s.send(batch, acked).await,
                AnySink::MqttGateway(s) => s.send(batch, acked).await,
                AnySink::MqttDevices(s) => s.send(batch, acked).await,
                AnySink::Tcp(s) => s.send(batch, acked).await,
                AnySink::Null(s) => s.send(batch, acked).await,
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn close(&mut self) -> impl Future<Output = ()> + Send + '_ {
        async move {
            match self {
                AnySink::Http(s) => s.close().await,
                AnySink::MqttGateway(s) => s.close().await,
                AnySink::MqttDevices(s) => s.close().await,
                AnySink::Tcp(s) => s.close().await,
                AnySink::Null(s) => s.close().await,
            }
        }
    }
}
