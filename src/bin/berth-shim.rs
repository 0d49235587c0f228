//! `berth-shim`: the runtime's hidden single-threaded modes (per-container shim, exec
//! helper, tiny init) in a binary of their own. berth execs its helper through a sealed view
//! (CVE-2019-5736): a read-only overlay of its directory, else a sealed memfd copy of it, so
//! this binary stays small: it links only `berth-runtime`, not the CLI's async stack.
//!
//! `#![no_main]`: started for every container start and `exec`, it skips std's start-up
//! (see `berth_runtime::no_main`).

#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> i32 {
    berth_runtime::no_main(|| match berth_runtime::hidden_main() {
        Some(code) => std::process::ExitCode::from(code),
        None => {
            eprintln!("berth-shim: an internal helper of berth, started by berth itself");
            std::process::ExitCode::from(2)
        }
    })
}
