//! The dataset's layout: the two tables' schemas, how a Parquet file is written (the same
//! rows always give the same bytes), and the manifest that commits a version.

use crate::ExportError;
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use aws_lc_rs::digest;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

/// The table of conversations.
pub const CONVERSATIONS: &str = "conversations";
/// The table of items.
pub const ITEMS: &str = "items";
/// The current version's manifest, relative to the dataset root; written last.
pub const MANIFEST: &str = "_manifest.json";

/// Rows per row group: about 40–80 MiB of items' text at a few hundred bytes per item, a
/// size Spark and DuckDB read well, and what a writer holds in memory at most.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Bytes of each buffer a file is written into (a file is a list of them, never one growing
/// buffer copied at each doubling).
const CHUNK_BYTES: usize = 8 << 20;

/// A file being written, as a list of buffers.
#[derive(Default)]
struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl std::io::Write for Chunks {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.current.len() == self.current.capacity() {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_BYTES));
                if !full.is_empty() {
                    self.done.push(Bytes::from(full));
                }
            }
            let room = self.current.capacity() - self.current.len();
            let (now, rest) = buf.split_at(room.min(buf.len()));
            self.current.extend_from_slice(now);
            buf = rest;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where version `v`'s manifest is kept beside the current one.
pub fn manifest_of_version(v: u64) -> String {
    format!("_manifests/v{v}.json")
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// `conversations`: one row per exported conversation.
pub static CONVERSATIONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("tenant", false),
        text("user", false),
        text("conversation", false),
        Field::new("created_at", ts(), false),
        Field::new("updated_at", ts(), false),
        text("metadata", false),
    ]))
});

/// `items`: one row per exported item.
pub static ITEMS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("tenant", false),
        text("user", false),
        text("conversation", false),
        text("item", false),
        Field::new("seq", DataType::Int64, false),
        text("parent", true),
        text("type", true),
        text("role", true),
        text("text", false),
        Field::new("created_at", ts(), false),
    ]))
});

/// One data file of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the dataset root.
    pub path: String,
    /// `conversations` or `items`.
    pub table: String,
    /// Rows in the file.
    pub rows: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

/// `_manifest.json`: what one version of a dataset is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// 1 for the first version, then one more per export or refresh.
    pub version: u64,
    /// The store checkpoint the version was read from.
    pub checkpoint: serde_json::Value,
    /// The store it was read from (its URL, without credentials).
    pub source: String,
    /// The mnemo release that wrote it.
    pub mnemo_version: String,
    /// The export's filters (`since`, `until`, `filter`).
    pub filters: serde_json::Value,
    /// `opt-in` or `opt-out`.
    pub consent_policy: String,
    /// Names the pseudonym key (see `crate::pseudonym`).
    pub key_id: String,
    /// Every data file of this version.
    pub files: Vec<FileEntry>,
    /// When the version was committed, milliseconds since the Unix epoch.
    #[serde(default)]
    pub committed_at_ms: i64,
    /// How long files this version superseded stay for readers of older versions.
    #[serde(default)]
    pub grace_seconds: u64,
}

/// SHA-256 in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writer settings every file is written with: zstd level 1 (a third faster than level 3 here,
/// for slightly larger files), row groups of [`ROW_GROUP_ROWS`], and a
/// `created_by` naming mnemo's release, so that the same rows give the same bytes.
fn properties(mnemo_version: &str) -> Result<WriterProperties, ExportError> {
    let level = ZstdLevel::try_new(1).map_err(|e| ExportError::Parquet(e.to_string()))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("mnemo {mnemo_version}"))
        .build())
}

/// Writes one Parquet file in memory from batches of one schema.
pub struct FileWriter {
    writer: ArrowWriter<Chunks>,
    rows: u64,
}

/// A finished file: its bytes, rows and digest.
#[derive(Debug)]
pub struct WrittenFile {
    /// The file, in order.
    pub parts: Vec<Bytes>,
    /// Its length in bytes.
    pub len: u64,
    /// Rows in it.
    pub rows: u64,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
}

impl FileWriter {
    /// A file of `schema`, written by `mnemo_version`.
    pub fn new(schema: SchemaRef, mnemo_version: &str) -> Result<Self, ExportError> {
        let writer =
            ArrowWriter::try_new(Chunks::default(), schema, Some(properties(mnemo_version)?))
                .map_err(|e| ExportError::Parquet(e.to_string()))?;
        Ok(FileWriter { writer, rows: 0 })
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ExportError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| ExportError::Parquet(e.to_string()))
    }

    /// Bytes buffered so far (to cut files at a target size).
    pub fn in_progress_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Finishes the file.
    pub fn finish(self) -> Result<WrittenFile, ExportError> {
        let rows = self.rows;
        let mut chunks = self
            .writer
            .into_inner()
            .map_err(|e| ExportError::Parquet(e.to_string()))?;
        if !chunks.current.is_empty() {
            chunks.done.push(Bytes::from(chunks.current));
        }
        let mut digest = digest::Context::new(&digest::SHA256);
        for part in &chunks.done {
            digest.update(part);
        }
        let sha256 = digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(WrittenFile {
            len: chunks.done.iter().map(|p| p.len() as u64).sum(),
            parts: chunks.done,
            rows,
            sha256,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// `n` rows of the conversations table.
    pub(crate) fn batch(n: usize) -> RecordBatch {
        let s = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>()))
        };
        let ts = || -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from((0..n as i64).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            )
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|_| "t".into()),
            s(&|i| format!("u{}", i % 7)),
            s(&|i| format!("c{}", i % 11)),
            ts(),
            ts(),
            s(&|_| "{}".into()),
        ];
        RecordBatch::try_new(CONVERSATIONS_SCHEMA.clone(), cols).unwrap()
    }

    #[test]
    fn same_rows_same_bytes_and_they_read_back() {
        let write = || {
            let mut w = FileWriter::new(CONVERSATIONS_SCHEMA.clone(), "0.1.0").unwrap();
            w.write(&batch(1000)).unwrap();
            w.write(&batch(10)).unwrap();
            w.finish().unwrap()
        };
        let (a, b) = (write(), write());
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.parts, b.parts);
        let whole = Bytes::from(a.parts.concat());
        assert_eq!(sha256_hex(&whole), a.sha256);
        assert_eq!(a.rows, 1010);
        let reader = ParquetRecordBatchReaderBuilder::try_new(whole.clone())
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 1010);
        let meta = ParquetRecordBatchReaderBuilder::try_new(whole).unwrap();
        assert_eq!(
            meta.metadata().file_metadata().created_by(),
            Some("mnemo 0.1.0")
        );
    }

    #[test]
    fn manifest_names_are_fixed() {
        let m = Manifest {
            version: 2,
            checkpoint: serde_json::json!({"id": "x", "seq": 9}),
            source: "file:///d".into(),
            mnemo_version: "0.1.0".into(),
            filters: serde_json::json!({}),
            consent_policy: "opt-in".into(),
            key_id: "00".into(),
            files: vec![FileEntry {
                path: "items/v2-0.parquet".into(),
                table: ITEMS.into(),
                rows: 1,
                sha256: sha256_hex(b""),
            }],
            committed_at_ms: 0,
            grace_seconds: 0,
        };
        let v = serde_json::to_value(&m).unwrap();
        for k in [
            "version",
            "checkpoint",
            "source",
            "mnemo_version",
            "filters",
            "consent_policy",
            "key_id",
            "files",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(
            v["files"][0]["sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(manifest_of_version(2), "_manifests/v2.json");
    }
}
