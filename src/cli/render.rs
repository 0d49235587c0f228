//! The only place that prints results and errors for the user.

/// Print an error with its whole cause chain, one cause per line.
pub fn error(err: &anyhow::Error) {
    eprintln!("berth: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
