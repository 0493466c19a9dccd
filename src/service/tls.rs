//! TLS through rustls (tonic's `tls-ring`): the server's PEM identity and the client's CA.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// The server's certificate chain and private key, both PEM. `Debug` never shows the key.
///
/// The PEM is parsed when the server starts ([`super::serve`] fails on a bad one).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl TlsIdentity {
    /// Reads the certificate and key files (`--tls-cert`, `--tls-key`).
    ///
    /// # Errors
    /// [`Error::Io`] if either cannot be read; [`Error::InvalidArgument`] naming the file if
    /// it holds no PEM block.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        Ok(TlsIdentity {
            cert_pem: read_pem(cert, "certificate")?,
            key_pem: read_pem(key, "private key")?,
        })
    }
}

/// Reads a PEM file, checking that it holds at least one PEM block.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::InvalidArgument`] naming the file if it
/// holds no `-----BEGIN` line.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let field = || format!("{what} file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| Error::io(field(), e))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::invalid(field(), "holds no PEM block (-----BEGIN …)"));
    }
    Ok(pem)
}
