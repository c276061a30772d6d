//! Test-time PKI shaped like Talos's: an Ed25519 OS CA, an apid server certificate for
//! 127.0.0.1/localhost, and client certificates whose Organization carries the role
//! (`os:admin`, `os:reader`, ...). Keys are written as Talos writes them: PKCS#8 under the label
//! `ED25519 PRIVATE KEY`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};

/// A CA and the apid server certificate it signed.
pub struct Pki {
    ca_cert_pem: String,
    ca: Issuer<'static, KeyPair>,
    /// Server certificate (PEM).
    pub server_cert_pem: String,
    /// Server key (PEM, standard `PRIVATE KEY` label, as tonic reads it).
    pub server_key_pem: String,
}

/// A client identity: certificate and key, both PEM.
pub struct ClientIdentity {
    /// Certificate (PEM).
    pub crt_pem: String,
    /// Key (PEM under Talos's `ED25519 PRIVATE KEY` label).
    pub key_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Generates a self-signed Ed25519 CA; returns its PEM and its issuer.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&PKCS_ED25519).expect("generate CA key");
    let params = ca_params(name);
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

/// The PEM of a fresh CA that signed nothing of ours: for "wrong CA" tests.
pub fn foreign_ca_pem() -> String {
    new_ca("talos").0
}

/// Relabels a PKCS#8 PEM key the way Talos writes Ed25519 keys.
fn talos_key_label(pem: &str) -> String {
    pem.replace("BEGIN PRIVATE KEY", "BEGIN ED25519 PRIVATE KEY")
        .replace("END PRIVATE KEY", "END ED25519 PRIVATE KEY")
}

impl Pki {
    /// A new CA and a server certificate valid for 127.0.0.1, ::1 and localhost.
    pub fn new() -> Pki {
        let (ca_cert_pem, ca) = new_ca("talos");
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("generate server key");
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).expect("sign server cert");
        Pki {
            ca_cert_pem,
            ca,
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Issues a client certificate carrying `role` in its Organization, as Talos does.
    pub fn issue_client(&self, role: &str) -> ClientIdentity {
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("generate client key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, role);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).expect("sign client cert");
        ClientIdentity {
            crt_pem: cert.pem(),
            key_pem: talos_key_label(&key.serialize_pem()),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// What goes into a generated talosconfig.
#[derive(Debug, Clone)]
pub struct TalosconfigSpec {
    /// Context name (also `context:`).
    pub context: String,
    /// Endpoints.
    pub endpoints: Vec<String>,
    /// Nodes.
    pub nodes: Vec<String>,
    /// CA PEM to trust (normally the stand-in's).
    pub ca_pem: String,
    /// Client certificate PEM.
    pub crt_pem: String,
    /// Client key PEM.
    pub key_pem: String,
}

impl TalosconfigSpec {
    /// Renders the talosconfig YAML, fields base64-encoded as talosctl writes them.
    pub fn to_yaml(&self) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let list = |v: &[String]| {
            if v.is_empty() {
                " []".to_owned()
            } else {
                v.iter()
                    .map(|e| format!("\n      - {e}"))
                    .collect::<String>()
            }
        };
        format!(
            "context: {ctx}\ncontexts:\n  {ctx}:\n    endpoints:{eps}\n    nodes:{nodes}\n    ca: {ca}\n    crt: {crt}\n    key: {key}\n",
            ctx = self.context,
            eps = list(&self.endpoints),
            nodes = list(&self.nodes),
            ca = b64(&self.ca_pem),
            crt = b64(&self.crt_pem),
            key = b64(&self.key_pem),
        )
    }

    /// Writes `talosconfig` into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("talosconfig");
        std::fs::write(&path, self.to_yaml()).expect("write talosconfig");
        path
    }
}
