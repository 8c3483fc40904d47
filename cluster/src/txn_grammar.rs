//! etcdctl's txn stdin grammar: compares, success requests, failure requests,
//! each section ended by a blank line (or by the end of input).

use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;

use clap::{Parser, Subcommand};

use crate::cli::{DelArgs, GetArgs, PutArgs};
use crate::limits;

/// A whole transaction as typed by the user.
#[derive(Debug, Default)]
pub struct TxnSpec {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One compare line: `TARGET("key") OP "value"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// The relation of a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a compare looks at, with the value it is compared to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One request line: the arguments of the `get`, `put` or `del` command.
#[derive(Debug, Clone)]
pub enum TxnOp {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

/// A line that does not follow the grammar (or unreadable input).
#[derive(Debug, thiserror::Error)]
pub enum TxnGrammarError {
    #[error("txn: line {line}: {reason}: {text}")]
    Line { line: usize, text: String, reason: String },
    #[error(
        "txn: the {section} section has more than {max} lines (a txn may hold at most {max} operations per section)"
    )]
    TooMany { section: &'static str, max: usize },
    #[error("txn: reading stdin: {0}")]
    Io(#[from] std::io::Error),
}

/// The three sections, in input order, with the prompt `-i` prints for each.
const SECTIONS: [(&str, &str); 3] = [
    ("compares", "compares:"),
    ("success", "success requests (get, put, del):"),
    ("failure", "failure requests (get, put, del):"),
];

/// Reads a transaction from `input`. With `prompt`, each section's prompt is
/// written to `prompt` first (interactive mode).
pub fn read_txn(
    input: &mut dyn BufRead,
    mut prompt: Option<&mut dyn std::io::Write>,
) -> Result<TxnSpec, TxnGrammarError> {
    let mut spec = TxnSpec::default();
    let mut line_no = 0;
    let mut eof = false;
    for (index, (section, prompt_text)) in SECTIONS.iter().enumerate() {
        if let Some(w) = prompt.as_deref_mut() {
            writeln!(w, "{prompt_text}")?;
            w.flush()?;
        }
        let mut count = 0;
        while !eof {
            let Some(line) = read_line(input)? else {
                eof = true;
                break;
            };
            line_no += 1;
            let text = line.trim();
            if text.is_empty() {
                break;
            }
            count += 1;
            if count > limits::TXN_SECTION_OPS_MAX {
                return Err(TxnGrammarError::TooMany { section, max: limits::TXN_SECTION_OPS_MAX });
            }
            let at = |reason: String| TxnGrammarError::Line { line: line_no, text: text.to_string(), reason };
            match index {
                0 => spec.compares.push(parse_compare(text).map_err(at)?),
                1 => spec.success.push(parse_op(text).map_err(at)?),
                _ => spec.failure.push(parse_op(text).map_err(at)?),
            }
        }
    }
    Ok(spec)
}

/// One line without its terminator; `None` at end of input.
fn read_line(input: &mut dyn BufRead) -> Result<Option<String>, TxnGrammarError> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *input, limits::TXN_LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > limits::TXN_LINE_BYTES_MAX {
        return Err(TxnGrammarError::Line {
            line: 0,
            text: String::from_utf8_lossy(&buf[..40]).into_owned() + "...",
            reason: format!("line longer than {} bytes", limits::TXN_LINE_BYTES_MAX),
        });
    }
    String::from_utf8(buf).map(Some).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "input is not UTF-8 (write bytes as \\xNN)").into()
    })
}

/// Parses `TARGET("key") OP "value"`.
pub fn parse_compare(text: &str) -> Result<Compare, String> {
    const TARGETS: &str = "expected c|create, m|mod, ver|version, val|value or lease";
    let (target, rest) = text
        .split_once('(')
        .ok_or_else(|| format!("malformed comparison: expected TARGET(\"KEY\") OP \"VALUE\" ({TARGETS})"))?;
    let target = target.trim();
    let mut cur = Cursor::new(rest);
    cur.skip_ws();
    let key = cur.quoted().map_err(|e| format!("malformed comparison: key: {e}"))?;
    cur.skip_ws();
    if !cur.eat(")") {
        return Err("malformed comparison: expected `)` after the key".into());
    }
    cur.skip_ws();
    let op = if cur.eat("!=") {
        CompareOp::NotEqual
    } else if cur.eat("=") {
        CompareOp::Equal
    } else if cur.eat("<") {
        CompareOp::Less
    } else if cur.eat(">") {
        CompareOp::Greater
    } else {
        return Err("malformed comparison: expected one of = != < > after the key".into());
    };
    cur.skip_ws();
    let value = cur.value().map_err(|e| format!("malformed comparison: value: {e}"))?;
    cur.skip_ws();
    if !cur.at_end() {
        return Err(format!("malformed comparison: unexpected `{}` after the value", cur.rest()));
    }
    let number = |what: &str, radix: u32| -> Result<i64, String> {
        let s = String::from_utf8(value.clone()).map_err(|_| format!("{what} must be a number"))?;
        i64::from_str_radix(s.trim(), radix).map_err(|_| format!("malformed comparison: {what} {s:?} is not a number"))
    };
    let target = match target {
        "ver" | "version" => CompareTarget::Version(number("version", 10)?),
        "c" | "create" => CompareTarget::Create(number("revision", 10)?),
        "m" | "mod" => CompareTarget::Mod(number("revision", 10)?),
        "val" | "value" => CompareTarget::Value(value),
        "lease" => CompareTarget::Lease(number("lease ID (hex)", 16)?),
        other => return Err(format!("malformed comparison: unknown target `{other}` ({TARGETS})")),
    };
    Ok(Compare { key, op, target })
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true, name = "txn request", disable_help_flag = true, disable_version_flag = true)]
struct OpLine {
    #[command(subcommand)]
    op: OpCommand,
}

#[derive(Debug, Subcommand)]
enum OpCommand {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

/// Parses one request line: `get ...`, `put ...` or `del ...` with the flags of
/// those commands; arguments may be Go-quoted (`"a b\n"`).
pub fn parse_op(text: &str) -> Result<TxnOp, String> {
    let words = split_words(text)?;
    match words.first().map(|w| w.as_slice()) {
        Some(b"get" | b"put" | b"del") => {}
        _ => return Err("malformed request: expected get, put or del".into()),
    }
    let args = words.into_iter().map(OsString::from_vec);
    let parsed = OpLine::try_parse_from(args).map_err(|e| {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        format!("malformed request: {first}")
    })?;
    Ok(match parsed.op {
        OpCommand::Get(a) => TxnOp::Get(a),
        OpCommand::Put(a) => {
            if a.value.is_none() && !a.ignore_value {
                return Err("malformed request: put needs a value in a txn".into());
            }
            TxnOp::Put(a)
        }
        OpCommand::Del(a) => TxnOp::Del(a),
    })
}

/// Splits on whitespace; a `"..."` part (Go escapes) may hold spaces and any byte.
fn split_words(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut words = Vec::new();
    let mut cur = Cursor::new(text);
    loop {
        cur.skip_ws();
        if cur.at_end() {
            return Ok(words);
        }
        let mut word = Vec::new();
        while let Some(c) = cur.peek() {
            if c.is_whitespace() {
                break;
            }
            if c == '"' {
                word.extend(cur.quoted()?);
            } else {
                cur.bump();
                let mut b = [0; 4];
                word.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
        words.push(word);
    }
}

/// A character cursor over one line.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// A quoted string (etcdctl writes them with Go's %q) or, leniently, a bare word.
    fn value(&mut self) -> Result<Vec<u8>, String> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace()) {
            self.bump();
        }
        if start == self.pos {
            return Err("missing (expected a quoted string such as \"7\")".into());
        }
        Ok(self.s.as_bytes()[start..self.pos].to_vec())
    }

    /// `"..."` with Go escapes: \\ \" \' \n \r \t \a \b \f \v \0NN \xNN \uNNNN \UNNNNNNNN.
    fn quoted(&mut self) -> Result<Vec<u8>, String> {
        if !self.eat("\"") {
            return Err("expected a double-quoted string".into());
        }
        let mut out = Vec::new();
        loop {
            let c = self.bump().ok_or("unterminated quoted string (missing closing \")")?;
            match c {
                '"' => return Ok(out),
                '\\' => self.escape(&mut out)?,
                c => {
                    let mut b = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let c = self.bump().ok_or("unterminated escape")?;
        let simple = match c {
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            '\'' => Some(b'\''),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'v' => Some(0x0b),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (digits, radix) = match c {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => (2, 8),
            other => return Err(format!("unknown escape \\{other}")),
        };
        let mut text = String::new();
        if radix == 8 {
            text.push(c);
        }
        for _ in 0..digits {
            text.push(self.bump().ok_or("unterminated escape")?);
        }
        let n = u32::from_str_radix(&text, radix).map_err(|_| format!("bad escape digits `{text}`"))?;
        if c == 'u' || c == 'U' {
            let ch = char::from_u32(n).ok_or_else(|| format!("\\{c}{text} is not a character"))?;
            let mut b = [0; 4];
            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
        } else {
            out.push(u8::try_from(n).map_err(|_| format!("escape `{text}` is not a byte"))?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TxnSpec, TxnGrammarError> {
        read_txn(&mut text.as_bytes(), None)
    }

    fn key_of(op: &TxnOp) -> Vec<u8> {
        match op {
            TxnOp::Get(a) => a.key.clone().into_vec(),
            TxnOp::Put(a) => a.key.clone().into_vec(),
            TxnOp::Del(a) => a.key.clone().into_vec(),
        }
    }

    #[test]
    fn all_three_sections_with_every_compare_target() {
        let spec = parse(concat!(
            "mod(\"k1\") > \"5\"\n",
            "c(\"k2\") = \"0\"\n",
            "version(\"k3\") != \"2\"\n",
            "value(\"k4\") < \"x y\"\n",
            "lease(\"k5\") = \"694d\"\n",
            "\n",
            "put k1 \"new value\" --prev-kv\n",
            "get --prefix k\n",
            "\n",
            "del k1 k9\n",
            "\n",
        ))
        .unwrap();
        assert_eq!(
            spec.compares,
            vec![
                Compare { key: b"k1".to_vec(), op: CompareOp::Greater, target: CompareTarget::Mod(5) },
                Compare { key: b"k2".to_vec(), op: CompareOp::Equal, target: CompareTarget::Create(0) },
                Compare { key: b"k3".to_vec(), op: CompareOp::NotEqual, target: CompareTarget::Version(2) },
                Compare { key: b"k4".to_vec(), op: CompareOp::Less, target: CompareTarget::Value(b"x y".to_vec()) },
                Compare { key: b"k5".to_vec(), op: CompareOp::Equal, target: CompareTarget::Lease(0x694d) },
            ]
        );
        assert_eq!(spec.success.len(), 2);
        let TxnOp::Put(put) = &spec.success[0] else { panic!("not a put") };
        assert_eq!(put.value.as_deref(), Some(std::ffi::OsStr::new("new value")));
        assert!(put.prev_kv);
        let TxnOp::Get(get) = &spec.success[1] else { panic!("not a get") };
        assert!(get.prefix);
        assert_eq!(key_of(&spec.success[1]), b"k");
        let TxnOp::Del(del) = &spec.failure[0] else { panic!("not a del") };
        assert_eq!(del.range_end.as_deref(), Some(std::ffi::OsStr::new("k9")));
    }

    #[test]
    fn end_of_input_ends_the_open_section() {
        let spec = parse("\nput a b\n").unwrap();
        assert!(spec.compares.is_empty());
        assert_eq!(spec.success.len(), 1);
        assert!(spec.failure.is_empty());
        let spec = parse("").unwrap();
        assert!(spec.compares.is_empty() && spec.success.is_empty() && spec.failure.is_empty());
    }

    #[test]
    fn go_escapes_in_keys_and_values() {
        let spec = parse("value(\"a\\x00\\\"b\") = \"\\u00e9\\n\\101\"\n\nput \"k y\" \"v\\tw\"\n").unwrap();
        assert_eq!(spec.compares[0].key, b"a\x00\"b");
        assert_eq!(spec.compares[0].target, CompareTarget::Value("é\nA".as_bytes().to_vec()));
        let TxnOp::Put(put) = &spec.success[0] else { panic!("not a put") };
        assert_eq!(put.key.clone().into_vec(), b"k y");
        assert_eq!(put.value.clone().unwrap().into_vec(), b"v\tw");
    }

    #[test]
    fn bare_numbers_are_accepted_in_compares() {
        let spec = parse("mod(\"k\") < 10\n").unwrap();
        assert_eq!(spec.compares[0].target, CompareTarget::Mod(10));
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_compare_target_is_named() {
        let e = error_of("bogus(\"a\") = \"b\"\n");
        assert!(e.contains("line 1") && e.contains("unknown target `bogus`"), "{e}");
    }

    #[test]
    fn malformed_compares_say_what_is_wrong() {
        for (text, expected) in [
            ("mod \"a\" = \"1\"\n", "expected TARGET(\"KEY\")"),
            ("mod(a) = \"1\"\n", "expected a double-quoted string"),
            ("mod(\"a) = \"1\"\n", "expected `)`"),
            ("mod(\"a\") == \"1\"\n", "value"),
            ("mod(\"a\") ~ \"1\"\n", "expected one of = != < >"),
            ("mod(\"a\") = \"x\"\n", "\"x\" is not a number"),
            ("mod(\"a\") = \"1\" extra\n", "unexpected `extra`"),
            ("val(\"a\") = \"unterminated\n", "unterminated quoted string"),
            ("val(\"a\") = \"\\q\"\n", "unknown escape \\q"),
        ] {
            let e = error_of(text);
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn malformed_requests_are_rejected_with_their_line_number() {
        let e = error_of("\nput a b\nfrobnicate a\n");
        assert!(e.contains("line 3") && e.contains("expected get, put or del"), "{e}");
        let e = error_of("\nput a\n");
        assert!(e.contains("put needs a value"), "{e}");
        let e = error_of("\n\nget a --no-such-flag\n");
        assert!(e.contains("line 3") && e.contains("--no-such-flag"), "{e}");
        let e = error_of("\n\nget\n");
        assert!(e.contains("malformed request"), "{e}");
    }

    #[test]
    fn a_section_may_not_exceed_the_ops_limit() {
        let text = "\n".to_string() + &"get a\n".repeat(limits::TXN_SECTION_OPS_MAX + 1);
        assert!(matches!(parse(&text), Err(TxnGrammarError::TooMany { section: "success", .. })));
    }

    #[test]
    fn interactive_mode_prompts_for_each_section() {
        let mut out = Vec::new();
        read_txn(&mut "\n\n\n".as_bytes(), Some(&mut out)).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n");
    }
}
