//! docker/: the compose file and Dockerfiles reference only files that exist, every semflow
//! command line in them parses with semflow's CLI, and the ports they publish are the ones
//! those commands listen on. (No Docker engine here; the linters run in `.ci/run`.)

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use semflow::cli::{Cli, Command};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn repo_paths(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| {
            ["pipelines/", "docker/", "examples/"]
                .iter()
                .any(|p| a.starts_with(p))
        })
        .cloned()
        .collect()
}

/// Container ports a semflow command listens on (flag values, else the defaults).
fn listening(cli: &Cli) -> BTreeSet<u16> {
    let port = |addr: &str| addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    match &cli.command {
        Command::Serve(a) => {
            let mut p = BTreeSet::from([port(&a.http_addr)]);
            if a.pg_addr != "off" {
                p.insert(port(&a.pg_addr));
            }
            p
        }
        Command::Run(a) if a.metrics_addr != "off" => BTreeSet::from([port(&a.metrics_addr)]),
        _ => BTreeSet::new(),
    }
}

#[test]
fn compose_references_real_files_commands_and_ports() {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let mut semflow_services = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(dockerfile) = svc["build"]["dockerfile"].as_str() {
            assert!(root().join(dockerfile).is_file(), "{name}: {dockerfile}");
        }
        if svc["build"]["dockerfile"].as_str() != Some("docker/Dockerfile") {
            continue;
        }
        semflow_services += 1;
        let command: Vec<String> = serde_yaml::from_value(svc["command"].clone())
            .unwrap_or_else(|e| panic!("{name}: command must be a list: {e}"));
        let argv = std::iter::once("semflow".to_string()).chain(command.iter().cloned());
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {e}"));
        for p in repo_paths(&command) {
            assert!(
                root().join(&p).exists(),
                "{name} names {p}, which is not in the repo"
            );
        }
        let listens = listening(&cli);
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let spec = p.as_str().unwrap();
            let container: u16 = spec.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                listens.contains(&container),
                "{name} publishes {container}, but its command listens on {listens:?}"
            );
        }
        // Binding beyond loopback inside the container needs the secrets.
        if let Command::Serve(_) = cli.command {
            let env = &svc["environment"];
            assert!(env["SEMFLOW_API_TOKEN"].is_string() && env["SEMFLOW_PG_PASSWORD"].is_string());
        }
    }
    assert_eq!(semflow_services, 3, "indexer, serve, synth");
    for svc in ["kafka", "topics", "indexer", "serve"] {
        assert!(services.contains_key(svc), "{svc}");
    }
    // GPU services use the compose device-reservation form.
    let devices = &compose["services"]["llm"]["deploy"]["resources"]["reservations"]["devices"];
    assert_eq!(devices[0]["driver"].as_str(), Some("nvidia"));
}

#[test]
fn dockerfiles_copy_only_what_exists() {
    for file in ["docker/Dockerfile", "docker/Dockerfile.cuda"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let mut copies = 0;
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("COPY ") else {
                continue;
            };
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                if *src != "." {
                    assert!(root().join(src).exists(), "{file}: COPY {src}");
                }
                copies += 1;
            }
        }
        assert!(copies >= 4, "{file}");
        assert!(text.contains("USER semflow") && text.contains("ENTRYPOINT [\"semflow\"]"));
    }
}
