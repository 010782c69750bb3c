//! `wss://`: the Users config's `ssl`, `sslKey`, `sslCert`, `sslRoot` and `sslIntermediate`,
//! served with rustls.
//!
//! The chain sent to clients is the certificate, then the intermediate, then the root, as the
//! Users server assembled it. Keys must be unencrypted PEM (PKCS#8, PKCS#1 or SEC1): rustls
//! takes no passphrase, so an encrypted key is refused with a line that says how to decrypt it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate files of the Users config (`sslKey`, `sslCert`, `sslRoot`,
/// `sslIntermediate`). [`crate::config`] makes this from its keys; this module knows no config.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub key: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub root: Option<&'a Path>,
    pub intermediate: Option<&'a Path>,
}

/// A certificate or key that cannot be used: the config key it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: String) -> TlsError {
    TlsError { key, message }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(
                key,
                format!("{}: cannot read certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The acceptor for `files`: the certificate, then the intermediate, then the root as the
/// chain, and the key.
pub fn acceptor(files: Files<'_>) -> Result<TlsAcceptor, TlsError> {
    let (Some(key_path), Some(cert_path)) = (files.key, files.cert) else {
        return Err(invalid(
            "sslKey",
            "sslKey and sslCert are required when ssl or broker.ops.tls is true".into(),
        ));
    };
    let mut chain = certs("sslCert", cert_path)?;
    if let Some(p) = files.intermediate {
        chain.extend(certs("sslIntermediate", p)?);
    }
    if let Some(p) = files.root {
        chain.extend(certs("sslRoot", p)?);
    }
    let text = std::fs::read_to_string(key_path).map_err(|e| {
        invalid(
            "sslKey",
            format!("{}: cannot read: {e}", key_path.display()),
        )
    })?;
    if text.contains("ENCRYPTED") {
        return Err(invalid(
            "sslKey",
            format!(
                "{}: the key is encrypted (passphrase-protected), which rustls cannot use; decrypt it with `openssl pkey -in {0} -out key.pem`",
                key_path.display()
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        invalid(
            "sslKey",
            format!("{}: no usable PEM private key: {e}", key_path.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("ssl", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            invalid(
                "sslKey",
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
