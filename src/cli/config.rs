//! `berth config`: load the project and print it in canonical form (docker compose v2's
//! normalised model: keys sorted, long syntax, absolute paths), or one of its lists.
//!
//! Takes the global options (files, project name and directory, env files, profiles) and
//! `ConfigArgs`; gives the printed model and exit code 0, or the load error (file:line:col
//! and YAML path) and a non-zero exit. Neighbours: `project::load`, `project::hash`.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalOpts;
use crate::project::{self, hash, LoadOptions, Project};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Only these services (they are enabled whatever their profiles)
    #[arg(value_name = "SERVICE")]
    pub service_names: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: Format,
    /// Only validate the configuration, print nothing
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the service names, one per line
    #[arg(long = "services")]
    pub list_services: bool,
    /// Print the volume names, one per line
    #[arg(long = "volumes")]
    pub list_volumes: bool,
    /// Print the network names, one per line
    #[arg(long = "networks")]
    pub list_networks: bool,
    /// Print the profile names, one per line
    #[arg(long = "profiles")]
    pub list_profiles: bool,
    /// Print the image names, one per line
    #[arg(long = "images")]
    pub list_images: bool,
    /// Don't interpolate environment variables
    #[arg(long)]
    pub no_interpolate: bool,
    /// Print the service config hash, one per line ("*" for every service, or a comma list)
    #[arg(long, value_name = "SERVICES")]
    pub hash: Option<String>,
}

/// Build loader options from the global flags and the real process environment.
pub fn load_options(
    g: &GlobalOpts,
    services: &[String],
    interpolate: bool,
) -> anyhow::Result<LoadOptions> {
    let mut opts = LoadOptions::from_process().context("cannot read the current directory")?;
    opts.files = g.files.clone();
    opts.project_name = g.project_name.clone();
    opts.project_directory = g.project_directory.clone();
    opts.env_files = g.env_files.clone();
    opts.profiles = g.profiles.clone();
    opts.services_named = services.to_vec();
    opts.interpolate = interpolate;
    if opts
        .files
        .iter()
        .any(|f| f.as_os_str() == project::discover::STDIN)
    {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the compose file from standard input")?;
        opts.stdin = Some(text);
    }
    Ok(opts)
}

pub async fn run(g: &GlobalOpts, args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let opts = load_options(g, &args.service_names, !args.no_interpolate)?;
    let project = project::load(&opts)?;
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let text = render(&project, &args)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("cannot write to standard output")?;
    Ok(ExitCode::SUCCESS)
}

/// The text `berth config` prints for `project` (pure, so it can be tested).
pub fn render(project: &Project, args: &ConfigArgs) -> anyhow::Result<String> {
    let lines = |items: Vec<String>| items.into_iter().map(|l| l + "\n").collect::<String>();
    let selected =
        |name: &str| args.service_names.is_empty() || args.service_names.iter().any(|s| s == name);
    if args.list_services {
        return Ok(lines(
            project
                .services
                .keys()
                .filter(|n| selected(n.as_str()))
                .map(|n| n.to_string())
                .collect(),
        ));
    }
    if args.list_volumes {
        return Ok(lines(
            project.volumes.keys().map(|n| n.to_string()).collect(),
        ));
    }
    if args.list_networks {
        return Ok(lines(
            project.networks.keys().map(|n| n.to_string()).collect(),
        ));
    }
    if args.list_profiles {
        return Ok(lines(project.all_profiles.clone()));
    }
    if args.list_images {
        return Ok(lines(
            project
                .services
                .iter()
                .filter(|(n, _)| selected(n.as_str()))
                .map(|(n, s)| {
                    s.image
                        .clone()
                        .unwrap_or_else(|| format!("{}-{}", project.name, n))
                })
                .collect(),
        ));
    }
    if let Some(which) = &args.hash {
        let wanted: Vec<&str> = which.split(',').map(str::trim).collect();
        let mut out = Vec::new();
        for want in &wanted {
            if *want != "*" && !project.services.contains_key(*want) {
                anyhow::bail!("no such service: {want}");
            }
        }
        for (n, s) in &project.services {
            if wanted.contains(&"*") || wanted.contains(&n.as_str()) {
                out.push(format!("{n} {}", hash::service_config_hash(s)));
            }
        }
        return Ok(lines(out));
    }
    let mut value = serde_json::to_value(project).context("cannot serialise the project")?;
    if !args.service_names.is_empty() {
        if let Some(serde_json::Value::Object(services)) = value.get_mut("services") {
            services.retain(|k, _| selected(k));
        }
    }
    Ok(match args.format {
        Format::Json => serde_json::to_string_pretty(&value).context("cannot print json")? + "\n",
        Format::Yaml => yaml(&value),
    })
}

/// Print a JSON value as block-style YAML. Strings are quoted whenever a YAML 1.1 or 1.2
/// reader could take them for something else (`no`, `on`, `1e3`, `0755`, `null`…), so the
/// output reads back the same in docker compose (go-yaml) and in berth.
pub fn yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    match value {
        serde_json::Value::Object(m) if !m.is_empty() => yaml_map(m, 0, &mut out),
        serde_json::Value::Array(a) if !a.is_empty() => yaml_seq(a, 0, &mut out),
        other => {
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
    out
}

fn yaml_map(m: &serde_json::Map<String, serde_json::Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_string(k));
        out.push(':');
        yaml_child(v, indent + 2, out);
    }
}

fn yaml_seq(a: &[serde_json::Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            // A mapping item starts on the dash line: `- key: value`.
            serde_json::Value::Object(m) if !m.is_empty() => {
                let mut inner = String::new();
                yaml_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(inner.trim_start());
            }
            other => yaml_child(other, indent + 2, out),
        }
    }
}

fn yaml_child(v: &serde_json::Value, indent: usize, out: &mut String) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_map(m, indent, out);
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_seq(a, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
}

fn yaml_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => yaml_string(s),
        serde_json::Value::Array(_) => "[]".into(),
        serde_json::Value::Object(_) => "{}".into(),
    }
}

fn yaml_string(s: &str) -> String {
    const AMBIGUOUS: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    let safe_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_./@+-:".contains(&b));
    let starts_ok = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'/');
    let ambiguous = AMBIGUOUS.contains(&s.to_ascii_lowercase().as_str());
    if safe_chars && starts_ok && !ambiguous && !s.ends_with(':') && !s.contains("::") {
        s.to_string()
    } else {
        // JSON string syntax is valid YAML double-quoted syntax.
        serde_json::Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn project() -> Project {
        let text = "services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    profiles: [front]\n  db:\n    build: ./db\n    volumes: [data:/var/lib/db]\nvolumes:\n  data: {}\n";
        let opts = LoadOptions {
            working_dir: "/srv/shop".into(),
            files: vec!["-".into()],
            stdin: Some(text.into()),
            interpolate: true,
            profiles: vec!["front".into()],
            ..LoadOptions::default()
        };
        project::load(&opts).expect("the test project loads")
    }

    fn render_with(argv: &[&str]) -> String {
        let mut full = vec!["config"];
        full.extend_from_slice(argv);
        render(&project(), &Cli::parse_from(full).args).expect("renders")
    }

    #[test]
    fn lists() {
        assert_eq!(render_with(&["--services"]), "db\nweb\n");
        assert_eq!(render_with(&["--volumes"]), "data\n");
        assert_eq!(render_with(&["--networks"]), "default\n");
        assert_eq!(render_with(&["--profiles"]), "front\n");
        assert_eq!(render_with(&["--images"]), "shop-db\nnginx\n");
    }

    #[test]
    fn yaml_and_json_are_the_same_model() {
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render_with(&[])).expect("yaml parses");
        let json: serde_json::Value =
            serde_json::from_str(&render_with(&["--format", "json"])).expect("json parses");
        assert_eq!(yaml, json);
        assert_eq!(json["services"]["web"]["ports"][0]["published"], "8080");
        assert_eq!(json["services"]["db"]["build"]["context"], "/srv/shop/db");
        assert_eq!(json["volumes"]["data"]["name"], "shop_data");
    }

    #[test]
    fn yaml_output_reads_back_as_the_same_model() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/load");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir)
            .expect("golden cases exist")
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(entry.path().join("expected.json")) else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&text).expect("golden json");
            let printed = yaml(&value);
            let back: serde_json::Value =
                serde_yaml_ng::from_str(&printed).expect("our yaml parses");
            assert_eq!(back, value, "{}:\n{printed}", entry.path().display());
            checked += 1;
        }
        assert!(checked > 50);
        let restart = yaml(
            &serde_json::json!({"restart": "no", "a": "on", "v": "1.5", "o": "0755", "e": ""}),
        );
        assert_eq!(
            restart,
            "a: \"on\"\ne: \"\"\no: \"0755\"\nrestart: \"no\"\nv: \"1.5\"\n"
        );
    }

    #[test]
    fn hashes_and_service_selection() {
        let all = render_with(&["--hash", "*"]);
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("db ") && lines[0].len() == 3 + 64);
        assert_eq!(render_with(&["--hash", "web"]), format!("{}\n", lines[1]));
        let only_web: serde_json::Value =
            serde_json::from_str(&render_with(&["--format", "json", "web"])).expect("json");
        assert_eq!(only_web["services"].as_object().map(|m| m.len()), Some(1));
        let err = render(
            &project(),
            &Cli::parse_from(["config", "--hash", "nope"]).args,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no such service: nope");
    }
}
