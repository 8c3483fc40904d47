//! What every command needs: the global flags, the printer, and connections.

use std::future::Future;
use std::time::Duration;

use cairn_client::{Client, ClientOptions};

use crate::cli::GlobalArgs;
use crate::errors::{CliError, CliResult};
use crate::output::Printer;

/// The invocation's context, shared by every command.
pub struct Ctx {
    pub global: GlobalArgs,
    pub printer: Printer,
}

/// `host:port` becomes `http://host:port`; URLs are kept as given.
pub fn normalize_endpoint(ep: &str) -> String {
    let ep = ep.trim().trim_end_matches('/');
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// `http://host:port` shown as etcdctl shows endpoints: as given on the command line.
pub fn display_endpoint(ep: &str) -> String {
    ep.trim_start_matches("http://").to_string()
}

impl Ctx {
    pub fn new(global: GlobalArgs) -> Ctx {
        let printer = Printer { format: global.write_out, hex: global.hex };
        Ctx { global, printer }
    }

    fn options(&self) -> ClientOptions {
        ClientOptions::default().connect_timeout(self.global.dial_timeout).request_timeout(self.global.command_timeout)
    }

    /// The endpoints of --endpoints, as URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.global.endpoints.split(',').filter(|e| !e.trim().is_empty()).map(normalize_endpoint).collect()
    }

    /// A client over every endpoint of --endpoints (failover between them).
    pub async fn connect(&self) -> CliResult<Client> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Err(CliError::invalid("--endpoints is empty").with_hint("give at least one host:port"));
        }
        self.connect_to(&endpoints).await
    }

    /// A client that talks to exactly one endpoint (per-member commands).
    pub async fn connect_one(&self, endpoint: &str) -> CliResult<Client> {
        self.connect_to(&[normalize_endpoint(endpoint)]).await
    }

    async fn connect_to(&self, endpoints: &[String]) -> CliResult<Client> {
        let dial = self.global.dial_timeout;
        // The client bounds each dial by the connect timeout; bound the whole list too.
        let total = dial.saturating_mul(endpoints.len() as u32) + Duration::from_millis(100);
        match tokio::time::timeout(total, Client::connect(endpoints, self.options())).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(CliError::from(e).context(format!("connect to {}", endpoints.join(",")))),
            Err(_) => Err(CliError::timeout(total).context(format!("connect to {}", endpoints.join(",")))),
        }
    }

    /// Runs `fut` within --command-timeout.
    pub async fn bounded<T>(&self, fut: impl Future<Output = CliResult<T>>) -> CliResult<T> {
        let limit = self.global.command_timeout;
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| Err(CliError::timeout(limit)))
    }
}

/// Parses a hex ID (lease or member) as etcdctl prints them.
pub fn parse_hex_id(what: &str, s: &str) -> CliResult<u64> {
    let t = s.trim().trim_start_matches("0x");
    u64::from_str_radix(t, 16).map_err(|_| {
        CliError::invalid(format!(
            "bad {what} ID {s:?}: expected hexadecimal, as printed by cairnctl (e.g. 694d77aa9e38260f)"
        ))
    })
}
