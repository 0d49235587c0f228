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

/// How compose names an operation's resource and its state while working and when done:
/// `create container p-web-1` → ("Container p-web-1", "Creating", "Created").
fn describe(what: &str) -> (String, &'static str, &'static str) {
    let verbs: [(&str, &str, &str, &str); 5] = [
        ("create container ", "Container ", "Creating", "Created"),
        ("start container ", "Container ", "Starting", "Started"),
        (
            "restart container ",
            "Container ",
            "Restarting",
            "Restarted",
        ),
        ("remove container ", "Container ", "Removing", "Removed"),
        ("ensure image of ", "Image for ", "Checking", "Ready"),
    ];
    for (prefix, kind, working, done) in verbs {
        if let Some(rest) = what.strip_prefix(prefix) {
            return (format!("{kind}{rest}"), working, done);
        }
    }
    if what == "ensure networks" {
        return ("Networks".into(), "Creating", "Ready");
    }
    if let Some(rest) = what.strip_prefix("wait for ") {
        let (svc, cond) = rest.split_once(' ').unwrap_or((rest, ""));
        let done = match cond {
            "healthy" => "Healthy",
            "completed successfully" => "Exited",
            _ => "Running",
        };
        return (format!("Service {svc}"), "Waiting", done);
    }
    (what.to_string(), "Working", "Done")
}

/// Progress of an `up`, like compose v2 (on stderr, so stdout stays clean for scripts):
/// `tty` (the default on a terminal) keeps one line per resource, redrawn in place with
/// its state and time; `plain` prints a line per change; `json` one JSON object per
/// change; `quiet` nothing.
pub async fn progress(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, mode: String) {
    let start = Instant::now();
    let mode = match mode.as_str() {
        "auto" if std::io::IsTerminal::is_terminal(&std::io::stderr()) => "tty".to_string(),
        "auto" => "plain".to_string(),
        _ => mode,
    };
    let multi = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
    let mut bars: std::collections::HashMap<String, indicatif::ProgressBar> = Default::default();
    let working = indicatif::ProgressStyle::with_template(" {spinner:.cyan} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let finished = indicatif::ProgressStyle::with_template(" {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    while let Some(ev) = rx.recv().await {
        let (what, elapsed, failed) = match &ev {
            Event::Started { what } => (what, None, false),
            Event::Done { what, elapsed } => (what, Some(*elapsed), false),
            Event::Failed { what, elapsed } => (what, Some(*elapsed), true),
        };
        if what.starts_with("run one-off container ") {
            continue; // as compose: `run` shows what it made for the one-off, not the one-off
        }
        let (id, working_text, done_text) = describe(what);
        let text = match (elapsed, failed) {
            (None, _) => working_text,
            (Some(_), false) => done_text,
            (Some(_), true) => "Error",
        };
        match mode.as_str() {
            "quiet" => {}
            "json" => {
                let mut v = serde_json::json!({
                    "id": id,
                    "status": match (elapsed, failed) {
                        (None, _) => "Working",
                        (Some(_), false) => "Done",
                        (Some(_), true) => "Error",
                    },
                    "text": text,
                });
                if let Some(e) = elapsed {
                    v["seconds"] = serde_json::json!(e.as_secs_f64());
                }
                eprintln!("{v}");
            }
            "tty" => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new_spinner());
                    b.set_style(working.clone());
                    b.enable_steady_tick(std::time::Duration::from_millis(100));
                    b
                });
                match elapsed {
                    None => {
                        bar.set_style(working.clone());
                        bar.set_message(format!("{id:<40} {text}"));
                    }
                    Some(e) => {
                        let mark = if failed {
                            "\x1b[31m✘\x1b[0m"
                        } else {
                            "\x1b[32m✔\x1b[0m"
                        };
                        bar.set_style(finished.clone());
                        bar.finish_with_message(format!(
                            "{mark} {id:<40} {text:<10} {:>5.1}s",
                            e.as_secs_f64()
                        ));
                    }
                }
            }
            _ => {
                // Waits that took no time and no-op image checks are noise.
                if id.starts_with("Image for ") && elapsed.is_some_and(|e| e.as_millis() < 5) {
                    continue;
                }
                match elapsed {
                    None => eprintln!(" {id}  {text}"),
                    Some(_) => eprintln!(
                        " {} {id}  {text}  {:.1}s",
                        if failed { "✘" } else { "✔" },
                        start.elapsed().as_secs_f64()
                    ),
                }
            }
        }
    }
    for b in bars.values() {
        if !b.is_finished() {
            b.abandon();
        }
    }
    if !bars.is_empty() {
        // The bars leave the cursor at the end of the last one: what is printed next
        // (a `run` one-off's terminal session, the shell's prompt) starts on a line of its own.
        eprintln!();
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

/// One log line as the container wrote it: stdout to stdout, stderr to stderr.
pub fn raw_log_line(line: &berth_runtime::log::LogLine) -> std::io::Result<()> {
    if line.stream == "stderr" {
        std::io::stderr().lock().write_all(line.log.as_bytes())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(line.log.as_bytes())?;
        out.flush()
    }
}

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

/// A table like docker's: left-aligned columns three spaces apart, a header first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Plain result lines on stdout (one per item).
pub fn lines<S: std::fmt::Display>(items: &[S]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for i in items {
        writeln!(out, "{i}")?;
    }
    out.flush()?;
    Ok(())
}

/// A status line on stderr, compose's ` ✔ Container NAME  Started`.
pub fn status(what: &str, name: &str, state: &str) {
    eprintln!(" ✔ {what} {name}  {state}");
}
