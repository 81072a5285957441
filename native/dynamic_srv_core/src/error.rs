//! The one error type of the crate. The NIF crate's `reason` module turns
//! it into Erlang terms at the NIF boundary; nothing in this crate knows
//! about terms.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The name to look up is not a valid DNS name.
    InvalidName(String),
    /// The resolver settings passed in are unusable.
    BadSettings(String),
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no records of the asked type.
    NoData,
    /// No answer within the deadline.
    Timeout,
    /// The server failed (SERVFAIL and other server-side codes).
    ServFail,
    /// The server refused the query.
    Refused,
    /// Anything else (network errors, malformed answers), with a description.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName(msg) => write!(f, "invalid name: {msg}"),
            Error::BadSettings(msg) => write!(f, "bad settings: {msg}"),
            Error::NxDomain => f.write_str("the name does not exist (NXDOMAIN)"),
            Error::NoData => f.write_str("the name has no records of this type"),
            Error::Timeout => f.write_str("no answer before the deadline"),
            Error::ServFail => f.write_str("the server failed (SERVFAIL)"),
            Error::Refused => f.write_str("the server refused the query (REFUSED)"),
            Error::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}
