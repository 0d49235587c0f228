//! The `berth` binary: the runtime's hidden modes and `berth container …` here; every other
//! command is exec'd in `berth-full` (`src/bin/berth-full.rs`), so that a container's start
//! does not pay for loading the whole CLI.
//!
//! `#![no_main]`: std's start-up is skipped for the same reason (see
//! `berth_runtime::no_main`).

#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> i32 {
    berth_runtime::no_main(berth::cli::front_main)
}
