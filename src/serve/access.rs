//! Who may reach a front end: the rules every `semflow serve` listener applies the same way.
//! Loopback is trusted; any other address needs client authentication and TLS unless the
//! operator opts out by name (`--insecure-no-auth`, `--insecure-no-tls`).

use std::net::SocketAddr;

use crate::error::{Error, Result};

/// A listener's address and what protects it, as the exposure check needs them.
#[derive(Debug, Clone, Copy)]
pub struct Exposure<'a> {
    /// The flag that set the address, named in the error.
    pub flag: &'a str,
    pub addr: SocketAddr,
    /// Whether clients must prove who they are…
    pub authenticated: bool,
    /// …and how the operator turns that on (named in the error).
    pub how_to_authenticate: &'a str,
    pub insecure_no_auth: bool,
    pub encrypted: bool,
    pub insecure_no_tls: bool,
}

/// Refuses to expose an unauthenticated or unencrypted listener beyond this machine.
pub fn check_exposure(e: Exposure<'_>) -> Result<()> {
    if e.addr.ip().is_loopback() {
        return Ok(());
    }
    if !e.authenticated && !e.insecure_no_auth {
        return Err(Error::InvalidArgument(format!(
            "{} {} is reachable from other machines: {} or pass --insecure-no-auth",
            e.flag, e.addr, e.how_to_authenticate
        )));
    }
    if !e.encrypted && !e.insecure_no_tls {
        return Err(Error::InvalidArgument(format!(
            "{} {} would carry credentials and data in clear text beyond this machine; pass --tls-cert and --tls-key (or --insecure-no-tls behind a TLS-terminating proxy)",
            e.flag, e.addr
        )));
    }
    Ok(())
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

    fn exposure(addr: &str) -> Exposure<'static> {
        Exposure {
            flag: "--x-addr",
            addr: addr.parse().unwrap(),
            authenticated: false,
            how_to_authenticate: "set a token (--x-token)",
            insecure_no_auth: false,
            encrypted: false,
            insecure_no_tls: false,
        }
    }

    #[test]
    fn loopback_is_trusted_other_addresses_need_auth_and_tls() {
        assert!(check_exposure(exposure("127.0.0.1:1")).is_ok());
        assert!(check_exposure(exposure("[::1]:1")).is_ok());
        let open = exposure("0.0.0.0:1");
        let err = check_exposure(open).unwrap_err().to_string();
        assert!(err.contains("--x-addr 0.0.0.0:1"), "{err}");
        assert!(err.contains("--x-token") && err.contains("--insecure-no-auth"));
        // A secret alone is not enough: it would travel in clear text.
        let secret = Exposure {
            authenticated: true,
            ..open
        };
        let err = check_exposure(secret).unwrap_err().to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        assert!(check_exposure(Exposure {
            encrypted: true,
            ..secret
        })
        .is_ok());
        assert!(check_exposure(Exposure {
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
