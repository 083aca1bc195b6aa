//! Segment files on disk: naming, preallocation, scanning, and the chain of blocks a replay
//! reads.

use crate::format::{read_block, BlockInfo, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";

/// The path of segment `number` in `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SUFFIX}"))
}

/// The segments in `dir`, in number order. Leftover temporary files of an interrupted
/// preallocation are not segments.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        if stem.len() == 20 {
            if let Ok(n) = stem.parse::<u64>() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Removes temporary files left by a preallocation that a crash interrupted.
pub(crate) fn remove_temporaries(dir: &Path) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Fsyncs a directory, so that files created, renamed or removed in it stay so after a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes a file under the temporary name `tmp_name` with `fill`, fsyncs it, renames it to
/// `name` and fsyncs the directory: after a crash the file is whole or absent. Returns it open.
fn create_durably(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<File, Error> {
    let tmp = dir.join(tmp_name);
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    fill(&mut file)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Creates segment `number`: header, then zeros up to `size` bytes, all written and
/// fsynced (so that later appends change no file metadata and `fdatasync` writes data only),
/// then renamed into place and the directory fsynced. Returns the open file.
pub(crate) fn preallocate(dir: &Path, number: u64, epoch: u64, size: u64) -> Result<File, Error> {
    let name = format!("{number:020}{SUFFIX}");
    let tmp_name = format!("{number:020}{TMP_SUFFIX}");
    create_durably(dir, &tmp_name, &name, |file| {
        file.write_all(&SegmentHeader { number, epoch }.encode())?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size.saturating_sub(SEGMENT_HEADER_LEN as u64);
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(())
    })
}

/// What a scan of one segment found.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    /// The segment's number.
    pub(crate) number: u64,
    /// Its path.
    pub(crate) path: PathBuf,
    /// The valid prefix: blocks with consecutive ids, in file order.
    pub(crate) blocks: Vec<BlockInfo>,
}

/// Reads a whole segment file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Finds the valid prefix of a segment's bytes: blocks from the header on, each with a
/// matching checksum and an id one above the previous. The first block that fails ends the
/// segment (a torn or never-written tail). A segment whose header is not valid has no blocks
/// (an interrupted creation).
pub(crate) fn scan_bytes(number: u64, path: PathBuf, buf: &[u8]) -> Scan {
    let mut blocks = Vec::new();
    if SegmentHeader::decode(buf).is_some_and(|h| h.number == number) {
        let mut at = SEGMENT_HEADER_LEN;
        while let Some((info, _)) = read_block(buf, at) {
            if let Some(prev) = blocks.last().map(|b: &BlockInfo| b.id) {
                if info.id != prev + 1 {
                    break;
                }
            }
            at += info.len as usize;
            blocks.push(info);
        }
    }
    Scan {
        number,
        path,
        blocks,
    }
}

/// Scans every segment of `dir`.
pub(crate) fn scan_all(dir: &Path) -> Result<Vec<Scan>, Error> {
    let mut out = Vec::new();
    for (number, path) in list(dir)? {
        let buf = read(&path)?;
        out.push(scan_bytes(number, path, &buf));
    }
    Ok(out)
}

const BASE: &str = "BASE";

/// The id after which this log's blocks start, if recorded. A database that had another WAL
/// before (SlateDB's, in the object store) has used ids up to some point; this log's first
/// block comes after them, and no replay looks for the ids before it here.
pub(crate) fn read_base(dir: &Path) -> Result<Option<u64>, Error> {
    let path = dir.join(BASE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a block id"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Records the log's base (see [`read_base`]), durably.
pub(crate) fn write_base(dir: &Path, base: u64) -> Result<(), Error> {
    create_durably(dir, "BASE.tmp", BASE, |f| {
        f.write_all(format!("{base}\n").as_bytes())
    })?;
    Ok(())
}

/// A block a replay must read: which segment, and where.
#[derive(Clone, Debug)]
pub(crate) struct BlockRef {
    /// The segment file.
    pub(crate) path: PathBuf,
    /// The block.
    pub(crate) block: BlockInfo,
}

/// The blocks with ids in `(after, until]` (`until` unbounded when `None`), in id order.
/// They must be exactly `after + 1, after + 2, …`: a missing or repeated id is an error,
/// since it means a block every later one depends on is gone.
pub(crate) fn chain(
    scans: &[Scan],
    after: u64,
    until: Option<u64>,
) -> Result<Vec<BlockRef>, Error> {
    let mut out: Vec<BlockRef> = Vec::new();
    for scan in scans {
        for block in &scan.blocks {
            if block.id <= after || until.is_some_and(|u| block.id > u) {
                continue;
            }
            let expected = out.last().map_or(after + 1, |b| b.block.id + 1);
            if block.id != expected {
                return Err(Error::Gap {
                    expected,
                    found: block.id,
                    segment: scan.path.clone(),
                });
            }
            out.push(BlockRef {
                path: scan.path.clone(),
                block: *block,
            });
        }
    }
    Ok(out)
}

/// The file name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("{number:020}{SUFFIX}")
}
