//! The on-disk (and on-the-wire) form of a Raft snapshot and of a backup.
//!
//! ```text
//! FILE_MAGIC | store export (KvStore::export), zstd-compressed | zero padding | meta (bincode) | meta length (u64 BE) | SHA-256
//! ```
//!
//! The export is compressed (one zstd frame, [`SNAPSHOT_ZSTD_LEVEL`]): uncompressed it
//! was about five times the size of the RocksDB tables it came from, and the latest
//! snapshot stays on disk. Files of the first format (`CAIRNRS1`, export not
//! compressed) are still read, so older backups can be restored.
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

use crate::limits::SNAPSHOT_ZSTD_LEVEL;

/// The magic of files written now: the export is zstd-compressed.
const FILE_MAGIC: &[u8; 8] = b"CAIRNRS2";
/// The magic of the first format, whose export is not compressed (read only).
const FILE_MAGIC_UNCOMPRESSED: &[u8; 8] = b"CAIRNRS1";
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
    let mut compressed = zstd::stream::write::Encoder::new(&mut out, SNAPSHOT_ZSTD_LEVEL)?;
    let meta = export(&mut compressed)?;
    compressed.finish()?;
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
    compressed(path, &magic)?;
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

/// Whether a file with this magic holds a compressed export; an error if the magic
/// is not one of Cairn's.
fn compressed(path: &Path, magic: &[u8; 8]) -> io::Result<bool> {
    match magic {
        m if m == FILE_MAGIC => Ok(true),
        m if m == FILE_MAGIC_UNCOMPRESSED => Ok(false),
        _ => Err(invalid(path, "not a Cairn snapshot (bad magic)")),
    }
}

/// A reader over the store export inside a snapshot file (for `KvStore::import`),
/// decompressed.
pub fn data_reader(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)?;
    let body = BufReader::with_capacity(IO_BUFFER_BYTES, f);
    if compressed(path, &magic)? {
        // One frame: the padding and metadata after it are not part of the export.
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(body)?.single_frame()))
    } else {
        Ok(Box::new(body))
    }
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    fn meta() -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-42-0".to_string(),
        }
    }

    /// 4 MiB that compress well, as a store export does (repeated key prefixes).
    fn export_bytes() -> Vec<u8> {
        (0..65_536u32)
            .flat_map(|i| format!("/registry/pods/default/pod-{i:010}|value-of-{i:08}|\n").into_bytes())
            .collect()
    }

    fn read_export(path: &Path) -> Vec<u8> {
        let mut data = Vec::new();
        data_reader(path).expect("open the export").read_to_end(&mut data).expect("read the export");
        data
    }

    #[test]
    fn the_export_is_stored_compressed_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let data = export_bytes();
        let (_, size) = write(&path, |out| out.write_all(&data).map(|()| meta())).expect("write");
        assert!(size < data.len() as u64 / 4, "{size} bytes on disk for a {}-byte export", data.len());
        assert_eq!(size % ETCD_PAGE_BYTES, DIGEST_BYTES, "etcdctl's size check");
        let (found, verified_size) = verify(&path).expect("verify");
        assert_eq!((found, verified_size), (meta(), size));
        assert!(read_export(&path) == data, "the export reads back byte for byte, and nothing after it");
    }

    #[test]
    fn files_of_the_uncompressed_format_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        let data = export_bytes();
        // The first format, by hand: no compression, no padding needed by the reader.
        let mut out = HashingWriter::new(Vec::new());
        out.write_all(FILE_MAGIC_UNCOMPRESSED).unwrap();
        out.write_all(&data).unwrap();
        let encoded = encode_meta(&meta());
        out.write_all(&encoded).unwrap();
        out.write_all(&(encoded.len() as u64).to_be_bytes()).unwrap();
        let digest = out.hasher.clone().finalize();
        let mut bytes = out.inner;
        bytes.extend_from_slice(&digest);
        std::fs::write(&path, &bytes).unwrap();

        assert_eq!(verify(&path).expect("verify").0, meta());
        let export = read_export(&path);
        assert!(export.starts_with(&data), "the export comes first, uncompressed");
    }

    #[test]
    fn a_changed_byte_or_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let data = export_bytes();
        write(&path, |out| out.write_all(&data).map(|()| meta())).expect("write");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).expect_err("corrupted");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        std::fs::write(&path, b"NOTCAIRN and then some bytes that are long enough to pass the length check").unwrap();
        let err = verify(&path).expect_err("foreign");
        assert!(err.to_string().contains("bad magic"), "{err}");
        assert!(data_reader(&path).is_err());
    }
}
