//! TLS, both ways: the certificate the HTTP listener presents
//! (`serve --tls-cert/--tls-key`, reread on SIGHUP), and the roots
//! outgoing https calls (webhooks, other instances) trust: the system's,
//! plus any `--tls-ca-file` gives. rustls with the ring provider does the
//! cryptography; nothing here is hand-made beyond reading the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The listener's certificate and key, replaceable while it runs.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    keys: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
}

/// What new handshakes present: the last certificate and key read whole.
struct Current(parking_lot::RwLock<Arc<CertifiedKey>>);

// By hand: a private key has no business in a debug line.
impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Current(..)")
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for Current {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// rustls on ring. rustls now steers to aws-lc-rs for its post-quantum
/// key exchange, but that is a large C build on every cold build (cmake,
/// minutes on two cores); ring's classical X25519 / P-256 suites are what
/// clients negotiate today, and the choice can be revisited in one place.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first: as safe for this use and cheaper per byte than
    // AES-256 on bulk ingest (the server's order decides, see `load`).
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

impl ServerTls {
    /// Reads a PEM certificate chain and its private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerTls>> {
        ServerTls::with_client_ca(cert, key, None)
    }

    /// As [`ServerTls::load`], and with `client_ca` (PEM) clients may
    /// also show a certificate it signed (`--tls-client-ca`): its subject's
    /// common name is the token name they act as ([`client_name`]).
    /// Clients without one still connect, and use bearer tokens.
    pub fn with_client_ca(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<Arc<ServerTls>> {
        let keys = Arc::new(Current(parking_lot::RwLock::new(read_pair(cert, key)?)));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for root in certificates(path, "--tls-client-ca")? {
                    roots
                        .add(root)
                        .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", path.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(keys.clone());
        config.ignore_client_order = true;
        // HTTP/2 when the client offers it, else HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            keys,
            config: Arc::new(config),
        }))
    }

    /// Rereads both files; on any error the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pair = read_pair(&self.cert, &self.key)?;
        *self.keys.0.write() = pair;
        Ok(())
    }

    /// The rustls configuration for new connections.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The certificate file, for log lines.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// A certificate chain and the key that goes with its first certificate.
fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = certificates(cert, "--tls-cert")?;
    let key_pem = read_file(key, "--tls-key")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {} holds no private key in PEM (BEGIN PRIVATE KEY, RSA or EC \
             PRIVATE KEY): {e}",
            key.display()
        )
    })?;
    let pair = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {} does not go with --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, flag)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: not PEM certificates: {e}", path.display()))?;
    if chain.is_empty() {
        bail!(
            "{flag} {} holds no certificate (a PEM block BEGIN CERTIFICATE)",
            path.display()
        );
    }
    Ok(chain)
}

/// The token name a verified client certificate stands for: the common
/// name of its subject. `None` if it has none (or it cannot be read).
pub fn client_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// The extra roots outgoing https calls trust besides the system's.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    roots: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// The certificates of a PEM file (`--tls-ca-file`).
    pub fn load(path: &Path) -> anyhow::Result<Trust> {
        Ok(Trust {
            roots: certificates(path, "--tls-ca-file")?,
        })
    }

    /// An HTTP client builder that trusts the system's roots and these.
    pub fn client(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder();
        for root in &self.roots {
            match reqwest::Certificate::from_der(root) {
                Ok(root) => builder = builder.add_root_certificate(root),
                Err(error) => tracing::warn!(%error, "a --tls-ca-file certificate is not usable"),
            }
        }
        builder
    }
}
