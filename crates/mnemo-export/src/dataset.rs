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

/// Rows per row group: about 64–128 MiB of items' text at a few hundred bytes per item,
/// the size Spark and DuckDB read well.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

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

/// Writer settings every file is written with: zstd, row groups of [`ROW_GROUP_ROWS`], and a
/// `created_by` naming mnemo's release, so that the same rows give the same bytes.
fn properties(mnemo_version: &str) -> Result<WriterProperties, ExportError> {
    let level = ZstdLevel::try_new(3).map_err(|e| ExportError::Parquet(e.to_string()))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("mnemo {mnemo_version}"))
        .build())
}

/// Writes one Parquet file in memory from batches of one schema.
pub struct FileWriter {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
}

/// A finished file: its bytes, rows and digest.
#[derive(Debug)]
pub struct WrittenFile {
    /// The file.
    pub bytes: Bytes,
    /// Rows in it.
    pub rows: u64,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
}

impl FileWriter {
    /// A file of `schema`, written by `mnemo_version`.
    pub fn new(schema: SchemaRef, mnemo_version: &str) -> Result<Self, ExportError> {
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties(mnemo_version)?))
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
        let bytes = self
            .writer
            .into_inner()
            .map_err(|e| ExportError::Parquet(e.to_string()))?;
        let sha256 = sha256_hex(&bytes);
        Ok(WrittenFile {
            bytes: Bytes::from(bytes),
            rows,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(n: usize) -> RecordBatch {
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
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.rows, 1010);
        let reader = ParquetRecordBatchReaderBuilder::try_new(a.bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 1010);
        let meta = ParquetRecordBatchReaderBuilder::try_new(a.bytes).unwrap();
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
