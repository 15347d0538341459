#!/usr/bin/env python3
"""Makes tests/fixtures/tokenizer/expected.json (the CLIP tokenizer's reference ids on a corpus of
tricky captions) and assets/clip_text_tables.txt (the character tables our text cleaning needs,
taken from Python's html.entities and ftfy 6.3.1 so that they are the references' own data).

References, both fed from OpenAI's bpe_simple_vocab_16e6.txt.gz as shipped with open_clip:
- "openai": open_clip 2.29.0's SimpleTokenizer with OpenAI's special-token spelling
  (`<|startoftext|>`, `<|endoftext|>`) restored, i.e. OpenAI's clip/simple_tokenizer.py:
  ftfy.fix_text, html.unescape twice, whitespace collapse, lower-case, regex, byte-level BPE.
- "hf": transformers 4.46.3 CLIPTokenizer built from a vocab.json/merges.txt derived below from the
  same file (with ftfy installed it cleans with ftfy.fix_text + whitespace + lower-case, no
  html.unescape).

    .venv-fixtures/bin/python scripts/make_tokenizer_fixture.py
"""
import gzip
import html
import html.entities
import json
import os
import tempfile

import ftfy
import ftfy.bad_codecs  # noqa: F401  registers sloppy-windows-1252
import ftfy.chardata as chardata
import open_clip
import regex
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
CONTEXT = 77

CORPUS = [
    "A person riding a motorcycle on a dirt road.",
    "",
    "   ",
    "\t\n  two   spaces\tand\ttabs \n newline  ",
    "Don't stop: it's the dog's toy, isn't it? We'll see, they're here, I'm sure, you've won, he'd go.",
    "DON'T SHOUT, IT'S LOUD",
    "Café crème brûlée at the naïve façade — déjà vu in São Paulo & Zürich.",
    "Cafe\u0301 with a combining accent (NFD) and Cafe\u0301 again",
    "Ελληνικά ΟΔΟΣ, русский текст, 日本語のキャプション, 中文字幕, 한국어, العربية, עברית",
    "emoji 🐶🐱 party 🎉🎉🎉 family 👨\u200d👩\u200d👧 flag 🇫🇷 skin 👍🏽",
    "!!!??? ... --- *** ### $$$ %%% ((nested)) [brackets] {braces} <angles> ~~~ ^^^ |||",
    "Numbers: 3.14159, 1,000,000, 2024-01-31, 42nd street, 7:30pm, 100% and 1/2",
    "Fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &eacute;t&eacute; &copy; 2020",
    "Double escaped &amp;amp; and &amp;lt;tag&amp;gt; and bare &amp ampersand & alone",
    "Numeric &#65;&#x42;&#X43; &#128512; &#150; &#0; and an unknown &foo; entity",
    "A<b>tag</b> line with &amp; and < so ftfy leaves entities alone",
    "\u201cCurly quotes\u201d and \u2018single\u2019 ones, modifier \u02bcapostrophe",
    "Ligatures: ﬁne ﬂowers ﬀ ĳssel, fullwidth ＡＢＣ１２３！ and ideographic\u3000space",
    "Controls\x00in\x07the\x1bmiddle\x7f and C1 \x80 \x93quoted\x94 \x85",
    "ANSI \x1b[31mred\x1b[0m text",
    "non\u00a0breaking\u2003em\u2009thin\u200bzerowidth\u2028linesep\ufeffbom",
    "İstanbul, straße, ǅemal, ΣΊΣΥΦΟΣ",
    "under_score snake_case kebab-case CamelCase e-mail@example.com http://x.org/a?b=c#d",
    "<|startoftext|>literal special tokens<|endoftext|> and hi!<|endoftext|>",
    "<start_of_text>open_clip's spelling<end_of_text>",
    "a " * 100,
    "A very long caption that goes on and on about a cat sitting on a mat next to a dog lying on a rug "
    "beside a fireplace in a cozy living room with wooden floors, a bookshelf full of old books, two "
    "armchairs, a coffee table with a vase of tulips, a window looking out onto a snowy garden, and a "
    "clock on the wall that reads a quarter past seven in the evening.",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis donaudampfschifffahrtsgesellschaftskapitänsmütze",
    "x" * 300,
    "1234567890" * 10,
    "'s 't 're 've 'm 'll 'd ''' 'sss 'hello' rock'n'roll",
    "mixed\U0001F600emoji\U0001F600inside\U0001F600words",
    "Zalgo t̷̢e̵x̶t̸ and math 𝐀𝐁𝐂 ∑∫√∞ ≠ ≤",
]


class OpenAITokenizer(SimpleTokenizer):
    """open_clip's SimpleTokenizer with OpenAI's special-token spelling and regex (OpenAI's
    simple_tokenizer.py differs from open_clip's only in that spelling)."""

    def __init__(self):
        super().__init__()
        for name, sid in (("<|startoftext|>", 49406), ("<|endoftext|>", 49407)):
            self.encoder[name] = sid
            self.cache[name] = name
        for name in ("<start_of_text>", "<end_of_text>"):
            self.encoder.pop(name)
            self.cache.pop(name)
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def ids(self, text):
        """OpenAI's clip.tokenize(text, truncate=True) for one text."""
        tokens = [49406] + self.encode(text) + [49407]
        if len(tokens) > CONTEXT:
            tokens = tokens[:CONTEXT]
            tokens[-1] = 49407
        return tokens + [0] * (CONTEXT - len(tokens))


def hf_tokenizer(tmp):
    """CLIPTokenizer from vocab.json/merges.txt derived from OpenAI's bpe file as in OpenAI's code."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token="<|endoftext|>")


def hf_ids(tok, text):
    ids = tok(text, max_length=CONTEXT, truncation=True)["input_ids"]
    return ids + [0] * (CONTEXT - len(ids))


def cps(s):
    return " ".join(f"{ord(c):x}" for c in s)


def write_tables():
    """The character data our cleaning needs, one entry a line: `kind<TAB>key<TAB>value` with the
    value as hex code points (empty = delete). Kinds: E html5 entity (key = name as in
    html.entities.html5), U (ftfy's all-caps entity names, with ';'), C1 (ftfy fix_c1_controls via sloppy-windows-1252), L (ftfy ligatures),
    W (ftfy width map), X (ftfy control characters removed)."""
    lines = ["# Generated by scripts/make_tokenizer_fixture.py from Python " + ".".join(map(str, __import__("sys").version_info[:3]))
             + " html.entities.html5 and ftfy " + ftfy.__version__ + " (MIT). Format: kind<TAB>key<TAB>hex code points."]
    for name, value in sorted(html.entities.html5.items()):
        lines.append(f"E\t{name}\t{cps(value)}")
    for name, char in sorted(html.entities.html5.items()):
        if name.endswith(";") and name == name.lower():
            upper = "&" + name.upper()
            if html.unescape(upper) == upper:
                lines.append(f"U\t{name.upper()}\t{cps(char.upper())}")
    for b in range(0x80, 0xA0):
        lines.append(f"C1\t{b:x}\t{cps(bytes([b]).decode('sloppy-windows-1252'))}")
    for k, v in sorted(chardata.LIGATURES.items()):
        lines.append(f"L\t{k:x}\t{cps(v)}")
    for k, v in sorted(chardata.WIDTH_MAP.items()):
        lines.append(f"W\t{k:x}\t{cps(v)}")
    for k in sorted(chardata.CONTROL_CHARS):
        lines.append(f"X\t{k:x}\t")
    with open(os.path.join(ROOT, "assets", "clip_text_tables.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_tables()
    openai = OpenAITokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_tokenizer(tmp)
        rows = []
        for text in CORPUS:
            a, h = openai.ids(text), hf_ids(hf, text)
            rows.append({"text": text, "openai": a, "hf": h, "agree": a == h})
    meta = {"open_clip": open_clip.__version__, "transformers": __import__("transformers").__version__, "ftfy": ftfy.__version__, "context": CONTEXT}
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, ensure_ascii=False, indent=0)
    for r in rows:
        if not r["agree"]:
            print("differ:", repr(r["text"][:70]))
    print(f"{len(rows)} rows, {sum(r['agree'] for r in rows)} agree")


if __name__ == "__main__":
    main()
