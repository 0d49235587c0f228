//! berth-runtime: placeholder until the runtime lands.

/// Runs a hidden mode (container init, shim) when this process was started in one and
/// returns its exit code; `None` for a normal CLI start. Must be called first in `main`,
/// before any thread exists.
pub fn hidden_main() -> Option<u8> {
    None
}
