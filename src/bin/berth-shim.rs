//! `berth-shim`: the runtime's hidden single-threaded modes (per-container shim, exec
//! helper, tiny init) in a binary of their own. berth execs its helper through a sealed view
//! (CVE-2019-5736): a read-only overlay of its directory, else a sealed memfd copy of it, so
//! this binary stays small: it links only `berth-runtime`, not the CLI's async stack.
//!
//! `#![no_main]`: started for every container start and `exec`, it skips std's start-up
//! (see `berth_runtime::no_main_prelude`).

#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> i32 {
    berth_runtime::no_main_prelude();
    // A panic ends the process with 101, as it would from std's `main`.
    let code = std::panic::catch_unwind(|| match berth_runtime::hidden_main() {
        Some(code) => i32::from(code),
        None => {
            eprintln!("berth-shim: an internal helper of berth, started by berth itself");
            2
        }
    });
    code.unwrap_or(101)
}
