//! The Erlang-independent core of libcluster_dynamic_srv: resolver settings
//! (`config`), DNS lookups, the naming rule (`naming`: SRV targets to node
//! names, node names, DNS names, labels, release helpers), the check
//! command's transport probe (`probe`) and their one error type (`error`).
//!
//! The lookups are built in layers, each using only those below it:
//!
//! 1. `types`: what a lookup gives back (`Kind`, `Answer`) and the
//!    conversion of DNS records into it.
//! 2. `wire`: the DNS messages: the query written by hand, the match of a
//!    reply to its query, and the one mapping of DNS outcomes (response
//!    code, records) to a result or an `Error`.
//! 3. `exchange`, the one client, for explicit nameservers and the system
//!    configuration alike: the table of lookups in flight
//!    (`exchange::table`), the UDP and TCP transports (`exchange::udp`,
//!    `exchange::tcp`), the servers that fail (`exchange::health`), the
//!    negative answers kept (`exchange::negative`), the names that need TCP
//!    (`exchange::big`), resolv.conf and its search list
//!    (`exchange::system`) and the sweeper of deadlines (`exchange::sweep`),
//!    wired together with their lock order by `exchange`.
//!    `exchange::start` is the entry point of every lookup.
//!
//! `probe` asks one server once, with `wire`'s query and reading.
//!
//! The NIF crate (`dynamic_srv_nif`) only converts terms to and from these
//! types, so everything here is tested with plain `cargo test`.

pub mod config;
pub mod error;
pub mod exchange;
pub mod naming;
pub mod probe;
pub mod types;
pub mod wire;
