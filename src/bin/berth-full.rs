//! `berth-full`: the whole berth CLI (compose verbs, images, networks, volumes, the
//! supervisor, and `container` too). `berth` execs it for every command but `container`,
//! with the same argv; run on its own it behaves as `berth`.

fn main() -> std::process::ExitCode {
    berth::cli::main()
}
