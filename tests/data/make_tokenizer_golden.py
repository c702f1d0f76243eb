"""Regenerate tests/data/tokenizer_golden.json from the reference CLIP tokenizer (run by hand, not in CI).

    python tests/data/make_tokenizer_golden.py [path/to/open_clip_torch-X-py3-none-any.whl]

The reference is the ``SimpleTokenizer`` class of ``open_clip/tokenizer.py`` taken from an open_clip_torch wheel,
loaded from a temporary directory with importlib (the ``open_clip`` package itself is never imported; that module
needs only ftfy, regex, numpy and torch). open_clip's copy differs from the 2021 CLIP / SLIP ``tokenizer.py`` in
three details, which are put back here so that the golden ids are those of the 2021 code:

- special strings: ``<|startoftext|>`` / ``<|endoftext|>`` (open_clip: ``<start_of_text>`` / ``<end_of_text>``),
  same ids 49406 / 49407;
- whitespace collapse: ``regex.sub(r"\\s+", " ", text)`` (open_clip: ``" ".join(text.split())``);
- truncation: the 2021 ``([SOT] + ids + [EOT])[:context_length]`` (open_clip's ``__call__``, which puts EOT in the
  last position, gives the rows recorded as ``keep_eot``).

The JSON holds, per caption, the reference ``encode`` ids and, for captions longer than a context, the framed rows
(trailing zero padding removed) for each truncation mode.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WHEEL = "/tmp/wh/open_clip_torch-3.3.0-py3-none-any.whl"
CONTEXTS = (77, 16)


def load_reference(wheel: str, workdir: Path):
    with zipfile.ZipFile(wheel) as zf:
        for name in ("open_clip/tokenizer.py", "open_clip/bpe_simple_vocab_16e6.txt.gz"):
            (workdir / Path(name).name).write_bytes(zf.read(name))
    spec = importlib.util.spec_from_file_location("_reference_clip_tokenizer", workdir / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import regex

    tok = module.SimpleTokenizer(bpe_path=str(workdir / "bpe_simple_vocab_16e6.txt.gz"))
    # Put back the 2021 special strings (same ids) and pre-tokeniser.
    renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    for old, new in renames.items():
        tok.encoder[new] = tok.encoder.pop(old)
        tok.decoder[tok.encoder[new]] = new
        tok.cache.pop(old, None)
        tok.cache[new] = new
    tok.pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def clean_2021(text):
        text = module.basic_clean(text)
        return regex.sub(r"\s+", " ", text).strip().lower()

    tok.clean_fn = clean_2021
    assert (tok.sot_token_id, tok.eot_token_id, len(tok.encoder)) == (49406, 49407, 49408)
    return tok


def captions() -> list[str]:
    plain = [
        "a photo of a dog",
        "A Photo Of A Dog.",
        "two cats sleeping on a red sofa next to the window",
        "The quick brown fox jumps over the lazy dog!",
        "an aerial view of new york city at night",
        "close-up of a hummingbird feeding from a flower",
        "a bowl of ramen with egg, pork and green onions",
        "sunset over the mountains, shot on a 35mm camera",
        "people walking in the rain under colourful umbrellas",
        "a child's drawing of a house with a big yellow sun",
        "a",
        "I",
        "x y z",
        "antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "supercalifragilisticexpialidocious is a word",
        "hello_world snake_case and camelCase and SCREAMING_CASE",
        "e-mail me at someone@example.com or visit https://example.org/path?q=1&x=2",
        "#sunset #nofilter @friend",
        "C++ and C# are languages; so is F*",
        'fn main() { println!("hi"); }',
        "[1, 2, 3] -> {'a': 1}",
        "aaaaaaa hahahaha zzzzzzzzzz lololol mmmmmmm ooooooooooo",
        "!!!!!!!! .......... ---------- ???!!!",
        "the the the the dog dog dog",
    ]
    unicode = [
        "café crème brûlée",
        "Crème Brûlée À La Française",
        "naïve coöperation façade",
        "straße und Fußgänger",
        "İstanbul'da bir kedi",
        "ΑΘΗΝΑ είναι η πρωτεύουσα",
        "Москва — столица России",
        "東京タワーの夜景",
        "一只猫坐在桌子上",
        "서울의 밤 풍경",
        "مرحبا بالعالم",
        "שלום עולם",
        "नमस्ते दुनिया",
        "ภาษาไทย",
        "a dog 🐶 and a cat 🐱 playing",
        "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
        "🏳️‍🌈 flag and ❤️ heart",
        "ﬁne ﬂowers (ligatures)",
        "ＬＯＵＤ　ＮＯＩＳＥＳ fullwidth",
        "“curly quotes” and ‘single’ ones",
        "it’s a dog’s life",
        "em—dash en–dash and … ellipsis",
        "½ cup of sugar and x² + y³",
        "٣ arabic-indic digit and ５ fullwidth five and ⅻ",
        "e\u0301 combining acute vs é precomposed",
        "zero\u200bwidth\u200bspace",
        "non\u00a0breaking\u00a0space",
        "soft\u00adhyphen",
        "line\u2028separator and para\u2029separator",
        "next\u0085line",
        "ǅ titlecase and ǆ and Ǆ",
        "Kelvin sign \u212a and long s \u017f and dotless ı",
        "mathematical 𝐛𝐨𝐥𝐝 and 𝔣𝔯𝔞𝔨𝔱𝔲𝔯",
        "\ufeffbyte order mark at start",
        "replacement char \ufffd here",
        "private use \ue000 char",
        "emoji skin tone 👍🏽 thumbs",
        "lone\ud800surrogate and a \ud83d\ude00 surrogate pair",
    ]
    mojibake = [
        "cafÃ©",
        "The cafÃ© is Ã¼ber cool",
        "Ã¢â‚¬Å“quotedÃ¢â‚¬\x9d",
        "Ã¢Å“â€\x9d No problems",
        "â€œmojibake quotesâ€\x9d",
        "Ã¡rbol y niÃ±o",
        "sÃ£o paulo",
        "\u00e2\u0080\u0099 c1 controls",
        "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    ]
    entities = [
        "&amp;amp;",
        "&amp;amp;amp;",
        "&amp;amp;amp;amp;",
        "&lt;b&gt;bold&lt;/b&gt;",
        "<b>bold</b> &amp; tags",
        "line one &amp; more\n<i>line two</i> &amp;amp; end",
        "Tom &amp; Jerry",
        "AT&T and R&D",
        "&",
        "&&&",
        "fish &amp chips",
        "it&#39;s &quot;quoted&quot;",
        "&#x27;hex&#x27; &#128512; &#x1F600;",
        "&nbsp;&nbsp;spaces&nbsp;",
        "&hellip; &mdash; &copy; 2021",
        "&#28;&#11;&#0; odd refs",
        "&notanentity; &amp",
        "&lt;|endoftext|&gt; escaped special",
    ]
    digits = [
        "1234",
        "3.14159",
        "1,000,000 people",
        "room 101 on floor 7",
        "2021-12-23T10:00:00Z",
        "iphone12 pro max 256gb",
        "007",
        "0",
        "a1b2c3",
        "+44 (0)20 7946 0958",
    ]
    punctuation = [
        ".",
        "!!!???",
        "...",
        "--- *** ___",
        "hello, world. how are you?",
        "(parenthesised) [bracketed] {braced}",
        "~`!@#$%^&*()_+-=[]{}|;:'\",.<>/?\\",
        "'quoted' words 'here",
        "'",
        "''",
        "it's",
        "IT'S",
        "don't won't can't",
        "they're we've i'm you'll he'd",
        "THEY'RE WE'VE I'M YOU'LL HE'D",
        "the dog's bone's colour",
        "'s 't 're 've 'm 'll 'd",
        "rock'n'roll",
        "o'clock ma'am y'all",
        "'ſ long-s contraction",
    ]
    whitespace = [
        "",
        " ",
        "   ",
        "\t",
        "\n",
        "\r\n",
        " \t\n\r\x0b\x0c ",
        "\u3000\u00a0\u2003",
        "\x1c\x1d\x1e\x1f",
        "  multiple   spaces   here  ",
        "tabs\tand\ttabs",
        "new\nlines\n\nand\r\ncrlf\rcr",
        "form\x0cfeed and vertical\x0btab",
        "\x00nul\x01soh\x7fdel\x1b[31mred\x1b[0m",
        "  leading and trailing  ",
    ]
    specials = [
        "<|startoftext|>",
        "<|endoftext|>",
        "<|startoftext|>a photo<|endoftext|>",
        "a<|endoftext|>b",
        "a <|endoftext|> b <|endoftext|>",
        "<|STARTOFTEXT|> and <|EndOfText|>",
        "!<|endoftext|>",
        "x!<|endoftext|>",
        "<|endoftext|",
        "<|endoftext|>>",
        "<|ſtartoftext|>",
        "<start_of_text> open_clip's strings <end_of_text>",
        "<|startoftext|><|startoftext|><|endoftext|>",
        "<|endoftext|>" * 80,
    ]
    return plain + unicode + mojibake + entities + digits + punctuation + whitespace + specials


def long_captions() -> list[str]:
    rng = random.Random(0)
    words = (
        "a dog cat runs across the green field with red ball near old tree under blue sky while children play".split()
    )
    out = [" ".join(rng.choice(words) for _ in range(200))]  # 200 words
    out += [" ".join(["a"] * k) for k in (14, 15, 16, 74, 75, 76, 77, 78, 100)]  # boundaries of both contexts
    out += ["a photo of " + "very " * 90 + "big dog"]
    out += ["1234567890" * 10]  # 100 digit tokens
    out += ["pneumonoultramicroscopicsilicovolcanoconiosis" * 12]  # one long word, many BPE tokens
    out += ["東京タワーの夜景と富士山の朝焼け" * 10]
    out += ["&amp;amp; " * 60 + "end"]
    return out


def fuzz_captions(n: int = 30) -> list[str]:
    rng = random.Random(1)
    blocks = [
        (0x20, 0x7E),
        (0x00, 0x20),
        (0xA0, 0x17F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x2000, 0x206F),
        (0x3040, 0x30FF),
        (0x4E00, 0x4E80),
        (0xFF00, 0xFFEF),
        (0x1F300, 0x1F64F),
    ]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(blocks)
            chars.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.3:
            chars.insert(rng.randint(0, len(chars)), rng.choice(["&amp;", "&lt;", "<|endoftext|>", "'s", "  ", "\n"]))
        out.append("".join(chars))
    return out


def main() -> None:
    wheel = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_reference(wheel, Path(tmp))
        cases = []
        texts = captions() + long_captions() + fuzz_captions()
        assert len(set(texts)) == len(texts), "duplicate golden captions"
        for text in texts:
            ids = ref.encode(text)
            case = {"text": text, "ids": ids}
            rows = {}
            for ctx in CONTEXTS:
                if len(ids) + 2 > ctx:
                    framed = [ref.sot_token_id] + ids + [ref.eot_token_id]
                    rows[f"reference_{ctx}"] = framed[:ctx]
                    keep = ref(text, context_length=ctx)[0].tolist()  # open_clip's truncation = keep_eot
                    rows[f"keep_eot_{ctx}"] = keep
            if rows:
                case["rows"] = rows
            cases.append(case)
    golden = {
        "source": f"open_clip {Path(wheel).name} SimpleTokenizer, patched to the 2021 CLIP/SLIP behaviour",
        "vocab_size": 49408,
        "sot_token_id": 49406,
        "eot_token_id": 49407,
        "cases": cases,
    }
    path = HERE / "tokenizer_golden.json"
    # One case per line, so that a regenerated file gives a readable diff.
    head = json.dumps({k: v for k, v in golden.items() if k != "cases"}, ensure_ascii=True)[:-1]
    lines = [json.dumps(case, ensure_ascii=True, separators=(",", ":")) for case in cases]
    path.write_text(head + ',\n"cases":[\n' + ",\n".join(lines) + "\n]}\n")
    print(f"wrote {len(cases)} cases ({sum('rows' in c for c in cases)} long) to {path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
