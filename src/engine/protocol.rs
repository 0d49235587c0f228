//! The CLI ↔ supervisor protocol: one JSON object per line over the project's unix socket.
//!
//! Takes nothing but serde; gives the request and reply types and line framing helpers.
//! Neighbours: `engine::supervisor` (server side and client side).

use serde::{Deserialize, Serialize};

/// What the CLI asks of a project's supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is it alive? Answers with its pid.
    Ping,
    /// Re-read the project state (networks, containers, DNS names) from disk and apply it:
    /// DNS listeners and records change in memory, no restart.
    Reload,
    /// Stop serving and exit (after `down`).
    Shutdown,
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A success reply from this process.
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            pid: std::process::id(),
            error: None,
        }
    }

    /// A failure reply carrying the error chain as text.
    pub fn err(msg: String) -> Reply {
        Reply {
            ok: false,
            pid: std::process::id(),
            error: Some(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Reload).unwrap(),
            r#"{"op":"reload"}"#
        );
        let r: Request = serde_json::from_str(r#"{"op":"shutdown"}"#).unwrap();
        assert_eq!(r, Request::Shutdown);
    }
}
