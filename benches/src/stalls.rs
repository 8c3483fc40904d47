//! RocksDB write stalls of Cairn members during a run, read from each member's
//! `/metrics` before and after it (`cairn_disk_write_stalls_total` and
//! `cairn_disk_write_stall_seconds_total`). A stall holds every write of its member
//! back, so a run with one explains a throughput or tail-latency outlier that the
//! client side alone cannot. etcd has no such metric; its members report none.
//!
//! The request is a bare HTTP/1.1 GET over a loopback socket: the bench needs one
//! page of text from a server it started, and an HTTP client crate would add a
//! dependency tree larger than the bench for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on one scrape of a member's `/metrics`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `/metrics` page read; the rest is ignored (a member's page is ~30 KiB).
const PAGE_BYTES_MAX: u64 = 4 << 20;

const STALLS: &str = "cairn_disk_write_stalls_total";
const STALL_SECONDS: &str = "cairn_disk_write_stall_seconds_total";

/// A member's write stalls so far (counters since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteStalls {
    /// Stalls that began.
    pub count: u64,
    /// Seconds spent stalled.
    pub seconds: f64,
}

impl WriteStalls {
    /// The stalls between `earlier` and `self`.
    pub fn since(self, earlier: WriteStalls) -> WriteStalls {
        WriteStalls {
            count: self.count.saturating_sub(earlier.count),
            seconds: (self.seconds - earlier.seconds).max(0.0),
        }
    }
}

/// The write stall counters of the Cairn member serving `endpoint`
/// (`http://host:port`), or `None` if it does not answer in time or exports no such
/// counters.
pub async fn read(endpoint: &str) -> Option<WriteStalls> {
    parse(&get_metrics(endpoint).await?)
}

/// The two counters in a Prometheus text page, if both are there.
fn parse(page: &str) -> Option<WriteStalls> {
    let sample = |name: &str| {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    Some(WriteStalls { count: sample(STALLS)? as u64, seconds: sample(STALL_SECONDS)? })
}

async fn get_metrics(endpoint: &str) -> Option<String> {
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.take(PAGE_BYTES_MAX).read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_counters_and_ignores_comments_and_longer_names() {
        let page = "# HELP cairn_disk_write_stalls_total Stalls.\n\
                    # TYPE cairn_disk_write_stalls_total counter\n\
                    cairn_disk_write_stalls_total_extra 9\n\
                    cairn_disk_write_stalls_total 3\n\
                    cairn_disk_write_stall_seconds_total 1.25\n";
        assert_eq!(parse(page), Some(WriteStalls { count: 3, seconds: 1.25 }));
    }

    #[test]
    fn a_page_without_the_counters_has_no_stalls_to_report() {
        assert_eq!(parse("etcd_server_has_leader 1\n"), None);
        assert_eq!(parse("cairn_disk_write_stalls_total 1\n"), None, "both counters are needed");
    }

    #[test]
    fn the_difference_of_two_readings_never_goes_negative() {
        let before = WriteStalls { count: 2, seconds: 0.5 };
        let after = WriteStalls { count: 5, seconds: 2.0 };
        assert_eq!(after.since(before), WriteStalls { count: 3, seconds: 1.5 });
        // A member that restarted in between starts its counters again.
        assert_eq!(before.since(after), WriteStalls::default());
    }
}
