//! The cluster's certificates, made fresh for each cluster: one CA that signs the API
//! server's serving certificate and every component's client certificate (the user is the
//! certificate's CN, its groups the O entries, as kube-apiserver's x509 authenticator reads
//! them), and the key that signs service-account tokens.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::ClusterError;

/// The files [`write`] made, all under the cluster's `pki/` directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): kubeconfigs trust it, the API server checks client
    /// certificates against it.
    pub ca_cert: PathBuf,
    /// The API server's serving certificate and key, for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// The service-account token signing key (ECDSA P-256, PKCS#8).
    pub service_account_key: PathBuf,
    /// Its public half (SubjectPublicKeyInfo PEM), which the API server verifies tokens with.
    pub service_account_pub: PathBuf,
}

/// A client certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> ClusterError {
    move |e| ClusterError::Pki {
        what,
        message: e.to_string(),
    }
}

/// The CA, kept in memory by the process that starts the cluster to sign client
/// certificates for the components.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    /// A new self-signed CA.
    pub fn new() -> Result<Self, ClusterError> {
        let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "grokcast e2e cluster CA");
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rcgen_err("CA"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<ClientCert, ClusterError> {
        let key = KeyPair::generate().map_err(rcgen_err("client key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("client"))?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &*self.issuer)
            .map_err(rcgen_err("client certificate"))?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn server(&self) -> Result<ClientCert, ClusterError> {
        let key = KeyPair::generate().map_err(rcgen_err("server key"))?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).map_err(rcgen_err("server"))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        // The in-cluster names, so a kubeconfig that says kubernetes.default.svc also works.
        for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
            if let Ok(n) = name.try_into() {
                params.subject_alt_names.push(SanType::DnsName(n));
            }
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &*self.issuer)
            .map_err(rcgen_err("server certificate"))?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate, the serving pair and a service-account key under `dir`.
    pub fn write(&self, dir: &Path) -> Result<Pki, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
        let write = |name: &str, text: &str| -> Result<PathBuf, ClusterError> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| ClusterError::io(&path, e))?;
            Ok(path)
        };
        let server = self.server()?;
        let sa = KeyPair::generate().map_err(rcgen_err("service-account key"))?;
        Ok(Pki {
            ca_cert: write("ca.crt", &self.cert_pem())?,
            server_cert: write("apiserver.crt", &server.cert_pem)?,
            server_key: write("apiserver.key", &server.key_pem)?,
            service_account_key: write("sa.key", &sa.serialize_pem())?,
            service_account_pub: write("sa.pub", &sa.public_key_pem())?,
        })
    }
}
