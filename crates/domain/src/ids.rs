use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message is shown to API clients as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may contain only letters, digits, '-', '_', '.' and ':' (found {found:?})")]
    BadChar { kind: &'static str, found: char },
}

/// Identifiers travel in URLs, MQTT topics and line-protocol tags, so they are restricted to a
/// charset that needs no escaping in any of them.
fn check_slug(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(IdError::BadChar { kind, found });
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_slug($kind, &s, $max)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_id!(
    /// A device's public identifier, chosen by the admin or generated at creation.
    DeviceId,
    "device id",
    64
);
slug_id!(
    /// A site's public identifier.
    SiteId,
    "site id",
    64
);
slug_id!(
    /// A measuring channel of a device: a phase (`L1`), a circuit (`fridge`) or [`ChannelName::DEFAULT`].
    ChannelName,
    "channel",
    64
);

impl ChannelName {
    /// The channel of readings that name none: a single-channel meter.
    pub const DEFAULT: &'static str = "main";

    pub fn default_channel() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl Default for ChannelName {
    fn default() -> Self {
        Self::default_channel()
    }
}

/// Internal numeric handle of one (device, channel) time series. Storage keys raw data and
/// rollups by it because an integer key is a fraction of the size of two strings per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesId(pub i64);

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_safe_ids_and_name_the_bad_char() {
        assert!(DeviceId::parse("meter-0017").is_ok());
        assert!(DeviceId::parse("shelly:em.1_a").is_ok());
        assert_eq!(
            DeviceId::parse("a/b").unwrap_err(),
            IdError::BadChar {
                kind: "device id",
                found: '/'
            }
        );
        assert_eq!(
            DeviceId::parse("").unwrap_err(),
            IdError::Empty { kind: "device id" }
        );
        assert!(matches!(
            DeviceId::parse("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: DeviceId = serde_json::from_str("\"plug1\"").unwrap();
        assert_eq!(id.as_str(), "plug1");
        assert!(serde_json::from_str::<DeviceId>("\"bad id\"").is_err());
    }
}
