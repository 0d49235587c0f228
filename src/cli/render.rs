//! The only place that prints results and errors for the user.

use std::io::Write;
use std::time::Instant;

use crate::engine::{Event, PsRow};
use crate::plan::Plan;

/// Print an error with its whole cause chain, one cause per line.
pub fn error(err: &anyhow::Error) {
    eprintln!("berth: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// `up --dry-run`: the plan, one step per line with what it waits for.
pub fn plan(p: &Plan) {
    print!("{p}");
}

/// Progress of an `up`, like compose's plain progress: one line per finished operation
/// (on stderr, so stdout stays clean for scripts). `--progress quiet` prints nothing,
/// `--progress json` one JSON object per event.
pub async fn progress(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, mode: String) {
    let start = Instant::now();
    while let Some(ev) = rx.recv().await {
        match mode.as_str() {
            "quiet" => {}
            "json" => {
                let v = match &ev {
                    Event::Started { what } => {
                        serde_json::json!({"status": "started", "what": what})
                    }
                    Event::Done { what, elapsed } => serde_json::json!({
                        "status": "done", "what": what, "seconds": elapsed.as_secs_f64()
                    }),
                };
                eprintln!("{v}");
            }
            _ => {
                if let Event::Done { what, elapsed } = ev {
                    // Waits that took no time and no-op image checks are noise.
                    if what.starts_with("ensure image") && elapsed.as_millis() < 5 {
                        continue;
                    }
                    eprintln!(" ✔ {what:<48} {:>6.1}s", start.elapsed().as_secs_f64());
                }
            }
        }
    }
}

/// `ps` output: compose's table, `-q` names, `--services`, or `--format json`.
pub fn ps(rows: &[PsRow], quiet: bool, services: bool, format: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if quiet {
        for r in rows {
            writeln!(out, "{}", r.name)?;
        }
        return Ok(());
    }
    if services {
        let mut seen = std::collections::BTreeSet::new();
        for r in rows {
            if seen.insert(&r.service) {
                writeln!(out, "{}", r.service)?;
            }
        }
        return Ok(());
    }
    if format == "json" {
        writeln!(out, "{}", serde_json::to_string(rows)?)?;
        return Ok(());
    }
    let w_name = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let w_image = rows.iter().map(|r| r.image.len()).max().unwrap_or(0).max(5);
    let w_cmd = rows
        .iter()
        .map(|r| one_line(&r.command).chars().take(30).count() + 2)
        .max()
        .unwrap_or(0)
        .max(7);
    let w_svc = rows
        .iter()
        .map(|r| r.service.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let w_status = rows
        .iter()
        .map(|r| r.status.len())
        .max()
        .unwrap_or(0)
        .max(6);
    writeln!(
        out,
        "{:<w_name$}   {:<w_image$}   {:<w_cmd$}   {:<w_svc$}   {:<w_status$}   PORTS",
        "NAME", "IMAGE", "COMMAND", "SERVICE", "STATUS"
    )?;
    for r in rows {
        let cmd: String = one_line(&r.command).chars().take(30).collect();
        writeln!(
            out,
            "{:<w_name$}   {:<w_image$}   {:<w_cmd$}   {:<w_svc$}   {:<w_status$}   {}",
            r.name,
            r.image,
            format!("\"{cmd}\""),
            r.service,
            r.status,
            r.ports.join(", ")
        )?;
    }
    Ok(())
}

/// Commands are shown on one line, whitespace runs folded, as docker does.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// One log line with compose's `service-1  | ` prefix (coloured per container on a TTY).
pub fn log_line(
    prefix: &str,
    width: usize,
    index: usize,
    color: bool,
    no_prefix: bool,
    timestamps: bool,
    line: &berth_runtime::log::LogLine,
) {
    let mut out = std::io::stdout().lock();
    let text = line.log.strip_suffix('\n').unwrap_or(&line.log);
    let ts = if timestamps {
        format!("{} ", line.time)
    } else {
        String::new()
    };
    let _ = if no_prefix {
        writeln!(out, "{ts}{text}")
    } else if color {
        let c = COLORS[index % COLORS.len()];
        writeln!(out, "\x1b[{c}m{prefix:<width$}  |\x1b[0m {ts}{text}")
    } else {
        writeln!(out, "{prefix:<width$}  | {ts}{text}")
    };
}
