//! Printing results as simple lines (etcdctl's), stable JSON, or aligned tables.
//!
//! JSON field names follow etcdctl's JSON output (protobuf names such as
//! `create_revision`, `raft_term`; etcdctl's own such as `Endpoint`, `ID`), bytes are
//! base64 as in etcdctl, and unlike etcdctl every field is always present (no
//! omitted zero values), so that scripts need no defaults.

use std::io::Write;

use base64::Engine as _;
use cairn_client::{Header, KeyValue};
use comfy_table::{presets, CellAlignment, ContentArrangement, TableComponent};
use serde_json::{json, Value};

use crate::cli::OutputFormat;
use crate::errors::{CliError, CliResult};

/// How every result of this invocation is printed.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
    pub hex: bool,
}

/// A result that can be printed in each format.
pub trait Render {
    /// etcdctl's simple format (lines, each ending in a newline).
    fn simple(&self, p: &Printer) -> String;
    /// The simple format as bytes: keys and values are written as they are
    /// stored (a binary value piped to a file stays intact), as etcdctl does.
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        self.simple(p).into_bytes()
    }
    /// The JSON document.
    fn json(&self) -> Value;
    /// The table.
    fn table(&self, p: &Printer) -> Table;
}

/// Rows under a header, printed aligned with a border as etcdctl does.
#[derive(Debug, Default)]
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(presets::ASCII_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
        // etcdctl's look: the line under the header is drawn like the borders.
        t.set_style(TableComponent::HeaderLines, '-');
        t.set_style(TableComponent::LeftHeaderIntersection, '+');
        t.set_style(TableComponent::MiddleHeaderIntersections, '+');
        t.set_style(TableComponent::RightHeaderIntersection, '+');
        t.set_header(self.header.iter().copied());
        for row in &self.rows {
            t.add_row(row.iter().map(String::as_str));
        }
        for col in t.column_iter_mut() {
            col.set_cell_alignment(CellAlignment::Left);
        }
        t.to_string() + "\n"
    }
}

impl Printer {
    /// Prints `r` on stdout in the chosen format.
    pub fn emit(&self, r: &dyn Render) -> CliResult<()> {
        let text = self.render(r);
        let mut out = std::io::stdout().lock();
        out.write_all(&text).and_then(|_| out.flush()).map_err(|e| CliError::io("write to stdout", e))
    }

    /// The text [`Printer::emit`] would print.
    pub fn render(&self, r: &dyn Render) -> Vec<u8> {
        match self.format {
            OutputFormat::Simple => r.simple_bytes(self),
            OutputFormat::Json => (r.json().to_string() + "\n").into_bytes(),
            OutputFormat::Table => r.table(self).render().into_bytes(),
        }
    }

    /// Bytes for simple and table output: as text, or `\x61\x62` with --hex.
    pub fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            b.iter().map(|x| format!("\\x{x:02x}")).collect()
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    /// Bytes for simple output: as stored, or `\x61\x62` with --hex.
    pub fn raw(&self, b: &[u8]) -> Vec<u8> {
        if self.hex {
            self.bytes(b).into_bytes()
        } else {
            b.to_vec()
        }
    }

    /// etcdctl's simple rendering of one key-value: key line, value line.
    pub fn kv_lines(&self, kv: &KeyValue, value_only: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if !value_only {
            out.extend(self.raw(&kv.key));
            out.push(b'\n');
        }
        out.extend(self.raw(&kv.value));
        out.push(b'\n');
        out
    }
}

/// Bytes in JSON: base64 (standard alphabet, padded), as etcdctl.
pub fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A response header in JSON.
pub fn header_json(h: &Header) -> Value {
    json!({
        "cluster_id": h.cluster_id,
        "member_id": h.member_id,
        "revision": h.revision,
        "raft_term": h.raft_term,
    })
}

/// A key-value in JSON.
pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": b64(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": b64(&kv.value),
        "lease": kv.lease,
    })
}

/// The columns of a key-value in tables.
pub const KV_COLUMNS: [&str; 6] = ["KEY", "VALUE", "CREATE REV", "MOD REV", "VERSION", "LEASE"];

/// A key-value as a table row.
pub fn kv_row(p: &Printer, kv: &KeyValue) -> Vec<String> {
    vec![
        p.bytes(&kv.key),
        p.bytes(&kv.value),
        kv.create_revision.to_string(),
        kv.mod_revision.to_string(),
        kv.version.to_string(),
        hex_id(kv.lease),
    ]
}

/// Member, lease and cluster IDs are shown in hex, as etcdctl does (0 stays `0`).
pub fn hex_id<T: Into<i128>>(id: T) -> String {
    let id: i128 = id.into();
    if id == 0 {
        "0".into()
    } else {
        format!("{:x}", id as u64)
    }
}

/// Sizes as etcdctl prints them (SI units: `20 kB`, `1.2 MB`).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_flag_escapes_every_byte() {
        let p = Printer { format: OutputFormat::Simple, hex: true };
        assert_eq!(p.bytes(b"ab"), "\\x61\\x62");
        let p = Printer { format: OutputFormat::Simple, hex: false };
        assert_eq!(p.bytes(b"ab"), "ab");
    }

    #[test]
    fn ids_and_sizes_print_like_etcdctl() {
        assert_eq!(hex_id(0x2e1259d415f2a040u64), "2e1259d415f2a040");
        assert_eq!(hex_id(0i64), "0");
        assert_eq!(hex_id(-1i64), "ffffffffffffffff");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
    }

    #[test]
    fn json_keeps_zero_fields_and_base64_bytes() {
        let kv = KeyValue { key: b"a".to_vec(), value: Vec::new(), ..Default::default() };
        assert_eq!(
            kv_json(&kv),
            json!({"key": "YQ==", "create_revision": 0, "mod_revision": 0, "version": 0, "value": "", "lease": 0})
        );
    }

    #[test]
    fn tables_are_aligned() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        let text = t.render();
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("| xyz | 1      |"), "{text}");
    }
}
