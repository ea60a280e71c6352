//! Self-signed test certificates: a CA and a server certificate it signs,
//! valid for 127.0.0.1..=127.0.0.8 and localhost.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::error::ServerError;

pub struct TestCerts {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn generate() -> Result<TestCerts, ServerError> {
    let e = |e: rcgen::Error| ServerError::Tls(e.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "crs4-cqlserver test CA");
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;

    let mut names = vec!["localhost".to_string()];
    names.extend((1..=8).map(|i| format!("127.0.0.{i}")));
    let mut params = CertificateParams::new(names).map_err(e)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
    Ok(TestCerts {
        ca_cert_pem: ca_cert.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
pub fn write_to(dir: &std::path::Path) -> Result<TestCerts, ServerError> {
    let c = generate()?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), &c.ca_cert_pem)?;
    std::fs::write(dir.join("server.pem"), &c.server_cert_pem)?;
    std::fs::write(dir.join("server.key"), &c.server_key_pem)?;
    Ok(c)
}
