//! https without a reverse proxy: `tls_cert` and `tls_key` (PEM files, `serve --tls-cert
//! --tls-key`) served with rustls (ring), for a small team. Claude Code's `/login` needs https
//! off loopback, and pins the leaf certificate: every instance behind one name must serve the
//! same one.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The TLS acceptor of the configuration, or none when it serves plain http.
pub fn acceptor(config: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            bail!("tls_cert is set without tls_key (--tls-key): both are needed for https")
        }
        (None, Some(_)) => {
            bail!("tls_key is set without tls_cert (--tls-cert): both are needed for https")
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {cert}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the certificate {cert} is not PEM"))?;
    if chain.is_empty() {
        bail!("the certificate {cert} holds no certificate");
    }
    // The key's own errors would not name the file; its contents are never shown.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| anyhow::anyhow!("cannot read a PEM private key from {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("the key does not fit the certificate {cert}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}
