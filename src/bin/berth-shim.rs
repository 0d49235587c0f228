//! `berth-shim`: the runtime's hidden single-threaded modes (per-container shim, exec
//! helper, tiny init) in a binary of their own. berth execs its helper through a sealed view
//! (CVE-2019-5736): a read-only overlay of its directory, else a sealed memfd copy of it, so
//! this binary stays small: it links only `berth-runtime`, not the CLI's async stack.

fn main() -> std::process::ExitCode {
    match berth_runtime::hidden_main() {
        Some(code) => std::process::ExitCode::from(code),
        None => {
            eprintln!("berth-shim: an internal helper of berth, started by berth itself");
            std::process::ExitCode::from(2)
        }
    }
}
