//! Wattline's domain model. Everything here is pure: no I/O, no clocks read implicitly.
//!
//! Values are parsed into these types at the boundary (HTTP, MQTT, TCP decoders) so that the
//! layers below never see an unvalidated device id, a NaN or a timestamp from 1970.

pub mod account;
pub mod agg;
pub mod energy;
pub mod ids;
pub mod model;
pub mod quantity;
pub mod time;
pub mod validate;

pub use account::{
    ApiToken, AuditEvent, Email, Principal, Role, Session, TokenScope, User, UserAccess, UserId,
};
pub use agg::{Agg, QStat};
pub use ids::{ChannelName, DeviceId, IdError, SeriesId, SiteId};
pub use model::{Device, Point, Reading, Site};
pub use quantity::{Quantity, Values};
pub use time::{BucketTier, TsMs};
pub use validate::{Limits, ValueError};
