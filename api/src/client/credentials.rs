//! The client's credentials, checked when it is built: the bearer token's header, and the
//! PEM of the CA certificates and of the client identity, with errors naming the file.

use std::path::PathBuf;

use reqwest::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ApiError;
use crate::service::Result;

/// Where a PEM document comes from: given in code, or a file read by [`ClientBuilder::build`](super::ClientBuilder::build).
#[derive(Clone)]
pub(super) enum PemSource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl PemSource {
    /// The bytes, and how to name their origin in an error.
    fn load(&self, field: &str, what: &str) -> Result<(Vec<u8>, String)> {
        match self {
            PemSource::Bytes(bytes) => Ok((bytes.clone(), format!("the {what} PEM given"))),
            PemSource::File(path) => match std::fs::read(path) {
                Ok(bytes) => Ok((bytes, path.display().to_string())),
                Err(e) => Err(ApiError::invalid(
                    field,
                    format!("cannot read {what} file {}: {e}", path.display()),
                )),
            },
        }
    }
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::Bytes(b) => write!(f, "<{} bytes of PEM>", b.len()),
            PemSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `Bearer <token>`, marked sensitive so that it is never logged.
pub(super) fn bearer_header(token: &str) -> Result<HeaderValue> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::invalid("token", "must not be empty"));
    }
    // The message never repeats the token: it is a secret.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "token",
            "must be printable ASCII without spaces (check for a stray character when copying it)",
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ApiError::invalid("token", "must be printable ASCII without spaces"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The CA certificates of one PEM source, each checked to be usable as a trust anchor.
pub(super) fn load_ca_certs(source: &PemSource) -> Result<Vec<reqwest::Certificate>> {
    let field = "ca_cert";
    let (pem, origin) = source.load(field, "CA")?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(field, format!("{origin} is not valid PEM: {e}")))?;
    if ders.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{origin} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"),
        ));
    }
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.into_iter().enumerate() {
        // The same check rustls makes when the client is built, but here it names the file.
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| {
                ApiError::invalid(
                    field,
                    format!(
                        "certificate #{} in {origin} is not a usable CA certificate: {e}",
                        i + 1
                    ),
                )
            })?;
        certs.push(reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
            ApiError::invalid(field, format!("certificate #{} in {origin}: {e}", i + 1))
        })?);
    }
    Ok(certs)
}

/// The client certificate chain and its key, checked to parse and to belong together.
pub(super) fn load_identity(cert: &PemSource, key: &PemSource) -> Result<reqwest::Identity> {
    let (cert_pem, cert_origin) = cert.load("client_cert", "client certificate")?;
    let (key_pem, key_origin) = key.load("client_key", "client key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            ApiError::invalid(
                "client_cert",
                format!("{cert_origin} is not valid PEM: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(ApiError::invalid(
            "client_cert",
            format!(
                "{cert_origin} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"
            ),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ApiError::invalid(
            "client_key",
            format!("{key_origin} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private_key, &provider).map_err(|e| {
        ApiError::invalid(
            "client_key",
            format!("{key_origin} is not the private key of the certificate in {cert_origin}: {e}"),
        )
    })?;
    // reqwest wants the chain and the key in one PEM document.
    let mut both = cert_pem;
    if !both.ends_with(b"\n") {
        both.push(b'\n');
    }
    both.extend_from_slice(&key_pem);
    reqwest::Identity::from_pem(&both).map_err(|e| {
        ApiError::invalid(
            "client_cert",
            format!("{cert_origin} with {key_origin}: {e}"),
        )
    })
}
