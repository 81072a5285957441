//! The Erlang-independent core of libcluster_dynamic_srv: resolver settings
//! (`config`), the answers lookups give (`types`), DNS lookups on
//! hickory-resolver (`hickory`), SRV target and query name checks
//! (`parse`), the check command's transport probe (`probe`) and their one
//! error type (`error`).
//!
//! The NIF crate (`dynamic_srv_nif`) only converts terms to and from these
//! types, so everything here is tested with plain `cargo test`.

pub mod config;
pub mod error;
pub mod exchange;
pub mod hickory;
pub mod parse;
pub mod probe;
pub mod types;
pub mod wire;
