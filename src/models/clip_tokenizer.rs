//! CLIP's text tokenizer: OpenAI's `simple_tokenizer.py`, id for id.
//!
//! `tokenize(text)` = `[49406] + bpe(words(clean(text))) + [49407]`, cut to the context (77) with
//! `<|endoftext|>` kept as the last token, then zero-padded — what `clip.tokenize(…, truncate=True)`
//! returns. The steps:
//!
//! 1. **clean**, as OpenAI's `basic_clean` + `whitespace_clean` + `.lower()`:
//!    `ftfy.fix_text`, `html.unescape` twice, strip, collapse whitespace runs to one space,
//!    lower-case. ftfy is reproduced for what it does to captions (the fixed point of: its own
//!    HTML unescape — skipped on and after a line holding `<` — C1 controls read as Windows-1252,
//!    Latin ligatures split, full/half-width forms to normal width, curly quotes straightened,
//!    ANSI escapes and control characters removed, NFC), with the character tables taken from
//!    Python and ftfy themselves (`assets/clip_text_tables.txt`, made by
//!    `scripts/make_tokenizer_fixture.py`). Not reproduced: ftfy's mojibake repair
//!    (`fix_encoding`, a statistical guesser), so `"cafÃ©"` stays as typed here while OpenAI's
//!    reads it as `"café"`.
//! 2. **words**: OpenAI's regex, `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`.
//!    A literal `<|startoftext|>`/`<|endoftext|>` in the text becomes the special id, as in OpenAI's.
//! 3. **BPE** on each word's UTF-8 bytes with `</w>` on the last symbol, merges by rank from
//!    OpenAI's `bpe_simple_vocab_16e6.txt` (48 894 merges, vocabulary 49 408).
//!
//! The BPE is the `instant-clip-tokenizer` crate (instant-labs, MIT): written to be OpenAI's
//! tokenizer exactly, it embeds OpenAI's vocabulary file (so this works offline with no asset in
//! this repository) and merges with the same lowest-rank-first rule. We call it one word at a time
//! because its own front end differs from OpenAI's: it does no text cleaning, and it spells the
//! special tokens open_clip's way (`<start_of_text>`), so a caption containing that string would
//! otherwise get a special id. Fed single words from our regex it never sees such a string (`_`
//! and `<` split it), and re-splitting one of our words with its regex gives the word back.
//!
//! Checked against OpenAI's tokenizer and Hugging Face's `CLIPTokenizer` on a corpus of tricky
//! captions in `tests/tokenizer.rs` (where the two references differ is listed in
//! `tests/fixtures/tokenizer/README.md`).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// `<|startoftext|>`.
pub const START_OF_TEXT: u32 = 49406;
/// `<|endoftext|>`; also the id CLIP's text transformer pools at (the highest id in a row).
pub const END_OF_TEXT: u32 = 49407;
/// CLIP's context length.
pub const CONTEXT: usize = 77;
/// Ids 0..VOCAB.
pub const VOCAB: usize = 49408;

/// Python's `html.entities.html5` and ftfy 6.3.1's character maps (see the module doc).
static TABLES_TXT: &str = include_str!("../../assets/clip_text_tables.txt");

/// The parsed character tables.
struct Tables {
    /// `html.entities.html5`: name (with its `;` when it has one) → text.
    html5: HashMap<String, String>,
    /// ftfy's entity table: `&name;` for html5 names with `;`, plus its all-caps spellings.
    ftfy_entities: HashMap<String, String>,
    /// ftfy's per-character fixes, in the order it applies them.
    c1: HashMap<char, String>,
    ligatures: HashMap<char, String>,
    width: HashMap<char, String>,
    control: std::collections::HashSet<char>,
}

fn parse_tables() -> std::result::Result<Tables, String> {
    let mut t = Tables {
        html5: HashMap::new(),
        ftfy_entities: HashMap::new(),
        c1: HashMap::new(),
        ligatures: HashMap::new(),
        width: HashMap::new(),
        control: Default::default(),
    };
    let hex_char = |h: &str| {
        u32::from_str_radix(h, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or(format!("bad code point {h:?}"))
    };
    for (n, line) in TABLES_TXT
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.is_empty())
    {
        let mut parts = line.split('\t');
        let (kind, key, value) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let value: String = value
            .split(' ')
            .filter(|h| !h.is_empty())
            .map(hex_char)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", n + 1))?;
        match kind {
            "E" => {
                if key.ends_with(';') {
                    t.ftfy_entities.insert(format!("&{key}"), value.clone());
                }
                t.html5.insert(key.to_string(), value);
            }
            "U" => {
                t.ftfy_entities.insert(format!("&{key}"), value);
            }
            "C1" => {
                t.c1.insert(hex_char(key)?, value);
            }
            "L" => {
                t.ligatures.insert(hex_char(key)?, value);
            }
            "W" => {
                t.width.insert(hex_char(key)?, value);
            }
            "X" => {
                t.control.insert(hex_char(key)?);
            }
            other => return Err(format!("line {}: unknown kind {other:?}", n + 1)),
        }
    }
    Ok(t)
}

/// OpenAI's CLIP tokenizer. Building one parses the vocabulary (tens of milliseconds): build it
/// once and reuse it; it is `Sync`.
pub struct ClipTokenizer {
    bpe: instant_clip_tokenizer::Tokenizer,
    tables: Tables,
    words: Regex,
    whitespace: Regex,
    html_charref: Regex,
    ftfy_entity: Regex,
    ansi_escape: Regex,
}

impl ClipTokenizer {
    /// The tokenizer with OpenAI's vocabulary (embedded in the binary: no file, no network).
    pub fn new() -> Result<ClipTokenizer> {
        let re = |p: &str| {
            Regex::new(p).map_err(|e| Error::Invalid(format!("clip tokenizer regex: {e}")))
        };
        Ok(ClipTokenizer {
            bpe: instant_clip_tokenizer::Tokenizer::new(),
            tables: parse_tables()
                .map_err(|e| Error::Invalid(format!("assets/clip_text_tables.txt: {e}")))?,
            // OpenAI's pattern (re.IGNORECASE is moot: the text is lower-cased first).
            words: re(
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
            )?,
            whitespace: re(r"\s+")?,
            // Python's html._charref.
            html_charref: re(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")?,
            // ftfy's HTML_ENTITY_RE.
            ftfy_entity: re(r"&#?[0-9A-Za-z]{1,24};")?,
            // ftfy's ANSI_RE.
            ansi_escape: re(r"\x1b\[((?:\d|;)*)([a-zA-Z])")?,
        })
    }

    /// One shared tokenizer for the process.
    pub fn shared() -> Result<&'static ClipTokenizer> {
        static SHARED: OnceLock<std::result::Result<ClipTokenizer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| ClipTokenizer::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Invalid(e.clone()))
    }

    /// OpenAI's cleaning: `whitespace_clean(basic_clean(text)).lower()`.
    pub fn clean(&self, text: &str) -> String {
        let text = self.fix_text(text);
        let text = self.html_unescape(&self.html_unescape(&text));
        let text = self.whitespace.replace_all(text.trim(), " ");
        text.trim().to_lowercase()
    }

    /// The BPE ids of `text` without the start/end tokens or any length limit.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = self.clean(text);
        let mut ids = Vec::new();
        let mut buf = Vec::new();
        for word in self.words.find_iter(&text).map(|m| m.as_str()) {
            match word {
                "<|startoftext|>" => ids.push(START_OF_TEXT),
                "<|endoftext|>" => ids.push(END_OF_TEXT),
                _ => {
                    buf.clear();
                    self.bpe.encode(word, &mut buf);
                    ids.extend(buf.iter().map(|t| u32::from(t.to_u16())));
                }
            }
        }
        ids
    }

    /// `[SOT] + encode(text) + [EOT]`, cut to `context` keeping EOT last, zero-padded to `context`.
    pub fn tokenize(&self, text: &str, context: usize) -> Result<Vec<u32>> {
        if context < 2 {
            return Err(Error::Invalid(format!(
                "clip tokenizer: context {context} cannot hold <|startoftext|> and <|endoftext|>"
            )));
        }
        let mut ids = Vec::with_capacity(context);
        ids.push(START_OF_TEXT);
        ids.extend(self.encode(text));
        ids.truncate(context - 1);
        ids.push(END_OF_TEXT);
        ids.resize(context, 0);
        Ok(ids)
    }

    /// Rows of `tokenize(text, context)`, flattened `[texts.len(), context]` row-major.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], context: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(texts.len() * context);
        for t in texts {
            out.extend(self.tokenize(t.as_ref(), context)?);
        }
        Ok(out)
    }

    /// ftfy.fix_text without mojibake repair: per line, the steps repeated until nothing changes.
    fn fix_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        // ftfy turns HTML unescaping off for good at the first line containing '<'.
        let mut unescape = true;
        for segment in text.split_inclusive('\n') {
            unescape &= !segment.contains('<');
            let mut s = segment.to_string();
            loop {
                let before = s.clone();
                if unescape {
                    s = self.ftfy_unescape(&s);
                }
                s = self.char_fixes(&s);
                s = self.ansi_escape.replace_all(&s, "").into_owned();
                s.retain(|c| !self.tables.control.contains(&c));
                s = s.nfc().collect();
                if s == before {
                    break;
                }
            }
            out.push_str(&s);
        }
        out
    }

    /// ftfy's fix_c1_controls, fix_latin_ligatures, fix_character_width and uncurl_quotes, in
    /// that order (fix_line_breaks is left out: the whitespace collapse makes it moot).
    fn char_fixes(&self, s: &str) -> String {
        let map = |s: &str, table: &HashMap<char, String>| -> String {
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                match table.get(&c) {
                    Some(r) => o.push_str(r),
                    None => o.push(c),
                }
            }
            o
        };
        let s = map(s, &self.tables.c1);
        let s = map(&s, &self.tables.ligatures);
        let s = map(&s, &self.tables.width);
        s.chars()
            .map(|c| match c {
                '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                '\u{201c}'..='\u{201f}' => '"',
                c => c,
            })
            .collect()
    }

    /// ftfy's unescape_html: only `&…;` forms; names from html5 or their all-caps spellings;
    /// numeric references only when Python's html.unescape consumes the whole match.
    fn ftfy_unescape(&self, s: &str) -> String {
        if !s.contains('&') {
            return s.to_string();
        }
        self.ftfy_entity
            .replace_all(s, |c: &Captures| {
                let m = &c[0];
                if let Some(v) = self.tables.ftfy_entities.get(m) {
                    return v.clone();
                }
                if m.starts_with("&#") {
                    let u = self.html_unescape(m);
                    if !u.contains(';') {
                        return u;
                    }
                }
                m.to_string()
            })
            .into_owned()
    }

    /// Python's `html.unescape`, rule for rule (HTML5 named references with the longest-prefix
    /// rule for names without `;`, numeric references with the Windows-1252 and invalid
    /// code point rules).
    fn html_unescape(&self, s: &str) -> String {
        if !s.contains('&') {
            return s.to_string();
        }
        self.html_charref
            .replace_all(s, |c: &Captures| self.charref(&c[1]))
            .into_owned()
    }

    fn charref(&self, s: &str) -> String {
        if let Some(num) = s.strip_prefix('#') {
            let (digits, radix) = match num.strip_prefix(['x', 'X']) {
                Some(h) => (h, 16),
                None => (num, 10),
            };
            // Python's int() is unbounded: anything that does not fit is past 0x10FFFF.
            let n = u64::from_str_radix(digits.trim_end_matches(';'), radix).unwrap_or(u64::MAX);
            if n == 0 {
                return "\u{fffd}".into();
            }
            if n == 0x0d {
                return "\r".into();
            }
            if (0x80..=0x9f).contains(&n) {
                // Python's _invalid_charrefs = Windows-1252 for 0x80–0x9F (undefined bytes stay).
                if let Some(r) = char::from_u32(n as u32).and_then(|c| self.tables.c1.get(&c)) {
                    return r.clone();
                }
            }
            if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
                return "\u{fffd}".into();
            }
            let invalid = matches!(n, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
                || (n & 0xfffe) == 0xfffe;
            if invalid {
                return String::new();
            }
            return char::from_u32(n as u32)
                .map(String::from)
                .unwrap_or_else(|| "\u{fffd}".into());
        }
        if let Some(v) = self.tables.html5.get(s) {
            return v.clone();
        }
        // The longest name that is a prefix (at least 2 characters), the rest kept as text.
        let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        for &end in bounds.iter().skip(2).rev() {
            if let Some(v) = self.tables.html5.get(&s[..end]) {
                return format!("{v}{}", &s[end..]);
            }
        }
        format!("&{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_follows_python() {
        let t = ClipTokenizer::new().unwrap();
        let cases = [
            ("&amp;", "&"),
            ("&amp", "&"),
            ("&notit;", "¬it;"),
            ("&#65;&#x42;&#X43", "ABC"),
            ("&#150;", "\u{2013}"),
            ("&#0;", "\u{fffd}"),
            ("&#1;x", "x"),
            ("&#99999999999999999999;", "\u{fffd}"),
            ("&foo; & alone", "&foo; & alone"),
        ];
        for (input, want) in cases {
            assert_eq!(t.html_unescape(input), want, "{input}");
        }
    }

    #[test]
    fn clean_collapses_whitespace_and_lowercases() {
        let t = ClipTokenizer::new().unwrap();
        assert_eq!(
            t.clean("  Hello\t\nWORLD  &amp;amp; ﬁne “Q”  "),
            "hello world & fine \"q\""
        );
        assert_eq!(t.clean(""), "");
    }

    #[test]
    fn short_context_is_an_error() {
        assert!(ClipTokenizer::new().unwrap().tokenize("a", 1).is_err());
    }
}
