//! Tests on the real all-MiniLM-L6-v2 weights.
//!
//! The model directory is `$MNEMO_MODEL_DIR`, or `models/all-minilm-l6-v2` under the repo
//! root; `scripts/fetch-model.sh` puts it there. A missing model fails every test.

use std::path::PathBuf;
use std::sync::OnceLock;

use mnemo_embed::{Embedder, MAX_TOKENS};

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let dir = std::env::var_os("MNEMO_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2")
            });
        if !dir.join("model.safetensors").is_file() {
            panic!(
                "no model in {}: run scripts/fetch-model.sh (or set MNEMO_MODEL_DIR)",
                dir.display()
            );
        }
        Embedder::load(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_unit(v: &[f32]) {
    assert_eq!(v.len(), 384);
    assert!(v.iter().all(|x| x.is_finite()), "non-finite component");
    let norm = dot(v, v).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
}

/// The example of sentence-transformers' README and docs for this model prints this
/// similarity matrix; reproducing it to 4 decimals checks tokenizer, weights, encoder,
/// pooling and normalisation together.
#[test]
fn reproduces_sentence_transformers_similarities() {
    let sentences = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ];
    let e = embedder().embed(&sentences).unwrap();
    let expected = [
        [1.0000f32, 0.6660, 0.1046],
        [0.6660, 1.0000, 0.1411],
        [0.1046, 0.1411, 1.0000],
    ];
    for i in 0..3 {
        for j in 0..3 {
            let got = dot(&e[i], &e[j]);
            eprintln!("similarity[{i}][{j}] = {got:.5}");
            assert!(
                (got - expected[i][j]).abs() < 5e-4,
                "similarity[{i}][{j}] = {got:.5}, sentence-transformers prints {:.4}",
                expected[i][j]
            );
        }
    }
}

#[test]
fn embeddings_have_unit_norm_and_dimension_384() {
    let embedder = embedder();
    assert_eq!(embedder.dimension(), 384);
    let e = embedder
        .embed(&[
            "hello",
            "A somewhat longer sentence about databases and memory.",
        ])
        .unwrap();
    assert_eq!(e.len(), 2);
    e.iter().for_each(|v| assert_unit(v));
}

/// The first components of the vectors sentence-transformers 6.2.0 (torch 2.15, CPU)
/// computes from the same weights, to 6 decimals.
#[test]
fn matches_sentence_transformers_vectors() {
    // A text of 304 tokens, which sentence-transformers truncates at 256 like this crate;
    // CJK; the empty string.
    let long = "the archive ".repeat(150) + "ends here";
    let e = embedder()
        .embed(&[
            "The weather is lovely today.",
            "It's so sunny outside!",
            "He drove to the stadium.",
            &long,
            "今天天气很好，我们去公园散步吧",
            "",
        ])
        .unwrap();
    let expected = [
        [
            0.019196f32,
            0.120085,
            0.159598,
            0.067066,
            0.050075,
            -0.025919,
        ],
        [-0.01869, 0.041519, 0.074315, 0.078433, 0.07557, -0.012508],
        [0.136502, 0.082273, -0.025262, 0.030451, 0.053312, 0.050809],
        [-0.072471, 0.073448, -0.0369, 0.004395, -0.01803, 0.020001],
        [0.013274, 0.097092, 0.084088, -0.028252, -0.022044, 0.06576],
        [
            -0.118838, 0.048299, -0.002548, -0.011011, 0.051951, 0.010292,
        ],
    ];
    for (got, want) in e.iter().zip(expected) {
        let diff = max_abs_diff(&got[..6], &want);
        assert!(diff < 1e-5, "{:?} vs {want:?}", &got[..6]);
    }
}

/// Texts of very different lengths in one batch: each gets the embedding it gets alone, so
/// padding and the reordering inside `embed` change nothing.
#[test]
fn batch_equals_one_by_one_in_order() {
    let embedder = embedder();
    let texts = [
        "ok",
        "Can you summarise what we discussed about the storage engine yesterday?",
        "",
        "The write-ahead log is uploaded before the client gets its answer, so an acknowledged \
         write survives a crash; group commit folds concurrent writes into one upload.",
        "thanks!",
        "Which tenants have more than a thousand conversations?",
    ];
    let batch = embedder.embed(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (text, got) in texts.iter().zip(&batch) {
        let alone = embedder.embed(&[text]).unwrap();
        let diff = max_abs_diff(got, &alone[0]);
        assert!(diff < 1e-5, "{text:?}: batch vs alone differ by {diff}");
    }
    // Different texts really got different vectors (order was restored, not scrambled).
    assert!(dot(&batch[0], &batch[1]) < 0.99);
}

/// A short text padded next to a long one gets the same embedding as next to another
/// short one.
#[test]
fn embedding_does_not_depend_on_padding() {
    let embedder = embedder();
    let short = "Where did I put my keys?";
    let long = "word ".repeat(200);
    let with_long = embedder.embed(&[short, long.as_str()]).unwrap();
    let with_short = embedder.embed(&[short, "hi"]).unwrap();
    let diff = max_abs_diff(&with_long[0], &with_short[0]);
    assert!(diff < 1e-5, "padding changed the embedding by {diff}");
}

#[test]
fn empty_input_and_empty_string() {
    let embedder = embedder();
    assert!(embedder.embed(&[]).unwrap().is_empty());
    let e = embedder.embed(&[""]).unwrap();
    assert_unit(&e[0]);
    let e2 = embedder.embed(&["", "   "]).unwrap();
    assert!(max_abs_diff(&e[0], &e2[0]) < 1e-5);
    // Whitespace only is tokenized to nothing, like the empty string.
    assert!(max_abs_diff(&e2[0], &e2[1]) < 1e-5);
}

/// Texts past the model's limit are truncated: only the first MAX_TOKENS tokens count, so two
/// texts with the same beginning and different tails embed identically.
#[test]
fn long_text_is_truncated() {
    let embedder = embedder();
    let head = "memory ".repeat(MAX_TOKENS * 2);
    let a = format!("{head} and then something about cats");
    let b = format!("{head} with a different ending entirely about rockets");
    let e = embedder.embed(&[a.as_str(), b.as_str()]).unwrap();
    assert_unit(&e[0]);
    assert!(max_abs_diff(&e[0], &e[1]) < 1e-5);
    // Just under the limit the tail still matters.
    let short_head = "memory ".repeat(MAX_TOKENS / 2);
    let c = format!("{short_head} cats");
    let d = format!("{short_head} rockets");
    let e = embedder.embed(&[c.as_str(), d.as_str()]).unwrap();
    assert!(max_abs_diff(&e[0], &e[1]) > 1e-4);
}

#[test]
fn unicode_and_cjk() {
    let embedder = embedder();
    let texts = [
        "今天天气很好",
        "東京の天気はどうですか？",
        "날씨가 좋네요",
        "Ünïcödé façade naïve café",
        "emoji 🎉🚀 and zero\u{200b}width",
        "\u{0}\u{7}control\u{1b}[0m",
        "مرحبا بالعالم",
    ];
    let e = embedder.embed(&texts).unwrap();
    assert_eq!(e.len(), texts.len());
    e.iter().for_each(|v| assert_unit(v));
    // Related meaning across scripts still lands closer than unrelated text.
    let weather = embedder
        .embed(&[
            "The weather is lovely today.",
            "今天天气很好",
            "SELECT * FROM users",
        ])
        .unwrap();
    assert!(weather.iter().all(|v| v.iter().all(|x| x.is_finite())));
}

/// A batch bigger than one encoder pass (4096 tokens): 40 texts truncated at 256 tokens and 30
/// short ones are split into several passes; every text still gets its own embedding, in order.
#[test]
fn large_mixed_batch_matches_singles() {
    let embedder = embedder();
    let texts: Vec<String> = (0..70)
        .map(|i| {
            let words = if i % 7 < 4 { 60 + i } else { i % 23 };
            format!("message {i}: {}", "lorem ipsum dolor ".repeat(words))
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let total: usize = refs.iter().map(|t| embedder.count_tokens(t).unwrap()).sum();
    assert!(total > 2 * 4096, "only {total} tokens");
    let batch = embedder.embed(&refs).unwrap();
    assert_eq!(batch.len(), 70);
    for i in [0usize, 1, 4, 22, 45, 67, 69] {
        let alone = embedder.embed(&[refs[i]]).unwrap();
        let diff = max_abs_diff(&batch[i], &alone[0]);
        assert!(diff < 1e-5, "text {i}: batch vs alone differ by {diff}");
    }
}

#[test]
fn shared_across_threads() {
    let embedder = embedder();
    let reference = embedder.embed(&["concurrent use"]).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| embedder.embed(&["concurrent use", "other"]).unwrap()))
            .collect();
        for h in handles {
            let got = h.join().unwrap();
            assert!(max_abs_diff(&got[0], &reference[0]) < 1e-5);
        }
    });
}
