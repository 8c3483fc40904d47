//! RocksDB write stalls of Cairn members during a run, read from each member's
//! `/metrics` before and after it (`cairn_disk_write_stalls_total` and
//! `cairn_disk_write_stall_seconds_total`). A stall holds every write of its member
//! back, so a run with one explains a throughput or tail-latency outlier that the
//! client side alone cannot. etcd has no such metric; its members report none.
//!
//! The request is a bare HTTP/1.0 GET over a loopback socket: the bench needs one
//! page of text from a server it started, and an HTTP client crate would add a
//! dependency tree larger than the bench for it. HTTP/1.0, so that the reply is the
//! page as is, never chunked; a reply shorter than its `Content-Length` (or longer
//! than [`PAGE_BYTES_MAX`]) is refused rather than read in part.
//!
//! The member checks for a stall every 100 ms, so the seconds come in steps of
//! 0.1 s and a shorter stall may be missed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on one scrape of a member's `/metrics`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest reply read; a larger one is refused (a member's page is about 15 KiB).
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
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.take(PAGE_BYTES_MAX + 1).read_to_end(&mut raw).await.ok()?;
        if raw.len() as u64 > PAGE_BYTES_MAX {
            return None;
        }
        body_of(&String::from_utf8(raw).ok()?)
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange).await.ok().flatten()
}

/// The body of a whole `200` reply: not chunked, and as long as its
/// `Content-Length` says when it gives one.
fn body_of(reply: &str) -> Option<String> {
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    if lines.next()?.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") && value.parse::<usize>().ok()? != body.len() {
            return None;
        }
    }
    Some(body.to_string())
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
    fn only_a_whole_unchunked_ok_reply_is_read() {
        let page = "cairn_disk_write_stalls_total 3\n";
        let ok = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{page}", page.len());
        assert_eq!(body_of(&ok).as_deref(), Some(page));
        let cut = format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{}", page.len(), &page[..10]);
        assert_eq!(body_of(&cut), None, "a reply cut short");
        assert_eq!(body_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\nx"), None, "chunked");
        assert_eq!(body_of("HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n"), None, "not found");
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
