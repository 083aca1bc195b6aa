//! Full-text index (tantivy, BM25) with the scope and filters as term and range queries.

use std::ops::Bound;

use tantivy::collector::TopDocs;
use tantivy::directory::{Directory, RamDirectory};
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, InvertedIndexRangeQuery, Occur, PhraseQuery, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::catalog::Handle;
use crate::tokenizer::{self, MnemoTokenizer};
use crate::types::{Doc, Filter, Source};
use crate::SearchError;

#[derive(Clone, Copy)]
pub(crate) struct Fields {
    handle: Field,
    tenant: Field,
    source: Field,
    owner: Field,
    conversation: Field,
    role: Field,
    created: Field,
    meta: Field,
    id: Field,
    text: Field,
}

/// The tantivy index (in RAM) and its reader; the writer belongs to the indexer thread.
pub(crate) struct TextIndex {
    index: Index,
    /// The directory holding the index files (shared with `index`).
    dir: RamDirectory,
    reader: IndexReader,
    fields: Fields,
}

/// Files of the index that are always copied besides the segment files.
const META_FILES: [&str; 2] = ["meta.json", ".managed.json"];

/// Metadata pair as one term: the key's length makes the encoding unambiguous.
fn meta_term(k: &str, v: &str) -> String {
    format!("{}:{k}{v}", k.len())
}

/// The smallest string greater than every string starting with `prefix`, if one exists.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let mut n = c as u32 + 1;
        while n <= char::MAX as u32 {
            if let Some(next) = char::from_u32(n) {
                chars.push(next);
                return Some(chars.into_iter().collect());
            }
            n += 1;
        }
    }
    None
}

/// A parsed query text: plain words (any may match, BM25-scored) and quoted phrases (each must
/// match). Parsing never fails: an unclosed quote is read as plain words.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ParsedText {
    pub words: Vec<String>,
    pub phrases: Vec<Vec<(usize, String)>>,
}

pub(crate) fn parse_text(q: &str) -> ParsedText {
    let mut out = ParsedText::default();
    let parts: Vec<&str> = q.split('"').collect();
    let closed = parts.len() % 2 == 1; // an even number of quotes
    for (i, part) in parts.iter().enumerate() {
        let inside = i % 2 == 1 && (closed || i + 1 < parts.len());
        let toks = tokenizer::tokenize(part);
        if inside && !toks.is_empty() {
            let first = toks[0].position;
            out.phrases.push(
                toks.into_iter()
                    .map(|t| (t.position - first, t.text))
                    .collect(),
            );
        } else {
            for t in toks {
                if !out.words.contains(&t.text) {
                    out.words.push(t.text);
                }
            }
        }
    }
    out
}

impl TextIndex {
    fn schema() -> Schema {
        let mut sb = Schema::builder();
        let text_opts = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer::NAME)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        sb.add_u64_field("handle", INDEXED | FAST);
        sb.add_text_field("tenant", STRING);
        sb.add_text_field("source", STRING);
        sb.add_text_field("owner", STRING);
        sb.add_text_field("conversation", STRING);
        sb.add_text_field("role", STRING);
        sb.add_i64_field("created", INDEXED | FAST);
        sb.add_text_field("meta", STRING);
        sb.add_text_field("id", STRING);
        sb.add_text_field("text", text_opts);
        sb.build()
    }

    pub fn new() -> Result<Self, SearchError> {
        let dir = RamDirectory::create();
        let index = Index::create(dir.clone(), Self::schema(), Default::default())?;
        Self::with_index(index, dir)
    }

    fn with_index(index: Index, dir: RamDirectory) -> Result<Self, SearchError> {
        let schema = index.schema();
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| SearchError::BadSnapshot(format!("text index lacks field {name}")))
        };
        let fields = Fields {
            handle: field("handle")?,
            tenant: field("tenant")?,
            source: field("source")?,
            owner: field("owner")?,
            conversation: field("conversation")?,
            role: field("role")?,
            created: field("created")?,
            meta: field("meta")?,
            id: field("id")?,
            text: field("text")?,
        };
        if schema != Self::schema() {
            return Err(SearchError::BadSnapshot(
                "text index schema differs from this build's".into(),
            ));
        }
        index.tokenizers().register(tokenizer::NAME, MnemoTokenizer);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(TextIndex {
            index,
            dir,
            reader,
            fields,
        })
    }

    /// The files of the last commit: `meta.json`, `.managed.json` and every segment file the
    /// commit uses, as (path, bytes). Taken from a point-in-time copy of the directory, so a
    /// merge finishing meanwhile cannot remove a file half-way.
    pub fn committed_files(&self) -> Result<Vec<(String, Vec<u8>)>, SearchError> {
        let copy = RamDirectory::create();
        self.dir.persist(&copy)?;
        let metas = Index::open(copy.clone())?.load_metas()?;
        let mut paths: Vec<std::path::PathBuf> = metas.list_segment_files().into_iter().collect();
        paths.extend(META_FILES.iter().map(std::path::PathBuf::from));
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            if !copy
                .exists(&p)
                .map_err(|e| SearchError::Internal(e.to_string()))?
            {
                continue; // e.g. the delete file of a segment without deletes
            }
            let bytes = copy
                .atomic_read(&p)
                .map_err(|e| SearchError::Internal(e.to_string()))?;
            out.push((p.to_string_lossy().into_owned(), bytes));
        }
        Ok(out)
    }

    /// An index holding `files` (from [`TextIndex::committed_files`]).
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, SearchError> {
        let dir = RamDirectory::create();
        for (path, bytes) in files {
            let p = std::path::Path::new(path);
            if p.components().count() != 1 {
                return Err(SearchError::BadSnapshot(format!(
                    "bad text file name {path:?}"
                )));
            }
            dir.atomic_write(p, bytes)
                .map_err(|e| SearchError::Internal(e.to_string()))?;
        }
        let index = Index::open(dir.clone())
            .map_err(|e| SearchError::BadSnapshot(format!("text index: {e}")))?;
        Self::with_index(index, dir)
    }

    pub fn writer(&self, memory: usize) -> Result<IndexWriter<TantivyDocument>, SearchError> {
        Ok(self
            .index
            .writer_with_num_threads(1, memory.max(15_000_000))?)
    }

    /// Makes everything committed so far visible to searches.
    pub fn reload(&self) -> Result<(), SearchError> {
        Ok(self.reader.reload()?)
    }

    pub fn delete(&self, w: &IndexWriter<TantivyDocument>, handle: Handle) {
        w.delete_term(Term::from_field_u64(self.fields.handle, handle));
    }

    pub fn add(
        &self,
        w: &IndexWriter<TantivyDocument>,
        handle: Handle,
        doc: &Doc,
    ) -> Result<(), SearchError> {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_u64(f.handle, handle);
        d.add_text(f.tenant, &doc.tenant);
        d.add_text(f.source, doc.source.as_str());
        if let Some(o) = &doc.owner {
            d.add_text(f.owner, o);
        }
        if let Some(c) = &doc.conversation_id {
            d.add_text(f.conversation, c);
        }
        if let Some(r) = &doc.role {
            d.add_text(f.role, r);
        }
        d.add_i64(f.created, doc.created_at);
        for (k, v) in &doc.metadata {
            d.add_text(f.meta, meta_term(k, v));
        }
        d.add_text(f.id, &doc.id);
        d.add_text(f.text, &doc.text);
        w.add_document(d)?;
        Ok(())
    }

    /// BM25 search within the scope; returns (handle, score) best first.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        tenant: &str,
        source: Source,
        owner: Option<&str>,
        conversation_id: Option<&str>,
        key_prefix: Option<&str>,
        filter: &Filter,
        text: &ParsedText,
        limit: usize,
    ) -> Result<Vec<(Handle, f32)>, SearchError> {
        let f = &self.fields;
        let term_q = |field: Field, s: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, s),
                IndexRecordOption::WithFreqs,
            ))
        };
        let exact = |field: Field, s: &str| -> (Occur, Box<dyn Query>) {
            (
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(
                        Term::from_field_text(field, s),
                        IndexRecordOption::Basic,
                    )),
                    0.0,
                )),
            )
        };

        let mut matching: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for p in &text.phrases {
            let terms: Vec<(usize, Term)> = p
                .iter()
                .map(|(pos, t)| (*pos, Term::from_field_text(f.text, t)))
                .collect();
            let q: Box<dyn Query> = if terms.len() == 1 {
                let (_, t) = terms.into_iter().next().expect("one term");
                Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs))
            } else {
                Box::new(PhraseQuery::new_with_offset(terms))
            };
            matching.push((Occur::Must, q));
        }
        let words: Vec<(Occur, Box<dyn Query>)> = text
            .words
            .iter()
            .map(|w| (Occur::Should, term_q(f.text, w)))
            .collect();
        if !words.is_empty() {
            let occur = if text.phrases.is_empty() {
                Occur::Must
            } else {
                Occur::Should
            };
            matching.push((occur, Box::new(BooleanQuery::new(words))));
        }
        if matching.is_empty() {
            return Ok(Vec::new());
        }

        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, Box::new(BooleanQuery::new(matching))),
            exact(f.tenant, tenant),
            exact(f.source, source.as_str()),
        ];
        if let Some(o) = owner {
            clauses.push(exact(f.owner, o));
        }
        if let Some(c) = conversation_id {
            clauses.push(exact(f.conversation, c));
        }
        if let Some(r) = &filter.role {
            clauses.push(exact(f.role, r));
        }
        for (k, v) in &filter.metadata {
            clauses.push(exact(f.meta, &meta_term(k, v)));
        }
        if filter.created_after.is_some() || filter.created_before.is_some() {
            let lo = match filter.created_after {
                Some(a) => Bound::Included(Term::from_field_i64(f.created, a)),
                None => Bound::Unbounded,
            };
            let hi = match filter.created_before {
                Some(b) => Bound::Excluded(Term::from_field_i64(f.created, b)),
                None => Bound::Unbounded,
            };
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(RangeQuery::new(lo, hi)), 0.0)),
            ));
        }
        if let Some(p) = key_prefix.filter(|p| !p.is_empty()) {
            let hi = match prefix_upper_bound(p) {
                Some(u) => Bound::Excluded(Term::from_field_text(f.id, &u)),
                None => Bound::Unbounded,
            };
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(InvertedIndexRangeQuery::new(
                        Bound::Included(Term::from_field_text(f.id, p)),
                        hi,
                    )),
                    0.0,
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);

        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        let mut columns = std::collections::HashMap::new();
        for (score, addr) in top {
            let col = match columns.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    searcher
                        .segment_reader(addr.segment_ord)
                        .fast_fields()
                        .u64("handle")?,
                ),
            };
            if let Some(h) = col.first(addr.doc_id) {
                out.push((h, score));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_lenient() {
        let p = parse_text(r#"tea "green tea" cup"#);
        assert_eq!(p.words, ["tea", "cup"]);
        assert_eq!(
            p.phrases,
            vec![vec![(0, "green".to_string()), (1, "tea".to_string())]]
        );
        // Unclosed quote: plain words.
        let p = parse_text(r#"a "b c"#);
        assert_eq!(p.words, ["a", "b", "c"]);
        assert!(p.phrases.is_empty());
        // Operators and brackets are just text.
        let p = parse_text("foo:(bar AND -baz)) [");
        assert_eq!(p.words, ["foo", "bar", "and", "baz"]);
        // A quoted single word is required, like a phrase.
        let p = parse_text(r#""solo" x"#);
        assert_eq!(p.words, ["x"]);
        assert_eq!(p.phrases, vec![vec![(0, "solo".to_string())]]);
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
