//! TLS for the driver (rustls): the server's certificate checked against the
//! given PEM file (or not at all with `ssl_verify=False`), and an optional
//! client certificate for mutual TLS.

use super::options::CassandraOptions;
use crate::error::{Result, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

fn read_pem_certs(path: &PathBuf) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            StoreError::Tls(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Tls(format!(
            "no PEM certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Accepts any server certificate: only for `ssl_verify=False`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn tls_config(o: &CassandraOptions) -> Result<Arc<rustls::ClientConfig>> {
    // An explicit provider: the process default is ambiguous when several are compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?;
    let builder = if o.ssl_verify {
        let mut roots = rustls::RootCertStore::empty();
        let path = o.ssl_certificate.as_ref().ok_or_else(|| {
            StoreError::Tls(
                "use_ssl needs ssl_certificate (the server's CA or certificate, PEM) to verify the server; \
                 ssl_verify=False skips verification (insecure)"
                    .into(),
            )
        })?;
        for cert in read_pem_certs(path)? {
            roots.add(cert).map_err(|e| {
                StoreError::Tls(format!("bad certificate in {}: {e}", path.display()))
            })?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match (&o.ssl_own_certificate, &o.ssl_own_key) {
        (Some(cert), Some(key)) => {
            if o.ssl_own_key_pass.is_some() {
                return Err(StoreError::Tls(format!(
                    "encrypted client keys are not supported: decrypt {} (e.g. `openssl pkey -in KEY -out KEY.plain`)",
                    key.display()
                )));
            }
            use rustls_pki_types::pem::PemObject;
            let key_der = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
                StoreError::Tls(format!("cannot read private key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(read_pem_certs(cert)?, key_der)
                .map_err(|e| {
                    StoreError::Tls(format!("client certificate {}: {e}", cert.display()))
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(StoreError::Tls(
                "ssl_own_certificate and ssl_own_key go together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}
