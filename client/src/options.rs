//! Connection settings ([`ClientOptions`], [`TlsOptions`]) and the client's limits.

use std::time::Duration;

/// Default time to establish a TCP/HTTP2 connection to one member.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Default time one attempt of a unary request may take on one member. Longer
/// than the server's own request timeout, so that the server's answer (which says
/// whether a write was proposed) normally arrives before the client gives up.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default interval of HTTP/2 keep-alive pings on connections with open
/// streams. etcd's servers close connections that ping more often than their
/// `--grpc-keepalive-min-time` (5 s by default), so the default stays above it.
pub const KEEP_ALIVE_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Default time to wait for a keep-alive ping's answer before dropping the connection.
pub const KEEP_ALIVE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default upper bound of attempts for one retryable request (across members):
/// with the backoff below, about 8 s of retrying, enough to outlast an election.
pub const REQUEST_ATTEMPTS_MAX_DEFAULT: u32 = 12;
/// First pause between two attempts of a request; doubles up to
/// [`RETRY_BACKOFF_MS_MAX`].
pub const RETRY_BACKOFF_MS_MIN: u64 = 50;
/// Longest pause between two attempts of a request or two watch reconnections.
pub const RETRY_BACKOFF_MS_MAX: u64 = 1_000;
/// Default bound of a decoded response (ranges, snapshots chunks), in bytes.
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Capacity of the request channel of one watch stream (create, progress, cancel).
pub const WATCH_REQUESTS_PENDING_MAX: usize = 16;
/// Capacity of the event channel between a typed watch's task and its stream.
pub const WATCH_EVENTS_PENDING_MAX: usize = 1_024;
/// Events of one fragmented watch response are reassembled up to this many.
pub const WATCH_FRAGMENT_EVENTS_MAX: usize = 1_000_000;
/// Default time a typed watch may go without any message from its member before
/// it asks for a progress notification to check that the member still serves it.
pub const WATCH_IDLE_PROBE_MS_DEFAULT: u64 = 10_000;
/// Default time a typed watch waits for the answer to such a probe before it
/// gives up on the member (frozen, or cut off from its cluster) and resumes on
/// another one.
pub const WATCH_PROBE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default number of compare-and-swap rounds of [`crate::Keyspace::update`].
pub const CAS_ATTEMPTS_MAX_DEFAULT: u32 = 64;
/// Page size of the listings a [`crate::Mirror`] and [`crate::Keyspace::list`] make.
pub const LIST_PAGE_KEYS_MAX: i64 = 1_000;

/// How a [`crate::Client`] connects and retries.
///
/// ```
/// use std::time::Duration;
/// use cairn_client::ClientOptions;
///
/// let opts = ClientOptions::default()
///     .connect_timeout(Duration::from_secs(1))
///     .request_timeout(Duration::from_secs(5));
/// assert_eq!(opts.request_timeout_value(), Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) keep_alive_while_idle: bool,
    pub(crate) request_attempts_max: u32,
    pub(crate) response_bytes_max: usize,
    pub(crate) watch_idle_probe: Duration,
    pub(crate) watch_probe_timeout: Duration,
    pub(crate) tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            keep_alive_interval: Duration::from_millis(KEEP_ALIVE_INTERVAL_MS_DEFAULT),
            keep_alive_timeout: Duration::from_millis(KEEP_ALIVE_TIMEOUT_MS_DEFAULT),
            keep_alive_while_idle: false,
            request_attempts_max: REQUEST_ATTEMPTS_MAX_DEFAULT,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            watch_idle_probe: Duration::from_millis(WATCH_IDLE_PROBE_MS_DEFAULT),
            watch_probe_timeout: Duration::from_millis(WATCH_PROBE_TIMEOUT_MS_DEFAULT),
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Time to establish a connection to one member (default
    /// [`CONNECT_TIMEOUT_MS_DEFAULT`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time one attempt of a unary request may take on one member (default
    /// [`REQUEST_TIMEOUT_MS_DEFAULT`]). A read that times out is retried on another
    /// member; a write that times out fails with
    /// [`crate::Error::OutcomeUnknown`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The configured request timeout.
    pub fn request_timeout_value(&self) -> Duration {
        self.request_timeout
    }

    /// HTTP/2 keep-alive: a ping every `interval` while streams are open, and
    /// the connection is dropped (and its watches and lease keep-alives fail
    /// over) when a ping is not answered within `timeout`. This is what detects
    /// a frozen or partitioned member under a long-lived watch. Against etcd, keep
    /// `interval` at or above the server's `--grpc-keepalive-min-time` (5 s by
    /// default): etcd closes connections that ping faster.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }

    /// Also ping connections without open streams (default off: etcd counts
    /// such pings as abuse and closes the connection; Cairn accepts them).
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.keep_alive_while_idle = enabled;
        self
    }

    /// Upper bound of attempts for one retryable request, across members
    /// (default [`REQUEST_ATTEMPTS_MAX_DEFAULT`]; at least 1).
    pub fn request_attempts_max(mut self, n: u32) -> Self {
        self.request_attempts_max = n.max(1);
        self
    }

    /// Largest response the client decodes, in bytes (default
    /// [`RESPONSE_BYTES_MAX_DEFAULT`]).
    pub fn response_bytes_max(mut self, n: usize) -> Self {
        self.response_bytes_max = n;
        self
    }

    /// Liveness probing of typed watches (and mirrors): after `idle` without any
    /// message, ask the member for a progress notification; if none comes
    /// within `timeout`, resume the watch on another member. This catches a
    /// member that keeps its connection open but no longer serves (cut off from
    /// its cluster), which HTTP/2 keep-alive cannot see. Defaults:
    /// [`WATCH_IDLE_PROBE_MS_DEFAULT`], [`WATCH_PROBE_TIMEOUT_MS_DEFAULT`].
    pub fn watch_probe(mut self, idle: Duration, timeout: Duration) -> Self {
        self.watch_idle_probe = idle;
        self.watch_probe_timeout = timeout;
        self
    }

    /// Connect over TLS with these certificates.
    ///
    /// **Not available yet**: Cairn's server does not serve TLS so far, and this
    /// build of the client is compiled without a TLS stack. `Client::connect`
    /// with TLS options therefore fails with [`crate::Error::Config`] instead of
    /// silently connecting in plain text. The type exists so that configuration
    /// code can be written now.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Certificates for a TLS connection (PEM-encoded). See [`ClientOptions::tls`]
/// for the current state of TLS support.
///
/// ```
/// use cairn_client::TlsOptions;
///
/// let tls = TlsOptions::default().domain_name("cairn.internal");
/// assert_eq!(tls.domain_name.as_deref(), Some("cairn.internal"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// CA certificate(s) that sign the members' certificates.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Client certificate for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    /// Private key of the client certificate.
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to verify the members' certificates against (default: the
    /// endpoint's host).
    pub domain_name: Option<String>,
}

impl TlsOptions {
    /// Sets the CA certificate(s).
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Sets the client certificate and its key (mutual TLS).
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client_cert_pem = Some(cert.into());
        self.client_key_pem = Some(key.into());
        self
    }

    /// Sets the name the members' certificates are verified against.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }
}
