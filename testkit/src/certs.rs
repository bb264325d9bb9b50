//! Generated certificates for TLS tests (rcgen): a CA, server certificates
//! for 127.0.0.1/localhost, client certificates by common name, expired
//! ones, and a second, unrelated CA. Everything is written as PEM files
//! into a directory the test owns.
//!
//! ```text
//!  TestCa::new("ca") ──issue("server", [127.0.0.1, localhost])──> server.pem + server-key.pem
//!                    ──issue_client("alice")──────────────────> alice.pem + alice-key.pem
//!                    ──issue_expired("old")───────────────────> expired last year
//!  TestCa::new("other") ──issue_client("mallory")──> signed by a CA nobody trusts
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority for tests.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p
}

impl TestCa {
    /// A new self-signed CA named `name`, its certificate written to
    /// `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut p = params(&format!("{name} test CA"), &[]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(p, key).expect("self-signed CA");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, issuer.pem()).expect("write CA");
        Self {
            issuer,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    fn issue_with(&self, file: &str, mut p: CertificateParams) -> CertFiles {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign leaf");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A server (and peer) certificate for 127.0.0.1 and localhost, usable
    /// for both server and client authentication (etcd's peer certs are).
    pub fn issue_server(&self, file: &str) -> CertFiles {
        let mut p = params(file, &["127.0.0.1", "localhost"]);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_with(file, p)
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn issue_client(&self, cn: &str) -> CertFiles {
        let mut p = params(cn, &[]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with(cn, p)
    }

    /// A client certificate for `cn` that expired a year ago.
    pub fn issue_expired_client(&self, cn: &str) -> CertFiles {
        let mut p = params(cn, &[]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue_with(&format!("{cn}-expired"), p)
    }
}

/// `etcdctl` flags for TLS with `ca` and an optional client identity.
pub fn etcdctl_tls_args(ca: &Path, client: Option<&CertFiles>) -> Vec<String> {
    let mut v = vec![format!("--cacert={}", ca.display())];
    if let Some(c) = client {
        v.push(format!("--cert={}", c.cert.display()));
        v.push(format!("--key={}", c.key.display()));
    }
    v
}
