//! DNS answers from arbitrary bytes: decoding and turning the records into
//! results must never panic, whatever a hostile server sends.
#![no_main]

use dynamic_srv_core::types::Kind;
use dynamic_srv_core::wire::result_of;
use hickory_resolver::proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::from_vec(data) {
        for kind in [Kind::Srv, Kind::A, Kind::Aaaa] {
            let _ = result_of(&message, kind);
        }
    }
});
