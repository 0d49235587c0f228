//! The `berth` binary: the runtime's hidden modes and `berth container …` here; every other
//! command is exec'd in `berth-full` (`src/bin/berth-full.rs`), so that a container's start
//! does not pay for loading the whole CLI.

fn main() -> std::process::ExitCode {
    berth::cli::front_main()
}
