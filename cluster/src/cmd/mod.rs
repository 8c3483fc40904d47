//! One module per command group; each turns parsed flags into client calls and a printed result.

pub mod endpoint;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod member;
pub mod perf;
pub mod snapshot;
pub mod watch;
