//! # berth: a Compose-style orchestrator with its own container runtime
//!
//! Data flows one way, and each arrow has exactly one owner:
//!
//! ```text
//!  compose.yaml (+ overrides, .env, -f, profiles)
//!        │  project::load      discover → dotenv → YAML tree → interpolate → merge/extends
//!        ▼                     → validate → canonical form → typed model
//!    Project  ──────────────────────────────────────────────── (pure, no I/O but reading files)
//!        │  plan::reconcile    Project + observed state (state::) → Plan of operations
//!        ▼                     incl. the waits (running / healthy / completed)
//!     Plan  ────────────────────────────────────────────────── (pure)
//!        │  engine::executor   runs the plan along the dependency graph, decides nothing
//!        ▼
//!  engine::spec   Service + Image + network attachment → berth_runtime::ContainerSpec
//!        │
//!        ├── image::    references, registry pull/push, content store, safe layer unpack
//!        ├── network::  bridges, veths, IPAM, nftables, embedded DNS (in the supervisor)
//!        ├── volume::   named volumes, binds, tmpfs, secrets/configs
//!        ▼
//!  berth_runtime  (runtime/, synchronous, knows nothing of Compose)
//!        │  re-execs this binary in hidden single-threaded modes: `init` (namespaces, rootfs,
//!        │  security, exec) and `shim` (the container's parent: logs, reaping, exit status)
//!        ▼
//!     kernel: namespaces, overlayfs, cgroups v1/v2, capabilities, seccomp, netlink, nftables
//! ```
//!
//! Process boundaries: CLI ↔ per-project supervisor (`engine::supervisor`, owns DNS and
//! health), supervisor ↔ per-container shim (`berth_runtime::shim`). Only `state::` knows
//! on-disk paths and formats; only `cli::render` prints to the terminal.

pub mod cli;
pub mod engine;
pub mod fixture;
pub mod image;
pub mod network;
pub mod plan;
pub mod project;
pub mod state;
pub mod volume;

/// File name of the binary with the whole CLI, installed beside `berth`, which execs it for
/// every command but `container` (see `cli`).
pub const FULL_NAME: &str = "berth-full";
