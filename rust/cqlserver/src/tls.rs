//! TLS via rustls with the ring provider.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::error::ServerError;

pub fn acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let tls_err = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&e))?;
    if certs.is_empty() {
        return Err(ServerError::Tls("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
