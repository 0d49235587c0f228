//! The `berth` binary: hidden runtime entry points first (they must run before any thread
//! exists, see `berth_runtime::hidden`), then the CLI on a tokio runtime.

fn main() -> std::process::ExitCode {
    berth::cli::main()
}
