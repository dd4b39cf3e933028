//! TLS set-up: the server's certificate, key and client CA as a rustls configuration, the
//! clients' trust and identity, and the name a client certificate gives its holder.
//!
//! Everything here runs *before* a connection exists, or off the loop: reading PEM files is disk
//! I/O, so the reactor asks for it at start and, at `SIGHUP`, on a helper thread (see
//! `reactor::tls`). The TLS sessions themselves are rustls's `ServerConnection` and
//! `ClientConnection`, which are sans-I/O: ciphertext in, plaintext out, driven by whoever owns
//! the socket.
//!
//! The crypto provider is aws-lc-rs (rustls's default; why, in Cargo.toml): every configuration
//! here is built on [`provider`], so there is one place that names it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How long a TLS handshake may take before the connection is closed (the contract's 10 s, or
/// `--idle-timeout` if that is shorter).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The one crypto provider every configuration here uses: aws-lc-rs's, with rustls's defaults
/// (TLS 1.3 and 1.2 suites, X25519MLKEM768 preferred, then X25519 and the NIST curves).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS file that cannot be used: which one and why, as the one line `serve` prints (exit 1) or
/// logs at a failed reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for TlsFileError {}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsFileError {
    TlsFileError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate in a PEM file; none at all is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    // Read first, so an unreadable file is reported as the OS says it, not as "no certificate".
    let pem = std::fs::read(path).map_err(|e| file_error(path, crate::sys::os_reason(&e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads the one private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, crate::sys::os_reason(&e)))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error(path, format!("holds no usable PEM private key ({e})")))
}

/// A trust store of every certificate in a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(roots)
}

/// `serve`'s `--tls-cert`, `--tls-key` and `--tls-client-ca`: what every `tls:` service
/// presents and whom it accepts. Read whole at start and again at each `SIGHUP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
    /// If set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads the three files and builds the configuration new handshakes use: TLS 1.2 and 1.3,
    /// the client certificate required if a client CA is given. Either the whole set is good or
    /// the error names the first bad file: a new certificate is never paired with an old key.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsFileError> {
        let certs = read_certificates(&self.cert)?;
        let key = read_private_key(&self.key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| file_error(&self.cert, e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(read_roots(path)?),
                    provider,
                )
                .build()
                .map_err(|e| file_error(path, format!("not a usable client CA ({e})")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            file_error(
                &self.key,
                format!(
                    "does not go with the certificate in {} ({e})",
                    self.cert.display()
                ),
            )
        })?;
        // The server never sends early data nor accepts it: every request is a whole-handshake
        // request, so a replayed 0-RTT flight can never repeat an upload or a chat line.
        config.max_early_data_size = 0;
        Ok(Arc::new(config))
    }
}

/// What every `tls:` service of a server uses: the files, and the configuration made from
/// them that new handshakes take (replaced whole at a successful `SIGHUP` reload).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Where the certificate, key and client CA are read from (again at `SIGHUP`).
    pub files: ServerTlsFiles,
    /// The configuration made from them.
    pub config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads `files` ([`ServerTlsFiles::load`]).
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsFileError> {
        let config = files.load()?;
        Ok(ServerTls { files, config })
    }
}

/// The clients' `--tls-ca`, `--tls-server-name`, `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// Trust only the CAs in this PEM file (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// The name to check the server's certificate against (default: the address's HOST).
    pub server_name: Option<String>,
    /// A client certificate chain to present (PEM), with its key.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl ClientTlsOptions {
    /// Builds the client configuration: whom to trust and what to present.
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsFileError> {
        let roots = match &self.ca {
            Some(path) => read_roots(path)?,
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| file_error(Path::new("TLS"), e))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)
                .map_err(|e| {
                    file_error(
                        key,
                        format!(
                            "does not go with the certificate in {} ({e})",
                            cert.display()
                        ),
                    )
                })?,
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => return Err(file_error(cert, "--tls-cert needs --tls-key")),
            (None, Some(key)) => return Err(file_error(key, "--tls-key needs --tls-cert")),
        };
        // Every handshake is a full one: `oneloop load --reconnect` measures what a new client
        // costs, and a resumed session (TLS 1.3 PSK, a 1.2 session ID) would hide that; the
        // other clients make one connection each, which resumption cannot help.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// The name the server's certificate must carry: `--tls-server-name`, else `host` (a DNS
    /// name or an IP address).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned()).map_err(|_| {
            format!("{name:?} is not a DNS name or IP address to check a certificate against")
        })
    }
}

/// The system's trusted roots (`/etc/ssl/certs`, as OpenSSL finds them); certificates it cannot
/// parse are skipped, as curl and every rustls client do.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    log::debug!("trusting {added} system root certificates");
    roots
}

/// The subject common name of a DER certificate, if it has one that is UTF-8 text.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let common_name = x509_cert::der::oid::db::rfc4519::CN;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attribute| attribute.oid == common_name)
        .and_then(|attribute| {
            let value = &attribute.value;
            Utf8StringRef::try_from(value)
                .map(|text| text.as_str().to_owned())
                .or_else(|_| {
                    PrintableStringRef::try_from(value).map(|text| text.as_str().to_owned())
                })
                .ok()
        })
}
