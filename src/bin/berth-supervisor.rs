//! `berth-supervisor`: the per-project supervisor (`--root DIR __supervise PROJECT`) in a
//! binary of its own. The supervisor lives as long as the project is up, and a process's
//! resident memory counts every page of its binary it touches (with the kernel's
//! fault-around, whole neighbourhoods of them): linking only what the supervisor runs,
//! without the CLI, keeps that small. `berth up` starts it when it is installed beside
//! `berth`, else runs `berth __supervise` itself.

fn main() -> std::process::ExitCode {
    // The runtime's hidden modes, in case a container is started with this binary as helper.
    if let Some(code) = berth_runtime::hidden_main() {
        return std::process::ExitCode::from(code);
    }
    berth::engine::supervisor::main_if_supervising().unwrap_or_else(|| {
        eprintln!("berth-supervisor: an internal helper of berth, started by `berth up`");
        std::process::ExitCode::from(2)
    })
}
