//! docker/: the compose file and Dockerfiles reference only files that exist, every semflow
//! command line in them parses with semflow's CLI, and the ports they publish are the ones
//! those commands listen on; docker/README.md's steps run without Docker, on the compose
//! file's own commands and environment. (No Docker engine here; the linters run in `.ci/run`.)

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use clap::Parser;
use semflow::cli::{Cli, Command};

use crate::common::kafka::{bootstrap, create_topic, unique};
use crate::common::outage::free_addr;
use crate::common::{semflow_bin, wait_until};

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

/// docker/compose.yaml, parsed.
fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// A service's published ports as (host port, container port), from `[IP:]HOST:CONTAINER`.
fn published(svc: &serde_yaml::Value) -> Vec<(u16, u16)> {
    let port = |p: &str| p.parse::<u16>().unwrap();
    svc["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut parts = p.as_str().unwrap().rsplit(':');
            let container = port(parts.next().unwrap());
            (parts.next().map_or(container, port), container)
        })
        .collect()
}

#[test]
fn compose_references_real_files_commands_and_ports() {
    let compose = compose();
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
        for (_, container) in published(svc) {
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

/// `${NAME}`, `${NAME:-default}` and `${NAME:?message}` in a compose value, from `vars` (the
/// shell compose runs in); a `:?` variable that is not set fails, as compose does.
fn compose_value(value: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        let (name, fallback) = match (inner.split_once(":-"), inner.split_once(":?")) {
            (Some((n, d)), _) => (n, Some(d)),
            (None, Some((n, _))) => (n, None),
            (None, None) => (inner, Some("")),
        };
        match (vars.get(name), fallback) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("compose needs {name} set: {value}"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// What the containers reach, mapped to this machine: the broker for `kafka:9092`, a
/// directory for the `data` volume, free loopback ports for the published ones.
struct Host {
    data: PathBuf,
    /// Container port → ours, and the host port compose publishes it on → ours.
    container_ports: HashMap<u16, u16>,
    host_ports: HashMap<u16, u16>,
    /// Topic and group names of their own: the tests share one in-memory broker.
    topic: String,
    group: String,
}

impl Host {
    fn value(&self, key: &str, value: &str) -> String {
        match key {
            "SEMFLOW_TOPIC" => self.topic.clone(),
            "SEMFLOW_GROUP" => self.group.clone(),
            _ => value
                .replace("kafka:9092", &bootstrap())
                .replace("/data/", &format!("{}/", self.data.display())),
        }
    }

    /// A command-line argument: `0.0.0.0:PORT` (listening in the container) becomes the
    /// loopback port PORT is published on here.
    fn arg(&self, arg: &str) -> String {
        match arg
            .strip_prefix("0.0.0.0:")
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(port) => format!("127.0.0.1:{}", self.container_ports[&port]),
            None => arg.to_string(),
        }
    }

    /// A README command line as run on the host: the published ports replaced by ours.
    fn command_line(&self, line: &str) -> String {
        let mut line = line.to_string();
        for (published, ours) in &self.host_ports {
            for (from, to) in [
                (
                    format!("localhost:{published}"),
                    format!("127.0.0.1:{ours}"),
                ),
                (
                    format!("127.0.0.1:{published}"),
                    format!("127.0.0.1:{ours}"),
                ),
                (format!("-p {published}"), format!("-p {ours}")),
            ] {
                line = line.replace(&from, &to);
            }
            assert!(
                !names_number(&line, *published),
                "a published port left unmapped in {line}"
            );
        }
        line
    }
}

/// Whether `text` holds `n` as a number of its own (not inside a longer run of digits, such
/// as the free port that replaced it).
fn names_number(text: &str, n: u16) -> bool {
    let n = n.to_string();
    text.match_indices(&n).any(|(at, _)| {
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        !digit(text[..at].chars().next_back()) && !digit(text[at + n.len()..].chars().next())
    })
}

#[test]
fn a_port_is_found_only_as_a_number_of_its_own() {
    assert!(names_number("curl -s localhost:8080/v1/sql", 8080));
    assert!(names_number("8080", 8080));
    assert!(!names_number("curl -s 127.0.0.1:48080/v1/sql", 8080));
    assert!(!names_number("port 80801", 8080));
}

/// The README's first `sh` block as commands: continued lines joined, multi-line quotes
/// kept whole, comment lines dropped.
fn readme_commands(markdown: &str) -> Vec<String> {
    let block = markdown
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docker/README.md has a sh block");
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.trim_end();
        if pending.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            None => pending.push_str(line),
        }
        if shlex::split(&pending).is_some() {
            commands.push(std::mem::take(&mut pending));
        } else {
            pending.push('\n');
        }
    }
    assert!(pending.is_empty(), "unfinished command: {pending}");
    commands
}

fn http_rows(http: u16, token: &str, sql: &str) -> Option<usize> {
    let answer: serde_json::Value = ureq::post(&format!("http://127.0.0.1:{http}/v1/sql"))
        .set("authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({ "sql": sql }))
        .ok()?
        .into_json()
        .ok()?;
    answer["row_count"].as_u64().map(|n| n as usize)
}

/// The compose stack as processes on this machine: the services compose would start, the
/// shell its commands run in, the logs.
struct Stack {
    compose: serde_yaml::Value,
    host: Host,
    /// The shell's variables (README's `export`s), which compose substitutes.
    vars: HashMap<String, String>,
    /// The services started by `up`; killed if the test fails.
    services: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.services {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Stack {
    fn new() -> Self {
        let compose = compose();
        let dir = tempfile::tempdir().unwrap();
        let (mut container_ports, mut host_ports) = (HashMap::new(), HashMap::new());
        for svc in ["indexer", "serve"] {
            for (host, container) in published(&compose["services"][svc]) {
                let ours = free_addr().port();
                host_ports.insert(host, ours);
                container_ports.insert(container, ours);
            }
        }
        let host = Host {
            data: dir.path().join("data"),
            container_ports,
            host_ports,
            topic: unique("docker-docs"),
            group: unique("docker-indexer"),
        };
        std::fs::create_dir_all(&host.data).unwrap();
        // `random:tiny` instead of the hub's models (docker/README.md: it needs no download).
        let vars = [
            ("SEMFLOW_EMBED_MODEL", "random:tiny"),
            ("SEMFLOW_RERANK_MODEL", "random:tiny"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            compose,
            host,
            vars,
            services: Vec::new(),
            dir,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Service `name` as a process: its environment as compose gives it (plus `extra_env`,
    /// as `run -e` adds), its command or `args` instead (as `run SERVICE ARGS` does); its
    /// stderr to the log `log`.
    fn service(
        &self,
        name: &str,
        log: &str,
        extra_env: &[(String, String)],
        args: Option<Vec<String>>,
    ) -> std::process::Command {
        let svc = &self.compose["services"][name];
        let mut command = std::process::Command::new(semflow_bin());
        command.current_dir(root());
        for (k, v) in svc["environment"].as_mapping().into_iter().flatten() {
            let k = k.as_str().unwrap();
            let v = compose_value(v.as_str().unwrap(), &self.vars);
            command.env(k, self.host.value(k, &v));
        }
        for (k, v) in extra_env {
            command.env(k, self.host.value(k, v));
        }
        let args: Vec<String> =
            args.unwrap_or_else(|| serde_yaml::from_value(svc["command"].clone()).unwrap());
        command.args(args.iter().map(|a| self.host.arg(a)));
        command.stderr(std::fs::File::create(self.log(log)).unwrap());
        command
    }

    fn http_port(&self) -> u16 {
        self.host.host_ports[&8080]
    }

    /// `up`: the topics service's topic, then the indexer and the server, until it answers.
    async fn up(&mut self) {
        let entrypoint: Vec<String> =
            serde_yaml::from_value(self.compose["services"]["topics"]["entrypoint"].clone())
                .unwrap();
        let partitions = entrypoint
            .iter()
            .position(|a| a == "--partitions")
            .and_then(|i| entrypoint[i + 1].parse().ok())
            .expect("the topics service names --partitions");
        create_topic(&self.host.topic, partitions).await;
        for name in ["indexer", "serve"] {
            let child = self.service(name, name, &[], None).spawn().unwrap();
            self.services.push((name.to_string(), child));
        }
        let health = format!("http://127.0.0.1:{}/health", self.http_port());
        wait_until("serve to answer /health", Duration::from_secs(120), || {
            ureq::get(&health).call().is_ok()
        })
        .await;
    }

    /// `run [--rm] [--no-deps] [-e K=V …] SERVICE ARGS…`: one command on a service's
    /// environment; here the sample documents, so it then waits until they are indexed.
    async fn run(&self, words: &[&str]) {
        let mut env = Vec::new();
        let mut i = 0;
        while i < words.len() && words[i].starts_with('-') {
            if words[i] == "-e" {
                let (k, v) = words[i + 1].split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
                i += 1;
            }
            i += 1;
        }
        let args = words[i + 1..].iter().map(|a| a.to_string()).collect();
        let out = self
            .service(words[i], "run", &env, Some(args))
            .output()
            .unwrap();
        let why = std::fs::read_to_string(self.log("run")).unwrap_or_default();
        assert!(out.status.success(), "{words:?}: {why}");
        let token = &self.vars["SEMFLOW_API_TOKEN"];
        let http = self.http_port();
        wait_until(
            "the five documents indexed",
            Duration::from_secs(120),
            || http_rows(http, token, "SELECT id FROM idx") == Some(5),
        )
        .await;
    }

    /// `down`: every service stops cleanly on SIGTERM.
    fn down(&mut self) {
        for (name, mut child) in self.services.drain(..) {
            let status = crate::common::sigterm(&mut child);
            assert!(status.success(), "{name} stopped with {status}");
        }
    }

    /// A host command line (psql, curl) in the shell, against our ports; its stdout.
    fn shell(&self, line: &str) -> String {
        self.try_shell(line)
            .unwrap_or_else(|why| panic!("{line}: {why}"))
    }

    /// `shell`, its failure (stderr and stdout) as the error.
    fn try_shell(&self, line: &str) -> Result<String, String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(self.host.command_line(line))
            .envs(&self.vars)
            .current_dir(root())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The metrics step: the indexer publishes its lag once its first commit is reported to
    /// the group, which follows the rows becoming visible by up to a poll, so it is waited for.
    async fn metrics(&self, line: &str) -> String {
        let mut stdout = None;
        wait_until(
            "the indexer's lag published",
            Duration::from_secs(60),
            || {
                stdout = self.try_shell(line).ok();
                stdout.is_some()
            },
        )
        .await;
        stdout.unwrap_or_default()
    }
}

/// docker/README.md's steps without Docker: the compose file's `indexer` and `serve` services
/// run as processes with the commands and environment compose gives them (the `topics`
/// service's topic created on the test broker), then every command line of the README's
/// block runs — its `docker compose run` on the service's environment, psql and curl through
/// `sh` against the published ports. Only the GPU steps (vLLM) are skipped, by name; a new
/// line in the block fails this test until it is handled here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_steps_run_without_docker() {
    if !crate::common::psql_available() {
        return;
    }
    let mut stack = Stack::new();
    let mut ran = Vec::new();
    let markdown = std::fs::read_to_string(root().join("docker/README.md")).unwrap();
    for line in readme_commands(&markdown) {
        let words = shlex::split(&line).unwrap();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["export", assignments @ ..] => {
                for a in assignments {
                    let (k, v) = a.split_once('=').unwrap();
                    stack.vars.insert(k.into(), v.into());
                }
                continue;
            }
            ["docker", "compose", _, _, "--profile", "synth", ..] => {
                ran.push(format!("skipped (needs an NVIDIA GPU for vLLM): {line}"));
                continue;
            }
            ["docker", "compose", _, _, "cp", "synth:/data/pairs.parquet", ..] => {
                ran.push(format!("skipped (the synth service's output): {line}"));
                continue;
            }
            ["docker", "compose", _, _, "up", ..] => stack.up().await,
            ["docker", "compose", _, _, "run", rest @ ..] => stack.run(rest).await,
            ["docker", "compose", _, _, "down", ..] => stack.down(),
            ["docker", ..] => panic!("a docker/README.md step this test does not run: {line}"),
            _ if line.contains("/metrics") => check_output(&line, &stack.metrics(&line).await),
            _ => check_output(&line, &stack.shell(&line)),
        }
        ran.push(line);
    }
    eprintln!("docker/README.md steps:\n{}", ran.join("\n"));
    assert!(stack.services.is_empty(), "the block ends with `down`");
    assert!(ran.len() >= 8, "{ran:#?}");
}

/// What each README step must print.
fn check_output(line: &str, stdout: &str) {
    if line.contains("psql") {
        assert!(stdout.contains("(3 rows)"), "{line}: {stdout}");
    } else if line.contains("/v1/embeddings") {
        let asked: usize = line
            .split("\"dimensions\": ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .expect("the step asks for dimensions");
        let answer: serde_json::Value = serde_json::from_str(stdout).unwrap();
        let v = answer["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(v.len(), asked, "{stdout}");
    } else if line.contains("/v1/sql") {
        for id in ["rust", "kafka", "lance", "qwen", "pasta"] {
            assert!(stdout.contains(&format!("\"{id}\"")), "{id}: {stdout}");
        }
    } else if line.contains("/metrics") {
        assert!(stdout.contains("semflow_kafka_consumer_lag"), "{stdout}");
    } else {
        panic!("no check for the output of {line}");
    }
}
