//! Embedded DNS for a project's containers, run inside the per-project supervisor.
//!
//! Takes the names the engine registers as containers come and go (`Registry`); gives one
//! hickory-server listener per network on `<gateway>:53` (UDP and TCP, `DnsServer`). The
//! listener knows its network, so a container on two networks sees, on each, only the
//! peers of that network. Project names never leak upstream: unknown single labels and
//! unknown `*.<project>` names get an authoritative NXDOMAIN; anything else is forwarded
//! by `upstream` (host resolv.conf, configured servers, or none).

pub mod records;
pub mod server;
pub mod upstream;

pub use records::{Answer, LinkTarget, Registry, Reverse};
pub use server::{DnsError, DnsServer};
pub use upstream::Upstream;
