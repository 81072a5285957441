//! The one error shape of every NIF: `{error, Reason}`, where `Reason` is an
//! atom (`nxdomain`, `no_data`, `timeout`, `servfail`, `refused`) or a pair
//! of an atom and a message (`{invalid_name, Msg}`, `{bad_settings, Msg}`,
//! `{other, Msg}`). The core's errors become a `Reason` here, and nowhere
//! else is an error term built.

use rustler::NifTaggedEnum;

use dynamic_srv_core::error::Error;

#[derive(NifTaggedEnum, Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Nxdomain,
    NoData,
    Timeout,
    Servfail,
    Refused,
    InvalidName(String),
    BadSettings(String),
    Other(String),
}

impl From<Error> for Reason {
    fn from(error: Error) -> Self {
        match error {
            Error::NxDomain => Reason::Nxdomain,
            Error::NoData => Reason::NoData,
            Error::Timeout => Reason::Timeout,
            Error::ServFail => Reason::Servfail,
            Error::Refused => Reason::Refused,
            Error::InvalidName(message) => Reason::InvalidName(message),
            Error::BadSettings(message) => Reason::BadSettings(message),
            Error::Other(message) => Reason::Other(message),
        }
    }
}

/// What a NIF returns: `{ok, T}` or `{error, Reason}` (rustler encodes a
/// `Result` so).
pub type NifReturn<T> = Result<T, Reason>;

/// A settings term that cannot be used, as `{bad_settings, Msg}`.
pub fn bad_settings(message: &str) -> Reason {
    Reason::BadSettings(message.to_owned())
}
