//! Certificates made for a test run (rcgen), and a real rustls client over a real socket.
//!
//! Every test that needs TLS makes its own [`Pki`] in its own directory: a CA, a server
//! certificate for `localhost` and 127.0.0.1 signed by it, a client certificate (common name
//! `alice`) signed by it, and a second CA with a client certificate of its own (`mallory`) that
//! the server must refuse. ECDSA P-256, as the benchmarks' certificates.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::DEADLINE;

/// The files of a test's certificates.
pub struct Pki {
    /// The CA that signed the server's and alice's certificates.
    pub ca: PathBuf,
    /// The server's certificate (for `localhost`, 127.0.0.1 and ::1) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate whose subject CN is `alice`, signed by [`Pki::ca`].
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, and a client certificate (CN `mallory`) it signed.
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// The CA's key, to issue more certificates ([`Pki::reissue`]).
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    common_name: &str,
    dir: &Path,
    stem: &str,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl Pki {
    /// Makes every certificate, in `dir` (which must exist).
    pub fn new(dir: &Path) -> Pki {
        let (issuer, ca_pem) = make_ca("oneloop test CA");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let (server_cert, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1", "::1"],
            "localhost",
            dir,
            "server",
        );
        let (client_cert, client_key) = leaf(&issuer, &[], "alice", dir, "client");
        let (other, other_pem) = make_ca("another CA");
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&other_ca, other_pem).unwrap();
        let (other_client_cert, other_client_key) = leaf(&other, &[], "mallory", dir, "mallory");
        Pki {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
            other_ca,
            other_client_cert,
            other_client_key,
            issuer,
        }
    }

    /// A fresh server certificate and key for `localhost`, signed by the same CA, with subject
    /// CN `common_name` (to tell a reloaded certificate from the first), written as
    /// `stem.pem`/`stem.key` in `dir`.
    pub fn reissue(&self, dir: &Path, common_name: &str, stem: &str) -> (PathBuf, PathBuf) {
        leaf(
            &self.issuer,
            &["localhost", "127.0.0.1", "::1"],
            common_name,
            dir,
            stem,
        )
    }

    /// A client certificate with subject CN `common_name`, signed by the CA.
    pub fn reissue_client(&self, dir: &Path, common_name: &str, stem: &str) -> (PathBuf, PathBuf) {
        leaf(&self.issuer, &[], common_name, dir, stem)
    }

    /// `oneloop serve SERVICES...` with this server certificate and key, plus `extra` options.
    pub fn serve(&self, services: &[&str], extra: &[&str]) -> super::Server {
        let mut args: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        args.extend(self.server_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::Server::start(&args)
    }

    /// The server's oneloop arguments: `--tls-cert` and `--tls-key`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.server_cert.display().to_string(),
            "--tls-key".into(),
            self.server_key.display().to_string(),
        ]
    }
}

/// A client configuration trusting `ca`, presenting `identity` (certificate, key) if given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(rustls::ALL_VERSIONS)
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A TLS client over a blocking TCP stream with the test deadline on every read and write.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` and starts a TLS session for `localhost` (the handshake completes on the
/// first read or write, or explicitly with [`handshake`]).
pub fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.set_write_timeout(Some(DEADLINE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(config.clone(), name).unwrap();
    rustls::StreamOwned::new(session, tcp)
}

/// Completes the handshake now: `Err` names why the server or the client refused it.
pub fn handshake(stream: &mut TlsStream) -> Result<(), std::io::Error> {
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(())
}

/// Writes `bytes` and flushes the TLS records out.
pub fn send(stream: &mut TlsStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    stream.flush().unwrap();
}

/// Reads until `count` plaintext bytes have arrived (or the deadline fails the test).
pub fn read_exact(stream: &mut TlsStream, count: usize) -> Vec<u8> {
    let mut got = vec![0; count];
    stream.read_exact(&mut got).unwrap();
    got
}

/// Reads plaintext until the server's close_notify (`Ok`), or until the connection ends
/// without one or fails (`Err`, with what had arrived).
pub fn read_to_close_notify(stream: &mut TlsStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buffer = [0; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Reads one `\n`-terminated line of plaintext (without its newline).
pub fn read_line(stream: &mut TlsStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            other => panic!(
                "line cut short after {:?}: {other:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8(line).unwrap()
}

/// The subject CN of the certificate the server presented in this session (to tell which
/// certificate a handshake got, e.g. after a reload).
pub fn server_common_name(stream: &TlsStream) -> String {
    let certs = stream.conn.peer_certificates().expect("a certificate");
    oneloop::net::tls::common_name(&certs[0]).expect("a common name")
}

/// A fresh directory for one test's certificates (and uploads), under the system's temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "oneloop-tls-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client configuration that speaks only `version` (to check TLS 1.2 and 1.3 apart).
pub fn client_config_for(
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
