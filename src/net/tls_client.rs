//! The clients' side of `tls:` (`client`, `send`, `load`): their four options, and a rustls
//! [`ClientConnection`] driven over a non-blocking socket.
//!
//! rustls is sans-I/O: ciphertext goes in with `read_tls` and comes out with `write_tls`, and
//! plaintext is read from its `reader` and written to its `writer`. [`TlsClient`] does that
//! plumbing the way the loops here need it under edge triggering: a read fills the caller's
//! buffer as far as the socket allows, so a short read still means the socket is drained (the
//! rule the load generator's readers rely on), and every step flushes what rustls wants sent
//! (handshake messages, alerts, key updates) until the socket would block.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::tls::ClientTlsOptions;

/// `--tls-ca`, `--tls-server-name`, `--tls-cert` and `--tls-key`, shared by `client`, `send`
/// and `load` (used only with a `tls:` address).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTlsArgs {
    /// tls: trust only the CA certificates in this PEM file [default: the system's roots].
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// tls: the name the server's certificate must carry [default: HOST as given in the
    /// address].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// tls: present this client certificate chain (PEM, leaf first; with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// tls: the private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The options as the TLS set-up takes them.
    pub fn options(&self) -> ClientTlsOptions {
        ClientTlsOptions {
            ca: self.tls_ca.clone(),
            server_name: self.tls_server_name.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

/// A client's TLS configuration and the options it came from, made once per run: reading the
/// PEM files (and the system's roots) is disk I/O, and a bad file must be named before anything
/// connects.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Whom to trust and what to present.
    pub config: Arc<ClientConfig>,
    /// The options (for `--tls-server-name`).
    pub options: ClientTlsOptions,
}

impl ClientTls {
    /// Reads the files `options` name: the error is one line naming the file and what is wrong.
    pub fn new(options: &ClientTlsOptions) -> Result<ClientTls, String> {
        let config = options.config().map_err(|e| e.to_string())?;
        Ok(ClientTls {
            config,
            options: options.clone(),
        })
    }

    /// A new session with the server named `host` in the address (or `--tls-server-name`).
    pub fn session(&self, host: &str) -> io::Result<TlsClient> {
        let name: ServerName<'static> = self
            .options
            .server_name(host)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        Ok(TlsClient {
            conn,
            eof: false,
            closed: false,
        })
    }
}

/// One client TLS session over a non-blocking socket (which each call is given).
#[derive(Debug)]
pub struct TlsClient {
    conn: ClientConnection,
    /// The socket's end of stream has been read.
    eof: bool,
    /// The server's close_notify has been read.
    closed: bool,
}

/// A TLS failure as an I/O error whose text is one line naming the reason.
fn tls_error(during_handshake: bool, error: rustls::Error) -> io::Error {
    let what = if during_handshake {
        "the TLS handshake failed"
    } else {
        "the TLS session failed"
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {error}"))
}

impl TlsClient {
    /// The rustls session itself (for what this type does not wrap).
    pub fn connection(&self) -> &ClientConnection {
        &self.conn
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the end of the conversation has been read (the server's close_notify, or the
    /// end of the TCP stream): after a short [`read`](Self::read), the next read says which
    /// at once, and no readiness event may come to prompt it.
    pub fn end_seen(&self) -> bool {
        self.eof || self.closed
    }

    /// Whether rustls holds ciphertext the socket has not taken yet (wait for `WRITABLE`).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes what rustls wants sent until it is all out or the socket would block.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes in one read of ciphertext, processes it, and sends what that calls for. `Ok(false)`: the socket would block
    /// (or had nothing); `Ok(true)`: something was read (0 bytes at the end of stream, which
    /// rustls then reports through its reader).
    fn take_in(&mut self, socket: &mut (impl Read + Write)) -> io::Result<bool> {
        loop {
            match self.conn.read_tls(socket) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let handshaking = self.conn.is_handshaking();
        match self.conn.process_new_packets() {
            Ok(state) => self.closed |= state.peer_has_closed(),
            Err(e) => {
                // rustls has queued the alert that tells the server why: try to send it.
                let _ = self.flush(socket);
                return Err(tls_error(handshaking, e));
            }
        }
        self.flush(socket)?;
        Ok(true)
    }

    /// Moves the handshake on as far as the socket allows: `Ok(true)` once it is complete (the
    /// last flight may still be waiting in [`wants_write`](Self::wants_write)), `Ok(false)` if
    /// it waits for the server. A refusal (a certificate that does not verify, an alert from
    /// the server) is an error naming why.
    pub fn handshake(&mut self, socket: &mut (impl Read + Write)) -> io::Result<bool> {
        loop {
            self.flush(socket)?;
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if !self.take_in(socket)? {
                return Ok(false);
            }
            if self.conn.is_handshaking() && self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS handshake failed: the server closed the connection",
                ));
            }
        }
    }

    /// Reads plaintext into `buf`, as much as has arrived, taking in ciphertext until `buf` is
    /// full or the socket would block: a short read means the socket is drained. `Ok(0)` is the
    /// server's close_notify (its end of stream); an end of stream without one is an
    /// `UnexpectedEof` error (an abrupt end, as a reset); `WouldBlock` when nothing is there.
    pub fn read(&mut self, socket: &mut (impl Read + Write), buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled),
                Ok(count) => {
                    filled += count;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The end comes again at the next read.
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended without a TLS close_notify",
                    ))
                }
                Err(e) => return Err(e),
            }
            match self.take_in(socket) {
                Ok(true) => {}
                Ok(false) if filled > 0 => return Ok(filled),
                Ok(false) => return Err(io::ErrorKind::WouldBlock.into()),
                // What arrived first is the caller's; the error comes again at the next read.
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypts as much of `bytes` as rustls takes and sends what the socket takes. Before the
    /// handshake is complete the bytes wait in rustls. `WouldBlock` if rustls has no room until
    /// the socket takes what it holds.
    pub fn write(&mut self, socket: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut taken = self.conn.writer().write(bytes)?;
        if taken == 0 {
            self.flush(socket)?;
            taken = self.conn.writer().write(bytes)?;
            if taken == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        self.flush(socket)?;
        Ok(taken)
    }

    /// Queues the close_notify (this side's end of stream) and sends what the socket takes.
    pub fn close_notify(&mut self, socket: &mut impl Write) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush(socket)
    }
}

/// A TLS session over a blocking TCP stream (`send`'s upload): rustls's own blocking adapter.
pub type BlockingTls = rustls::StreamOwned<ClientConnection, std::net::TcpStream>;

impl ClientTls {
    /// Starts a session with `host` over the connected blocking `tcp` and completes the
    /// handshake (within the socket's timeouts: one running out is `WouldBlock`); a refusal is
    /// an error naming why.
    pub fn handshake_blocking(
        &self,
        host: &str,
        tcp: std::net::TcpStream,
    ) -> io::Result<BlockingTls> {
        let TlsClient { conn, .. } = self.session(host)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(match e.kind() {
                    io::ErrorKind::InvalidData => io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the TLS handshake failed: {e}"),
                    ),
                    io::ErrorKind::UnexpectedEof => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the TLS handshake failed: the server closed the connection",
                    ),
                    _ => e,
                });
            }
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A rustls server on a loopback port for one connection: it reads `ping`, answers with
    /// `reply`, then its close_notify. Returns the port and the CA file (the self-signed
    /// certificate) in `dir`.
    fn server(dir: &std::path::Path, reply: Vec<u8>) -> (u16, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let cert = CertificateDer::from_pem_slice(certified.cert.pem().as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(super::super::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut ping = [0; 4];
            if tls.read_exact(&mut ping).is_err() {
                return; // the client refused the certificate
            }
            assert_eq!(&ping, b"ping");
            tls.write_all(&reply).unwrap();
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            let _ = tls.sock.read(&mut [0; 64]); // until the client closes
        });
        (port, ca)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oneloop-tlsu-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn connect(port: u16, ca: Option<PathBuf>) -> (TcpStream, TlsClient) {
        let options = ClientTlsOptions {
            ca,
            ..ClientTlsOptions::default()
        };
        let session = ClientTls::new(&options)
            .unwrap()
            .session("localhost")
            .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        (tcp, session)
    }

    /// Retries `step` (1 ms apart) until it gives something, within the deadline.
    fn until<T>(mut step: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = step() {
                return value;
            }
            assert!(Instant::now() < deadline, "nothing within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_session_over_a_non_blocking_socket_reads_everything_to_the_close_notify() {
        let reply: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let (port, ca) = server(&scratch("whole"), reply.clone());
        let (mut tcp, mut session) = connect(port, Some(ca));
        until(|| session.handshake(&mut tcp).unwrap().then_some(()));
        until(|| match session.write(&mut tcp, b"ping") {
            Ok(4) => Some(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            other => panic!("{other:?}"),
        });
        let mut got = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        until(|| match session.read(&mut tcp, &mut buf) {
            Ok(0) => Some(()),
            Ok(count) => {
                got.extend_from_slice(&buf[..count]);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        });
        assert!(got == reply, "{} bytes of {}", got.len(), reply.len());
    }

    #[test]
    fn a_certificate_nobody_trusts_fails_the_handshake_naming_why() {
        let dir = scratch("untrusted");
        let (port, _ca) = server(&dir, Vec::new());
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other_ca = dir.join("other.pem");
        std::fs::write(&other_ca, other.cert.pem()).unwrap();
        let (mut tcp, mut session) = connect(port, Some(other_ca));
        let error = until(|| match session.handshake(&mut tcp) {
            Ok(false) => None,
            Ok(true) => panic!("the handshake succeeded"),
            Err(e) => Some(e),
        });
        // rcgen gives both the same subject: the other is taken for the issuer, and its
        // signature does not fit.
        assert_eq!(
            error.to_string(),
            "the TLS handshake failed: invalid peer certificate: BadSignature"
        );
    }
}
