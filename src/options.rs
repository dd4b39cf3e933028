//! What `serve` was asked for, as plain data: the options every driver honours.
//!
//! The reactor and the blocking models are siblings — the foils never import the reactor, and
//! the reactor never imports the foils — yet both serve the same `--max-line`, `--output-limit`,
//! `--max-connections`, timeouts, upload directory, PROXY header and reply delay. Those live here
//! once, so a new option reaches every driver by a field added here, and a benchmark of two models
//! is sure to compare them under the same settings. The command line (`cli`) fills one
//! [`ServeOptions`] and hands it to whichever driver `--model` picks; the reactor's `Config` and
//! the models' `Settings` embed it beside the few things only they need (named here, not
//! linked: this module looks at neither).
//!
//! This module knows no command line (no clap) and no driver: it sits just above `protocol`
//! (whose [`Limits`] it carries) and `storage` (whose opened [`UploadDir`] it carries), and just
//! below `reactor | models`.

use std::sync::Arc;
use std::time::Duration;

use crate::net::tls::ServerTls;
use crate::protocol::Limits;
use crate::storage::durable::UploadDir;

/// Default for `--output-limit`: 1 MiB of queued replies per connection.
pub(crate) const DEFAULT_OUTPUT_LIMIT: usize = 1024 * 1024;

/// Default for `--idle-timeout`, in seconds: five minutes.
pub(crate) const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// Default for `--shutdown-timeout`, in seconds.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// The options of `oneloop serve` that the reactor and every blocking model share.
///
/// Cheap to clone (the upload directory is behind an [`Arc`]): the blocking models clone it into
/// each serving thread, and a forked child has its own copy.
#[derive(Clone, Debug)]
pub(crate) struct ServeOptions {
    /// Limits every protocol session gets (`--max-line`, `--max-upload`).
    pub limits: Limits,
    /// `--output-limit`: queued reply bytes past which the reactor stops reading a connection,
    /// and past which a chat member is dropped. The blocking models' stream protocols need none:
    /// a thread blocked in `write` stops reading.
    pub output_limit: usize,
    /// `--max-connections`: connections served at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// `--idle-timeout` (`None`: never): a connection with no byte read or written this long is
    /// closed. The blocking models make it the socket's read and write timeouts.
    pub idle_timeout: Option<Duration>,
    /// `--shutdown-timeout`: how long a graceful shutdown waits for busy connections.
    pub shutdown_timeout: Duration,
    /// `--upload-dir`, opened, when an upload service is served.
    pub upload_dir: Option<Arc<UploadDir>>,
    /// `--proxy-protocol`: every stream connection starts with a PROXY protocol header, read
    /// before any byte of its protocol, within
    /// [`HEADER_TIMEOUT`](crate::protocol::proxy::HEADER_TIMEOUT) (see
    /// [`crate::protocol::proxy`]).
    pub proxy_protocol: bool,
    /// `--reply-delay` (`None`: off): upper, timestamp and echo hold each reply this long after
    /// its request was read — on a timer in the reactor, in a `sleep` in the blocking models.
    pub reply_delay: Option<Duration>,
    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`, read, when a `tls:` service is served.
    pub tls: Option<ServerTls>,
}

impl Default for ServeOptions {
    /// The command line's defaults, with room for 1,024 connections.
    fn default() -> Self {
        ServeOptions {
            limits: Limits::default(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            max_connections: 1024,
            idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS)),
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            upload_dir: None,
            proxy_protocol: false,
            reply_delay: None,
            tls: None,
        }
    }
}
