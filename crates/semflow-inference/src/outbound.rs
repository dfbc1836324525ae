//! Outbound HTTP(S) clients: every client semflow builds (remote inference endpoints, the
//! generator, the schema registry) trusts the system's roots plus those of `--ca-cert`.

use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Roots trusted by outbound HTTPS clients besides the system's.
static EXTRA_ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Trusts the CA certificates in the PEM file `path` (one or several) for every outbound
/// HTTPS client this process builds from now on. Set once, at start-up.
pub fn trust_ca_file(path: &Path) -> Result<()> {
    let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(path, e))?;
    if roots.is_empty() {
        return Err(ca_error(path, "no CERTIFICATE block"));
    }
    EXTRA_ROOTS
        .set(roots)
        .map_err(|_| ca_error(path, "given twice"))
}

/// A builder for outbound HTTP(S) clients that trusts the system's roots and `--ca-cert`'s.
pub fn http_client() -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    for root in EXTRA_ROOTS.get().into_iter().flatten() {
        builder = builder.add_root_certificate(root.clone());
    }
    builder
}

fn ca_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("--ca-cert {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_names_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("key.pem");
        std::fs::write(&bad, "not pem").unwrap();
        let err = trust_ca_file(&bad).unwrap_err().to_string();
        assert!(err.starts_with("--ca-cert"), "{err}");
    }
}
