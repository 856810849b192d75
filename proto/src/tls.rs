//! Mutual TLS between coordinators, and between clients and coordinators (rustls via tonic).
//!
//! Each node has a certificate and key signed by the cluster's CA; every node certificate must
//! carry the DNS name [`SERVER_NAME`] (addresses change, the name does not). Both sides verify the
//! other against the CA: a peer or client without a certificate from that CA is refused. Without
//! TLS files everything runs in plaintext, and the startup line says so.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every coordinator certificate carries (subjectAltName DNS), checked by clients.
pub const SERVER_NAME: &str = "rehearse";

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loaded TLS material.
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
    pub files: TlsFiles,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("read TLS {what} {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(format!("TLS {what} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let ca = Certificate::from_pem(read(&files.ca, "CA certificate")?);
        let identity =
            Identity::from_pem(read(&files.cert, "certificate")?, read(&files.key, "key")?);
        Ok(Tls {
            ca,
            identity,
            files: files.clone(),
        })
    }

    /// Server side: present our certificate, require a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// Client side: verify the server against the CA and [`SERVER_NAME`], present our certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(SERVER_NAME)
    }
}

/// `http://addr` or `https://addr`.
pub fn url(addr: &str, tls: Option<&Tls>) -> String {
    format!("{}://{addr}", if tls.is_some() { "https" } else { "http" })
}
