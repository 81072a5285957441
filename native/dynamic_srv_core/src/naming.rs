//! The one naming rule of the package: which SRV targets name which nodes,
//! which strings are node names, DNS names and labels, and which node names
//! are release helpers (`rem-`/`rpc-`). The strategy, the epmd module, the
//! UDP provider and configuration validation all ask here, through the NIF.
//! Nothing here allocates atoms: it only says which strings are safe to
//! become one.

use regex::{Regex, RegexBuilder};

use crate::error::Error;

/// Longest node name the VM accepts as an atom (in bytes here; the names
/// produced are ASCII, so bytes and characters agree).
pub const MAX_NODE_NAME: usize = 255;
/// Longest DNS name in presentation form, without the trailing dot.
pub const MAX_DNS_NAME: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL: usize = 63;

/// Bytes of the part of a node name before the `@`, and of the label of an
/// SRV target: OTP's own rule for the name part (`net_kernel`), so every
/// name derived from DNS is one a node can be started with.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Bytes of the host part of a node name: a DNS name or an IPv4 or IPv6
/// address.
fn is_host_byte(b: u8) -> bool {
    is_name_byte(b) || b == b'.' || b == b':'
}

/// Checks a node name `name@host`: the name of `[A-Za-z0-9_-]`, the host a
/// DNS name or an address (`[A-Za-z0-9_.:-]`), at most `MAX_NODE_NAME`
/// bytes in all.
pub fn check_node_name(node: &[u8]) -> Result<(), String> {
    const EXPECTED: &str = "expected name@host, the name of a-z, A-Z, 0-9, _ and -, the host a DNS name or an IP address";
    if node.len() > MAX_NODE_NAME {
        return Err(format!(
            "is {} bytes long, longer than {MAX_NODE_NAME}",
            node.len()
        ));
    }
    let mut parts = node.splitn(2, |&b| b == b'@');
    match (parts.next(), parts.next()) {
        (Some(name), Some(host))
            if !name.is_empty()
                && !host.is_empty()
                && name.iter().all(|&b| is_name_byte(b))
                && host.iter().all(|&b| is_host_byte(b)) =>
        {
            Ok(())
        }
        _ => Err(EXPECTED.into()),
    }
}

/// The node a release helper node works for: `rem-<id>-<node>` and
/// `rpc-<id>-<node>` (what `bin/app remote` and `rpc` start) give `<node>`;
/// any other name gives `None`.
pub fn helper_of(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix("rem-")
        .or_else(|| name.strip_prefix("rpc-"))?;
    let (id, main) = rest.split_once('-')?;
    (!id.is_empty() && !main.is_empty()).then_some(main)
}

/// Checks a label of `[A-Za-z0-9_-]`, 1 to `max` bytes long (group names,
/// cookies' stand-ins and other names the configuration takes).
pub fn check_label(label: &[u8], max: usize) -> Result<(), String> {
    if label.is_empty() || label.len() > max {
        return Err(format!("must be 1 to {max} bytes long"));
    }
    if label.iter().all(|&b| is_name_byte(b)) {
        Ok(())
    } else {
        Err("may hold only a-z, A-Z, 0-9, _ and -".into())
    }
}

/// Why a target gives no node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    NotUtf8,
    OutsideService,
    TooLong(usize),
}

impl Rejection {
    pub fn describe(&self, service: &str) -> String {
        match self {
            Rejection::NotUtf8 => "the target is not valid UTF-8".into(),
            Rejection::OutsideService => {
                format!("the target is not <label>.{service} with a label of a-z, 0-9, _ and -")
            }
            Rejection::TooLong(len) => {
                format!("the node name would be {len} bytes, longer than {MAX_NODE_NAME}")
            }
        }
    }
}

/// Matches SRV targets of one service domain.
pub struct TargetParser {
    service: String,
    pattern: Regex,
}

impl TargetParser {
    /// Builds the parser for `service`, which is matched literally and
    /// case-insensitively (a trailing dot in it is ignored).
    pub fn new(service: &str) -> Result<Self, Error> {
        let service = service.strip_suffix('.').unwrap_or(service);
        check_dns_name(service).map_err(|msg| Error::InvalidName(format!("service {msg}")))?;
        let source = format!(r"\A([a-z0-9_-]+)\.{}\.?\z", regex::escape(service));
        let pattern = RegexBuilder::new(&source)
            .case_insensitive(true)
            .build()
            .map_err(|e| Error::Other(format!("cannot build the target pattern: {e}")))?;
        Ok(TargetParser {
            service: service.to_owned(),
            pattern,
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The node name `<label>@<service>` of one SRV target, the label in
    /// lowercase: DNS names are case-insensitive, node names are not, so
    /// `Node-1.<service>` and `node-1.<service>` name one node.
    pub fn node_name(&self, target: &[u8]) -> Result<String, Rejection> {
        let target = std::str::from_utf8(target).map_err(|_| Rejection::NotUtf8)?;
        let label = self
            .pattern
            .captures(target)
            .and_then(|caps| caps.get(1))
            .ok_or(Rejection::OutsideService)?
            .as_str();
        let len = label.len() + 1 + self.service.len();
        if len > MAX_NODE_NAME {
            return Err(Rejection::TooLong(len));
        }
        Ok(format!("{}@{}", label.to_ascii_lowercase(), self.service))
    }
}

/// Checks a name before it is sent to a server and returns it in the form
/// to query, which is the name as given: as with the OS resolver, only a
/// trailing dot makes it absolute. On the system path the others go
/// through resolv.conf's search list by its `ndots` rule; explicit
/// nameservers have no search list and are asked the name itself.
pub fn query_name(name: &[u8]) -> Result<String, Error> {
    let name = std::str::from_utf8(name)
        .map_err(|_| Error::InvalidName("the name is not valid UTF-8".into()))?;
    let bare = name.strip_suffix('.').unwrap_or(name);
    check_dns_name(bare).map_err(|msg| Error::InvalidName(format!("{name:?} {msg}")))?;
    Ok(name.to_owned())
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_DNS_NAME {
        return Err(format!(
            "is {} bytes long, longer than {MAX_DNS_NAME}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label".into());
        }
        if label.len() > MAX_LABEL {
            return Err(format!("has a label longer than {MAX_LABEL} bytes"));
        }
        let allowed = |c: char| c.is_ascii() && is_name_byte(c as u8);
        if label.bytes().all(|b| allowed(char::from(b))) {
            continue;
        }
        if let Some(c) = label.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "contains {c:?}; only a-z, 0-9, '-', '_' and '.' are allowed"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parser() -> TargetParser {
        TargetParser::new("app.service.consul").expect("valid service")
    }

    #[test]
    fn target_becomes_node_name() {
        let p = parser();
        assert_eq!(
            p.node_name(b"node-1.app.service.consul."),
            Ok("node-1@app.service.consul".into())
        );
        assert_eq!(
            p.node_name(b"Node_2.APP.Service.consul"),
            Ok("node_2@app.service.consul".into())
        );
        assert_eq!(
            p.node_name(b"NODE-1.app.service.consul"),
            p.node_name(b"node-1.app.service.consul")
        );
    }

    #[test]
    fn dots_of_the_service_are_literal() {
        let p = parser();
        assert_eq!(
            p.node_name(b"node.appxservicexconsul"),
            Err(Rejection::OutsideService)
        );
        assert_eq!(
            p.node_name(b"a.b.app.service.consul"),
            Err(Rejection::OutsideService)
        );
    }

    #[test]
    fn other_targets_are_rejected() {
        let p = parser();
        for bad in [
            &b"app.service.consul"[..],
            b".app.service.consul",
            b"node.other.consul",
            b"node.app.service.consul..",
            b"n\x00de.app.service.consul",
            b"n\xffde.app.service.consul",
            b"node@x.app.service.consul",
            b"node.app.service.consul.evil",
            b"",
        ] {
            assert!(p.node_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(p.node_name(b"\xff"), Err(Rejection::NotUtf8));
    }

    #[test]
    fn node_names_are_bounded() {
        let p = parser();
        let label = "a".repeat(300);
        let target = format!("{label}.app.service.consul");
        assert_eq!(
            p.node_name(target.as_bytes()),
            Err(Rejection::TooLong(300 + 1 + 18))
        );
    }

    #[test]
    fn service_is_validated() {
        assert!(TargetParser::new("").is_err());
        assert!(TargetParser::new("a..b").is_err());
        assert!(TargetParser::new("a b").is_err());
        assert!(TargetParser::new("app.service.consul.").is_ok());
        assert!(TargetParser::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn query_names() {
        // Only a trailing dot makes a name absolute: the system resolver
        // applies resolv.conf's search list and ndots to the others.
        assert_eq!(query_name(b"a.b.c").as_deref(), Ok("a.b.c"));
        assert_eq!(query_name(b"web.default").as_deref(), Ok("web.default"));
        assert_eq!(query_name(b"a.b.c.").as_deref(), Ok("a.b.c."));
        assert_eq!(query_name(b"localhost").as_deref(), Ok("localhost"));
        assert_eq!(
            query_name(b"_app._tcp.service.consul").as_deref(),
            Ok("_app._tcp.service.consul")
        );
        for bad in [&b""[..], b".", b"a..b", b"a b", b"\xff", b"a/b"] {
            assert!(
                matches!(query_name(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
        let long = format!("{}.com", "a".repeat(63)).repeat(4);
        assert!(query_name(long.as_bytes()).is_err());
    }

    #[test]
    fn node_names_follow_one_rule() {
        // (name, accepted)
        let cases: [(&str, bool); 14] = [
            ("app@host", true),
            ("node-1@app.service.consul", true),
            ("a_b@10.0.0.5", true),
            ("app@::1", true),
            ("rem-1a2b-app@host", true),
            ("", false),
            ("app", false),
            ("@host", false),
            ("app@", false),
            ("a@b@c", false),
            ("my.app@host", false),
            ("app@ho st", false),
            ("app@h\u{e9}", false),
            ("a\0p@host", false),
        ];
        for (name, accepted) in cases {
            assert_eq!(
                check_node_name(name.as_bytes()).is_ok(),
                accepted,
                "{name:?}"
            );
        }
        let long = format!("a@{}", "b".repeat(254));
        assert!(check_node_name(long.as_bytes()).is_err());
        assert_eq!(check_node_name(&long.as_bytes()[..255]), Ok(()));
    }

    #[test]
    fn every_parsed_target_is_a_valid_node_name() {
        let p = parser();
        let node = p.node_name(b"Node_1.app.service.consul.").expect("parsed");
        assert_eq!(check_node_name(node.as_bytes()), Ok(()));
    }

    #[test]
    fn release_helpers_name_their_node() {
        assert_eq!(helper_of("rem-1a2b-app"), Some("app"));
        assert_eq!(helper_of("rpc-ff-my-app"), Some("my-app"));
        for other in [
            "app",
            "rem-",
            "rem-1a2b",
            "rem--app",
            "rem-1a2b-",
            "remx-1-app",
            "rpc",
        ] {
            assert_eq!(helper_of(other), None, "{other}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(check_label(b"group_1-a", 16), Ok(()));
        assert!(check_label(b"", 16).is_err());
        assert!(check_label(b"a.b", 16).is_err());
        assert!(check_label(&[b'a'; 17], 16).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(target in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parser().node_name(&target);
            let _ = query_name(&target);
            let _ = check_node_name(&target);
            let _ = check_label(&target, 64);
            if let Ok(text) = std::str::from_utf8(&target) {
                let _ = helper_of(text);
            }
        }

        #[test]
        fn valid_labels_round_trip(label in "[a-z0-9_-]{1,60}", dot in any::<bool>()) {
            let p = parser();
            let target = format!("{label}.app.service.consul{}", if dot { "." } else { "" });
            prop_assert_eq!(p.node_name(target.as_bytes()), Ok(format!("{label}@app.service.consul")));
        }

        #[test]
        fn accepted_names_are_safe_atoms(target in "[a-zA-Z0-9_.@-]{0,300}") {
            if let Ok(name) = parser().node_name(target.as_bytes()) {
                prop_assert!(name.len() <= MAX_NODE_NAME);
                prop_assert_eq!(name.matches('@').count(), 1);
                prop_assert!(name.ends_with("@app.service.consul"));
                prop_assert_eq!(check_node_name(name.as_bytes()), Ok(()));
            }
        }
    }
}
