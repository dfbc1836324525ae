//! Who may reach a front end: the rules every `semflow serve` listener applies the same way.
//! Loopback is trusted; any other address needs client authentication and TLS unless the
//! operator opts out by name (`--insecure-no-auth`, `--insecure-no-tls`).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::admission::Admission;
use crate::error::{Error, Result};
use crate::tls::ServerTls;

/// How HTTP and Flight SQL clients are given a secret (named in exposure errors).
pub const HOW_TO_SET_A_TOKEN: &str = "set an API token (--api-token or SEMFLOW_API_TOKEN)";

/// What every listener is configured with: where it listens, what clients must present,
/// its TLS and the admission budget all listeners share.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    /// The secret clients present: the bearer token (HTTP, Flight SQL) or the password
    /// (Postgres). `None`: anyone who can connect.
    pub secret: Option<String>,
    /// Allow a non-loopback address without a secret.
    pub insecure_no_auth: bool,
    pub tls: Option<ServerTls>,
    /// Allow a non-loopback address without TLS.
    pub insecure_no_tls: bool,
    /// Requests running at once and waiting, shared with the other listeners.
    pub admission: Admission,
}

impl Default for Listener {
    /// A free port on loopback, no secret, no TLS.
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: None,
            insecure_no_auth: false,
            tls: None,
            insecure_no_tls: false,
            admission: Admission::default(),
        }
    }
}

impl Listener {
    /// Refuses to expose an unauthenticated or unencrypted listener beyond this machine.
    /// `flag` set the address and `how_to_authenticate` says how to set the secret (both
    /// named in the error).
    pub fn check_exposure(&self, flag: &str, how_to_authenticate: &str) -> Result<()> {
        if self.addr.ip().is_loopback() {
            return Ok(());
        }
        if self.secret.is_none() && !self.insecure_no_auth {
            return Err(Error::InvalidArgument(format!(
                "{flag} {} is reachable from other machines: {how_to_authenticate} or pass --insecure-no-auth",
                self.addr
            )));
        }
        if self.tls.is_none() && !self.insecure_no_tls {
            return Err(Error::InvalidArgument(format!(
                "{flag} {} would carry credentials and data in clear text beyond this machine; pass --tls-cert and --tls-key (or --insecure-no-tls behind a TLS-terminating proxy)",
                self.addr
            )));
        }
        Ok(())
    }

    /// Binds the address; returns the socket and the address actually bound (port 0 picks a
    /// free one).
    pub async fn bind(&self) -> Result<(TcpListener, SocketAddr)> {
        let socket = TcpListener::bind(self.addr)
            .await
            .map_err(|e| Error::io(self.addr.to_string(), e))?;
        let bound = socket
            .local_addr()
            .map_err(|e| Error::io(self.addr.to_string(), e))?;
        Ok((socket, bound))
    }
}

/// Equal-length inputs take the same time whatever their contents (token checks).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(l: &Listener) -> Result<()> {
        l.check_exposure("--x-addr", "set a token (--x-token)")
    }

    #[test]
    fn loopback_is_trusted_other_addresses_need_auth_and_tls() {
        let on = |addr: &str| Listener {
            addr: addr.parse().unwrap(),
            ..Listener::default()
        };
        assert!(check(&on("127.0.0.1:1")).is_ok());
        assert!(check(&on("[::1]:1")).is_ok());
        let open = on("0.0.0.0:1");
        let err = check(&open).unwrap_err().to_string();
        assert!(err.contains("--x-addr 0.0.0.0:1"), "{err}");
        assert!(err.contains("--x-token") && err.contains("--insecure-no-auth"));
        // A secret alone is not enough: it would travel in clear text.
        let secret = Listener {
            secret: Some("s".into()),
            ..open.clone()
        };
        let err = check(&secret).unwrap_err().to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        assert!(check(&Listener {
            insecure_no_tls: true,
            ..secret
        })
        .is_ok());
        assert!(check(&Listener {
            insecure_no_auth: true,
            insecure_no_tls: true,
            ..open
        })
        .is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
