//! BM25 full text: ranking, phrases, CJK, filters, scope, lenient parsing, updates.

mod common;

use std::collections::BTreeMap;

use common::doc;
use mnemo_search::{
    Doc, Filter, IndexOp, Mode, SearchConfig, SearchError, SearchIndex, SearchQuery, Source,
};

fn index_with(docs: Vec<Doc>) -> SearchIndex {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    index
        .apply(docs.into_iter().map(IndexOp::Upsert).collect())
        .unwrap();
    index
}

fn text_query(text: &str) -> SearchQuery {
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 10);
    q.text = Some(text.into());
    q
}

fn ids(index: &SearchIndex, q: &SearchQuery) -> Vec<String> {
    index.search(q).unwrap().into_iter().map(|h| h.id).collect()
}

#[test]
fn bm25_ranking_sanity() {
    let index = index_with(vec![
        doc("t", Source::Items, "once_long", None,
            "we talked about the garden and then about many other unrelated things like weather trains and music"),
        doc("t", Source::Items, "twice_short", None, "garden garden tools"),
        doc("t", Source::Items, "none", None, "nothing relevant here at all"),
        doc("t", Source::Items, "common1", None, "the cat sat on the mat"),
        doc("t", Source::Items, "common2", None, "the dog sat on the mat"),
        doc("t", Source::Items, "rare", None, "the axolotl sat on the mat"),
    ]);
    // Higher term frequency in a shorter document ranks first; non-matching docs absent.
    assert_eq!(
        ids(&index, &text_query("garden")),
        ["twice_short", "once_long"]
    );
    // A rare term outweighs a common one.
    let got = ids(&index, &text_query("sat axolotl"));
    assert_eq!(got[0], "rare");
    assert_eq!(got.len(), 3);
    // Case-insensitive.
    assert_eq!(ids(&index, &text_query("AXOLOTL")), ["rare"]);
    // Scores are positive and descending.
    let hits = index.search(&text_query("the mat sat")).unwrap();
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(hits.iter().all(|h| h.score > 0.0));
}

#[test]
fn phrase_queries() {
    let index = index_with(vec![
        doc(
            "t",
            Source::Items,
            "phrase",
            None,
            "I love green tea in the morning",
        ),
        doc(
            "t",
            Source::Items,
            "scrambled",
            None,
            "tea is green and I love it",
        ),
        doc("t", Source::Items, "other", None, "coffee please"),
    ]);
    assert_eq!(ids(&index, &text_query("\"green tea\"")), ["phrase"]);
    let mut both = ids(&index, &text_query("green tea"));
    both.sort();
    assert_eq!(both, ["phrase", "scrambled"]);
    // The phrase is required; extra words only add score.
    assert_eq!(ids(&index, &text_query("coffee \"green tea\"")), ["phrase"]);
    assert!(ids(&index, &text_query("\"tea green\"")).is_empty());
}

#[test]
fn cjk_two_character_queries() {
    let index = index_with(vec![
        doc("t", Source::Items, "zh", None, "我明天要去北京大学参加会议"),
        doc("t", Source::Items, "ja", None, "私は東京で寿司を食べました"),
        doc("t", Source::Items, "ko", None, "저는 서울에서 일합니다"),
        doc(
            "t",
            Source::Items,
            "en",
            None,
            "Tokyo and Beijing are big cities",
        ),
    ]);
    assert_eq!(ids(&index, &text_query("北京")), ["zh"]);
    assert_eq!(ids(&index, &text_query("大学")), ["zh"]);
    assert_eq!(ids(&index, &text_query("東京")), ["ja"]);
    assert_eq!(ids(&index, &text_query("寿司")), ["ja"]);
    assert_eq!(ids(&index, &text_query("서울")), ["ko"]);
    // A longer CJK phrase must appear contiguously.
    assert_eq!(ids(&index, &text_query("\"北京大学\"")), ["zh"]);
    assert!(ids(&index, &text_query("\"大学北京\"")).is_empty());
    // Mixed scripts in one query.
    let mut got = ids(&index, &text_query("tokyo 寿司"));
    got.sort();
    assert_eq!(got, ["en", "ja"]);
}

#[test]
fn filters_and_scope() {
    let mut docs = Vec::new();
    for i in 0..20 {
        let mut d = doc(
            "t",
            Source::Items,
            &format!("i{i}"),
            Some(["u1", "u2"][i % 2]),
            "budget meeting notes",
        );
        d.role = Some(["user", "assistant"][(i / 2) % 2].into());
        d.created_at = 100 + i as i64;
        d.conversation_id = Some(format!("c{}", i % 3));
        d.metadata = BTreeMap::from([
            (
                "project".to_string(),
                ["apollo", "zeus"][(i / 4) % 2].to_string(),
            ),
            ("lang".to_string(), "en".to_string()),
        ]);
        docs.push(d);
    }
    for key in [
        "users/u1/prefs/diet",
        "users/u1/prefs/tz",
        "users/u1x/prefs/diet",
        "users/u2/notes",
    ] {
        docs.push(doc(
            "t",
            Source::Memory,
            key,
            Some("u1"),
            "budget preference",
        ));
    }
    let index = index_with(docs);

    let sorted = |mut v: Vec<String>| {
        v.sort_by_key(|s| s[1..].parse::<u32>().unwrap_or(0));
        v
    };
    let base = || {
        let mut q = text_query("budget");
        q.top_k = 100;
        q
    };
    // Role.
    let mut q = base();
    q.filter.role = Some("user".into());
    assert_eq!(
        sorted(ids(&index, &q)),
        ["i0", "i1", "i4", "i5", "i8", "i9", "i12", "i13", "i16", "i17"]
    );
    // Created range: [105, 108).
    let mut q = base();
    q.filter.created_after = Some(105);
    q.filter.created_before = Some(108);
    assert_eq!(sorted(ids(&index, &q)), ["i5", "i6", "i7"]);
    // Metadata: all pairs must match.
    let mut q = base();
    q.filter.metadata = BTreeMap::from([("project".to_string(), "zeus".to_string())]);
    assert_eq!(
        sorted(ids(&index, &q)),
        ["i4", "i5", "i6", "i7", "i12", "i13", "i14", "i15"]
    );
    q.filter.metadata.insert("lang".into(), "fr".into());
    assert!(ids(&index, &q).is_empty());
    // Conversation + owner + role together.
    let mut q = base();
    q.conversation_id = Some("c0".into());
    q.owner = Some("u2".into());
    q.filter = Filter {
        role: Some("assistant".into()),
        ..Filter::default()
    };
    // c0: i0,i3,i6,i9,i12,i15,i18; owner u2 (odd): i3,i9,i15; assistant ((i/2)%2==1): i3, i15
    assert_eq!(sorted(ids(&index, &q)), ["i3", "i15"]);
    // Memory by key prefix ("users/u1/" must not match "users/u1x/...").
    let mut q = base();
    q.source = Source::Memory;
    q.key_prefix = Some("users/u1/".into());
    let mut got = ids(&index, &q);
    got.sort();
    assert_eq!(got, ["users/u1/prefs/diet", "users/u1/prefs/tz"]);
    // Sources are separate.
    q.key_prefix = None;
    assert_eq!(ids(&index, &q).len(), 4);
    let mut q = base();
    q.text = Some("preference".into());
    assert!(ids(&index, &q).is_empty());
}

#[test]
fn lenient_syntax_and_empty_text() {
    let index = index_with(vec![doc(
        "t",
        Source::Items,
        "a",
        None,
        "hello world AND more",
    )]);
    for text in [
        "hello AND (",
        "\"unclosed hello",
        "title:hello",
        "-hello",
        "hello)))",
        "*hello*",
        "hello~2^3",
    ] {
        assert_eq!(ids(&index, &text_query(text)), ["a"], "query {text:?}");
    }
    // Punctuation only: a valid query that matches nothing.
    assert!(ids(&index, &text_query("!!! ???")).is_empty());
    for text in ["", "   \n\t"] {
        assert!(matches!(
            index.search(&text_query(text)),
            Err(SearchError::EmptyQuery(_))
        ));
    }
}

#[test]
fn updates_and_deletes_replace_text() {
    let index = index_with(vec![
        {
            let mut d = doc("t", Source::Items, "x", Some("u"), "original wording");
            d.conversation_id = Some("c".into());
            d
        },
        doc("t", Source::Items, "y", Some("u"), "original too"),
        doc("t", Source::Items, "z", Some("v"), "original from v"),
    ]);
    index
        .apply(vec![IndexOp::Upsert(doc(
            "t",
            Source::Items,
            "x",
            Some("u"),
            "replacement text",
        ))])
        .unwrap();
    let mut got = ids(&index, &text_query("original"));
    got.sort();
    assert_eq!(got, ["y", "z"]);
    assert_eq!(ids(&index, &text_query("replacement")), ["x"]);
    assert_eq!(index.len("t"), 3);
    index
        .apply(vec![IndexOp::DeleteOwner {
            tenant: "t".into(),
            owner: "u".into(),
        }])
        .unwrap();
    assert_eq!(ids(&index, &text_query("original replacement")), ["z"]);
    assert_eq!(index.len("t"), 1);
}
