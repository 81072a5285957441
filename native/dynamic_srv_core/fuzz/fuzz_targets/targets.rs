//! SRV targets and query names from arbitrary bytes: the parser must never
//! panic, and every name it accepts must be a safe node name.
#![no_main]

use dynamic_srv_core::naming::{query_name, TargetParser, MAX_NODE_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a service and a target.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split) % (rest.len() + 1);
    let (service, target) = rest.split_at(cut);
    let _ = query_name(target);
    let Ok(service) = std::str::from_utf8(service) else {
        return;
    };
    let Ok(parser) = TargetParser::new(service) else {
        return;
    };
    if let Ok(node) = parser.node_name(target) {
        assert!(node.len() <= MAX_NODE_NAME);
        assert_eq!(node.matches('@').count(), 1);
        assert!(node.ends_with(parser.service()));
        assert!(node.is_ascii());
    }
});
