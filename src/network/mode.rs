//! `network_mode:` of a service: which network namespace a container gets.
//!
//! Takes the compose string; gives a typed mode the engine maps to the runtime's netns
//! option (new pinned netns + attachments, the host's, an empty one, or another
//! container's). Pure.

/// A parsed `network_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Default: a pinned netns attached to the service's networks.
    Bridge,
    /// Share the host's network namespace: no attachments, no DNS, no published ports.
    Host,
    /// A netns with only `lo`.
    None,
    /// Join the netns of this service's (first) container.
    Service(String),
    /// Join the netns of this container.
    Container(String),
}

/// `network_mode` values berth does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported network_mode {value:?}: use bridge, host, none, service:<name> or container:<name>")]
pub struct ModeError {
    pub value: String,
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<Self, ModeError> {
        let err = || ModeError {
            value: s.to_owned(),
        };
        match s {
            "" | "bridge" | "default" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            _ => match s.split_once(':') {
                Some(("service", n)) if !n.is_empty() => Ok(NetworkMode::Service(n.to_owned())),
                Some(("container", n)) if !n.is_empty() => Ok(NetworkMode::Container(n.to_owned())),
                _ => Err(err()),
            },
        }
    }

    /// Whether this mode gets its own netns with network attachments (and thus DNS names,
    /// published ports).
    pub fn attaches(&self) -> bool {
        matches!(self, NetworkMode::Bridge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_modes() {
        assert_eq!(NetworkMode::parse("host"), Ok(NetworkMode::Host));
        assert_eq!(NetworkMode::parse("none"), Ok(NetworkMode::None));
        assert_eq!(NetworkMode::parse("bridge"), Ok(NetworkMode::Bridge));
        assert_eq!(
            NetworkMode::parse("service:db"),
            Ok(NetworkMode::Service("db".into()))
        );
        assert_eq!(
            NetworkMode::parse("container:abc"),
            Ok(NetworkMode::Container("abc".into()))
        );
        assert!(NetworkMode::parse("service:").is_err());
        assert!(NetworkMode::parse("macvlan").is_err());
        assert!(NetworkMode::Bridge.attaches() && !NetworkMode::Host.attaches());
    }
}
