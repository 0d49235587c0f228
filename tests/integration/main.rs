//! berth's one integration-test binary. Modules by tier and area; `support` holds the harness
//! (root check, temp state roots, fresh network namespaces, `eventually`, fixture images,
//! the local registry and the leak checker).

mod support;

mod e2e;
mod fixtures;
mod image;
mod load;
mod network;
mod runtime;
mod verbs;
mod vm;
mod volume;
