//! Jepsen-style chaos runs for Cairn: real `cairn` processes in their own
//! network namespaces, faults on a seeded schedule, recorded histories, and
//! checkers written here (linearizability, Elle-style serializability, watch
//! guarantees, fenced locks, durability). The `cairn-jepsen` binary drives it.
#![warn(missing_docs)]

pub mod checker;
pub mod cluster;
pub mod error;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod run;
pub mod workload;

pub use error::{Error, Result};
