//! TLS settings (rustls, ring provider) for `tls://` and `wss://`.

use crate::error::{Error, Result};
use mitto_proto::Status;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::sync::Arc;

/// TLS settings of a client: the roots it trusts.
#[derive(Clone)]
pub struct TlsClientConfig(pub(super) Arc<rustls::ClientConfig>);

impl TlsClientConfig {
    /// Trusts the CA certificates in `pem` (and nothing else).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::new(Status::BAD_REQUEST, format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::new(Status::BAD_REQUEST, format!("CA cert: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "CA PEM holds no certificate",
            ));
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClientConfig(Arc::new(cfg)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_rustls(cfg: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig(cfg)
    }
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClientConfig")
    }
}

/// TLS settings of a server: its certificate chain and key.
#[derive(Clone)]
pub struct TlsServerConfig(pub(super) Arc<rustls::ServerConfig>);

impl TlsServerConfig {
    /// From a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "certificate PEM holds no certificate",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("key PEM: {e}")))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("certificate/key: {e}")))?;
        Ok(TlsServerConfig(Arc::new(cfg)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_rustls(cfg: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig(cfg)
    }
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsServerConfig")
    }
}

/// ring, which builds without a C toolchain. Later rustls 0.23 releases (0.23.48) deprecate
/// its provider for its lack of post-quantum key exchange; the allowance keeps that warning out
/// of users' builds.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
