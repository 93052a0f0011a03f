//! The gateway's logger. Lines are tagged with the policy's name, truncated
//! to 1 KiB, and at most 16 are kept per call.
//!
//! ```ignore
//! opamp_policy::warn!("cannot decode effective config: {err}");
//! ```

pub use crate::bindings::opamp_gateway::policy::host::Level;

/// Logs one line at `level` (to stderr in host-side unit tests).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::opamp_gateway::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::host::log(level, message);
}

/// `format!`-style logging at a [`Level`].
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::log($level, &::std::format!($($arg)+))
    };
}

#[macro_export]
macro_rules! trace { ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) }; }
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) }; }
