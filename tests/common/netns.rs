//! A network namespace of the test's own: a host of its own behind a veth pair, so a test can
//! cut one process off from the network (the link dropped, packets lost, no connection reset)
//! rather than stop it by a signal. Traffic goes only between the namespace and this machine.
//! Needs root (`ip netns`); a test skips without it unless `SEMFLOW_TEST_NETNS=required`.

use std::net::Ipv4Addr;
use std::process::Command;

use rand::Rng;

/// A namespace with one veth link to the host: `host_ip` on the host's end, `ns_ip` inside.
pub struct Namespace {
    pub name: String,
    host_link: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

/// Runs `ip ARGS`; the error names the command.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespace {
    /// A new namespace linked to the host on a random /30 of 10.213.0.0/16. `None`, with a
    /// message, where namespaces cannot be made (not root, no `ip`) unless required.
    pub fn create() -> Option<Namespace> {
        let required = std::env::var("SEMFLOW_TEST_NETNS").as_deref() == Ok("required");
        let mut rng = rand::rng();
        let tag = format!(
            "{}{:03}",
            std::process::id() % 100_000,
            rng.random_range(0..1000)
        );
        let base = 4 * rng.random_range(1..16_384u32);
        let [_, _, c, d] = base.to_be_bytes();
        let ns = Namespace {
            name: format!("sf{tag}"),
            host_link: format!("sfh{tag}"),
            host_ip: Ipv4Addr::new(10, 213, c, d + 1),
            ns_ip: Ipv4Addr::new(10, 213, c, d + 2),
        };
        match ns.set_up() {
            Ok(()) => Some(ns),
            Err(e) if !required => {
                eprintln!("no network namespace ({e}): skipped");
                None
            }
            Err(e) => panic!("network namespace: {e}"),
        }
    }

    fn set_up(&self) -> Result<(), String> {
        let inner = format!("sfn{}", &self.host_link[3..]);
        let host = format!("{}/30", self.host_ip);
        let ns_addr = format!("{}/30", self.ns_ip);
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &self.name])?;
        ip(&["addr", "add", &host, "dev", &self.host_link])?;
        ip(&["link", "set", &self.host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &ns_addr, "dev", &inner])?;
        inside(&["link", "set", &inner, "up"])?;
        inside(&["link", "set", "lo", "up"])
    }

    /// `program` to be run inside the namespace (`ip netns exec`, which keeps the environment
    /// and execs the program as the same process, so signals reach it directly).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A free address on the host's end of the link (bound once and released), where the
    /// namespace can reach a service of the test's.
    pub fn free_host_addr(&self) -> std::net::SocketAddr {
        super::outage::free_addr_at(self.host_ip.into())
    }

    /// Drops the link: the namespace's packets are lost until [`restore`](Self::restore).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).unwrap();
    }

    pub fn restore(&self) {
        ip(&["link", "set", &self.host_link, "up"]).unwrap();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the host's.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}
