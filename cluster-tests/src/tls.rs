//! Certificates for secured test clusters: a CA made for the test, written to files the
//! nodes read (`tls.cert`, `tls.key`, `tls.ca`), and clients that trust it.

use std::path::{Path, PathBuf};

use leasehold_node::CertAuthority;

/// A CA for one test (or one test binary), with its certificate on disk.
pub struct TestCa {
    ca: CertAuthority,
    /// `ca.crt`: every node's `tls.ca`, every client's CA.
    pub cert_path: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/ca.crt`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let ca = CertAuthority::new(name).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(dir)?;
        let cert_path = dir.join("ca.crt");
        std::fs::write(&cert_path, ca.cert_pem())?;
        Ok(TestCa { ca, cert_path })
    }

    pub fn cert_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// A certificate and key for `localhost`/`127.0.0.1`, server and client use, written
    /// to `dir/{name}.crt` and `dir/{name}.key`.
    pub fn issue_files(&self, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.ca.issue(name, None).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(dir)?;
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert)?;
        std::fs::write(&key_path, key)?;
        Ok((cert_path, key_path))
    }

    /// A certificate and key (PEM) issued now, not written anywhere.
    pub fn issue_pem(&self, name: &str) -> anyhow::Result<(String, String)> {
        self.ca.issue(name, None).map_err(anyhow::Error::msg)
    }
}
