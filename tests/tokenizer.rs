//! CLIP's tokenizer against OpenAI's `simple_tokenizer` and Hugging Face's `CLIPTokenizer`
//! (fixture made by scripts/make_tokenizer_fixture.py; see tests/fixtures/tokenizer/README.md).

use mindreader::models::clip_tokenizer::{ClipTokenizer, CONTEXT, END_OF_TEXT, START_OF_TEXT};
use mindreader::testing::fixtures_dir;

struct Row {
    text: String,
    openai: Vec<u32>,
    hf: Vec<u32>,
}

fn corpus() -> Vec<Row> {
    let path = fixtures_dir().join("tokenizer").join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests from the repository root or set MINDREADER_FIXTURES)",
            path.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Row {
            text: r["text"].as_str().unwrap().to_string(),
            openai: ids(&r["openai"]),
            hf: ids(&r["hf"]),
        })
        .collect()
}

#[test]
fn every_corpus_line_matches_openai() {
    let tok = ClipTokenizer::new().unwrap();
    let rows = corpus();
    assert!(rows.len() >= 30, "corpus has {} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let got = tok.tokenize(&row.text, CONTEXT).unwrap();
        if got != row.openai {
            failures.push(format!(
                "{:?}\n  cleaned {:?}\n  got  {:?}\n  want {:?}",
                row.text,
                tok.clean(&row.text),
                got,
                row.openai
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines differ from OpenAI:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn matches_hugging_face_where_the_references_agree() {
    let tok = ClipTokenizer::new().unwrap();
    let agreeing: Vec<_> = corpus().into_iter().filter(|r| r.openai == r.hf).collect();
    assert!(
        agreeing.len() >= 25,
        "only {} lines where OpenAI and HF agree",
        agreeing.len()
    );
    for row in agreeing {
        assert_eq!(
            tok.tokenize(&row.text, CONTEXT).unwrap(),
            row.hf,
            "{:?}",
            row.text
        );
    }
}

#[test]
fn truncation_keeps_end_of_text_last() {
    let tok = ClipTokenizer::new().unwrap();
    let long = "a photo of a cat ".repeat(40);
    let ids = tok.tokenize(&long, CONTEXT).unwrap();
    assert_eq!(ids.len(), CONTEXT);
    assert_eq!(ids[0], START_OF_TEXT);
    assert_eq!(ids[CONTEXT - 1], END_OF_TEXT);
    assert!(ids[1..CONTEXT - 1]
        .iter()
        .all(|&i| i != 0 && i < START_OF_TEXT));
    // The untruncated encoding starts with the same tokens.
    assert_eq!(&tok.encode(&long)[..CONTEXT - 2], &ids[1..CONTEXT - 1]);
}

#[test]
fn empty_text_is_start_end_and_padding() {
    let tok = ClipTokenizer::new().unwrap();
    let mut want = vec![0u32; CONTEXT];
    want[0] = START_OF_TEXT;
    want[1] = END_OF_TEXT;
    assert_eq!(tok.tokenize("", CONTEXT).unwrap(), want);
    assert_eq!(tok.tokenize(" \t\n ", CONTEXT).unwrap(), want);
}

#[test]
fn batch_rows_are_single_tokenizations() {
    let tok = ClipTokenizer::shared().unwrap();
    let texts = ["a dog", "Two cats on a sofa."];
    let batch = tok.tokenize_batch(&texts, CONTEXT).unwrap();
    assert_eq!(batch.len(), 2 * CONTEXT);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            &batch[i * CONTEXT..(i + 1) * CONTEXT],
            tok.tokenize(t, CONTEXT).unwrap().as_slice()
        );
    }
}
