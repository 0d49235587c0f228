//! Images: references, the content-addressed store, safe layer unpacking, local archives
//! (load/save/import) and the registry client (pull/push).
//!
//! Takes image references from the project model and the CLI; gives the engine an
//! [`store::Image`] handle (parsed config + unpacked layer directories, bottom → top) that
//! `engine::spec` turns into a `berth_runtime::ContainerSpec` rootfs (overlay lowerdirs).
//! Everything lives under `<root>/image/`, shared by all projects.
//!
//! - [`reference`]: Docker-compatible reference parsing and normalisation
//! - [`digest`]: sha256 digests, ChainIDs, hashing readers
//! - [`manifest`]: manifest/index/config documents and platform selection
//! - [`unpack`]: safe tar → overlay-format layer directory
//! - [`store`]: blobs, tags, layers by ChainID, lock, gc
//! - [`archive`]: OCI layout / docker-archive load and save, rootfs import
//! - [`registry`]: pull and push over the distribution API (oci-client)
//! - [`overlay`]: ordered lowerdirs and the mount option-length limit

pub mod archive;
pub mod digest;
pub mod manifest;
pub mod overlay;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use reference::ImageRef;
