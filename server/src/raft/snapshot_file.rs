//! The on-disk (and on-the-wire) form of a Raft snapshot and of a backup.
//!
//! ```text
//! FILE_MAGIC | store export (KvStore::export) | zero padding | meta (bincode) | meta length (u64 BE) | SHA-256
//! ```
//!
//! The metadata comes after the data because it is only known once the export's
//! consistent view has been read; the SHA-256 covers every byte before it, so a
//! truncated or corrupted file (an interrupted transfer, a bad disk) is refused
//! before anything is installed. The padding makes the size 32 more than a multiple
//! of 512, which is what etcdctl checks in a backup before it accepts it. Files are written and read as streams: memory
//! stays small whatever the size of the state.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use openraft::SnapshotMeta;
use sha2::{Digest, Sha256};

use super::{Member, NodeId};
use crate::mvcc::encode_meta;

const FILE_MAGIC: &[u8; 8] = b"CAIRNRS1";
const DIGEST_BYTES: u64 = 32;
const LEN_BYTES: u64 = 8;
const IO_BUFFER_BYTES: usize = 1024 * 1024;
const ETCD_PAGE_BYTES: u64 = 512;

pub type Meta = SnapshotMeta<NodeId, Member>;

/// A writer that hashes everything written through it.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot file at `path` (created or truncated, then fsynced). `export`
/// writes the store's records and returns the metadata describing them.
pub fn write(path: &Path, export: impl FnOnce(&mut dyn Write) -> io::Result<Meta>) -> io::Result<(Meta, u64)> {
    let file = File::create(path)?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(IO_BUFFER_BYTES, file));
    out.write_all(FILE_MAGIC)?;
    let meta = export(&mut out)?;
    let encoded = encode_meta(&meta);
    // Zero padding so that the file's size is 32 more than a multiple of 512, as an
    // etcd backup's is: etcdctl checks that before it accepts a snapshot.
    let unpadded = out.written() + encoded.len() as u64 + LEN_BYTES;
    let padding = (ETCD_PAGE_BYTES - unpadded % ETCD_PAGE_BYTES) % ETCD_PAGE_BYTES;
    out.write_all(&vec![0u8; padding as usize])?;
    out.write_all(&encoded)?;
    out.write_all(&(encoded.len() as u64).to_be_bytes())?;
    let digest = out.hasher.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((meta, out.written + DIGEST_BYTES))
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file {}: {what}", path.display()))
}

/// Reads the metadata of a snapshot file without checking its digest.
pub fn read_meta(path: &Path) -> io::Result<Meta> {
    let mut f = File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    if len < FILE_MAGIC.len() as u64 + LEN_BYTES + DIGEST_BYTES {
        return Err(invalid(path, format!("{len} bytes is too short to be a snapshot")));
    }
    f.seek(SeekFrom::End(-((LEN_BYTES + DIGEST_BYTES) as i64)))?;
    let mut meta_len = [0u8; 8];
    f.read_exact(&mut meta_len)?;
    let meta_len = u64::from_be_bytes(meta_len);
    let meta_start = (len - LEN_BYTES - DIGEST_BYTES)
        .checked_sub(meta_len)
        .filter(|start| *start >= FILE_MAGIC.len() as u64)
        .ok_or_else(|| invalid(path, format!("metadata length {meta_len} does not fit in {len} bytes")))?;
    f.seek(SeekFrom::Start(meta_start))?;
    let mut meta = vec![0u8; meta_len as usize];
    f.read_exact(&mut meta)?;
    bincode::deserialize(&meta).map_err(|e| invalid(path, format!("undecodable metadata: {e}")))
}

/// Checks a snapshot file's digest and returns its metadata and size.
pub fn verify(path: &Path) -> io::Result<(Meta, u64)> {
    let mut f = File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    if len < FILE_MAGIC.len() as u64 + LEN_BYTES + DIGEST_BYTES {
        return Err(invalid(path, format!("{len} bytes is too short to be a snapshot")));
    }
    f.seek(SeekFrom::Start(0))?;
    let mut body = BufReader::with_capacity(IO_BUFFER_BYTES, (&mut f).take(len - DIGEST_BYTES));
    let mut hasher = Sha256::new();
    let mut magic = [0u8; 8];
    body.read_exact(&mut magic)?;
    if magic != *FILE_MAGIC {
        return Err(invalid(path, "not a Cairn snapshot (bad magic)"));
    }
    hasher.update(magic);
    io::copy(&mut body, &mut HashSink(&mut hasher))?;
    drop(body);
    let mut stored = [0u8; DIGEST_BYTES as usize];
    f.read_exact(&mut stored)?;
    if hasher.finalize().as_slice() != stored {
        return Err(invalid(path, "checksum mismatch (truncated or corrupted)"));
    }
    Ok((read_meta(path)?, len))
}

/// The SHA-256 digest a snapshot file ends with.
pub fn digest(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-(DIGEST_BYTES as i64)))?;
    let mut d = [0u8; 32];
    f.read_exact(&mut d)?;
    Ok(d)
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader over the store export inside a snapshot file (for `KvStore::import`).
pub fn data_reader(path: &Path) -> io::Result<impl Read> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)?;
    if magic != *FILE_MAGIC {
        return Err(invalid(path, "not a Cairn snapshot (bad magic)"));
    }
    Ok(BufReader::with_capacity(IO_BUFFER_BYTES, f))
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
