//! The node's clock: the one place the library reads the wall clock for an event's timestamp
//! (the core never does; events carry their timestamps, and applying is a pure function).

use crate::core::types::Timestamp;

impl Timestamp {
    /// Now, read from the system clock.
    pub fn now() -> Self {
        Self::from_datetime(chrono::Utc::now())
    }
}
