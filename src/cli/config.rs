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
        Format::Yaml => serde_yaml_ng::to_string(&value).context("cannot print yaml")?,
    })
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
