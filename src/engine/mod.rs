//! The engine: turns plans into running containers and keeps the project's long-lived
//! services (DNS) in a per-project supervisor.
//!
//! Takes a `Project` and a `Plan`; gives running containers, networks and state records.
//! Neighbours: `plan` (what to do, decided purely), `state` (records on disk),
//! `berth_runtime` (containers), `network` (links, firewall, DNS), `image` (layers),
//! `volume` (named volumes).
//!
//! - [`lifecycle`]: `up` (observe → reconcile → execute), `down`, `stop`, `ps`, logs
//! - [`spec`]: `Service` + image + placement → `berth_runtime::ContainerSpec`
//! - [`health`]: healthchecks through exec
//! - [`supervisor`] / [`protocol`]: the per-project supervisor and its socket protocol
//! - [`dns`]: the supervisor's DNS listeners
//! - [`restart`]: the supervisor's restart policies
//! - [`verbs`]: start, restart, kill, pause, rm, top, port, wait, ls, images, cp, pull
//! - [`events`]: the project's container events log (`berth events`)

pub mod dns;
pub mod events;
pub mod health;
pub mod lifecycle;
pub mod netcfg;
pub mod protocol;
pub mod restart;
pub mod spec;
pub mod supervisor;
pub mod verbs;

pub use lifecycle::{Engine, EngineError, Event, PsRow};

/// The hidden `berth __supervise <project>` mode: serve DNS for the project until `down`.
pub async fn run_supervisor(root: &crate::state::Root, project: &str) -> anyhow::Result<()> {
    let upstream = dns::upstream_from_env().map_err(anyhow::Error::msg)?;
    let services = dns::DnsServices::new(project, upstream);
    let monitor = tokio::spawn(restart::monitor(root.clone(), project.to_string()));
    let dies = tokio::spawn(events::watch_dies(root.clone(), project.to_string()));
    let health = tokio::spawn(health::monitor(root.clone(), project.to_string()));
    let served = supervisor::serve(root, project, services).await;
    monitor.abort();
    dies.abort();
    health.abort();
    served?;
    Ok(())
}
