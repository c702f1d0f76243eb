"""CLIP BPE tokenizer: ids of the 2021 reference (golden file), truncation modes, round trip, input checks."""

from __future__ import annotations

import copy
import json
import pickle
import random
from pathlib import Path

import pytest
import torch

from openslip import tokenizer as tokenizer_module
from openslip.tokenizer import TRUNCATE_MODES, Tokenizer, clean_text, get_tokenizer

GOLDEN = Path(__file__).parent / "data" / "tokenizer_golden.json"
SOT, EOT = 49406, 49407
_WORDS = "a big brown dog runs after the small red ball in the park while two children laugh".split()
LONG_CAPTION = " ".join(_WORDS[(7 * i) % len(_WORDS)] for i in range(200))  # 200 words


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_constants(tok, golden):
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (SOT, EOT, 49408)
    assert (golden["sot_token_id"], golden["eot_token_id"], golden["vocab_size"]) == (SOT, EOT, 49408)
    assert get_tokenizer() is tok


def test_golden_encode(tok, golden):
    mismatches = [
        (c["text"], tok.encode(c["text"]), c["ids"]) for c in golden["cases"] if tok.encode(c["text"]) != c["ids"]
    ]
    assert not mismatches, f"{len(mismatches)} captions differ from the reference, first: {mismatches[0]!r}"
    assert len(golden["cases"]) >= 150


def test_golden_rows_both_truncation_modes(tok, golden):
    checked = 0
    for case in golden["cases"]:
        text = case["text"]
        for key, row in case.get("rows", {}).items():
            mode, ctx = key.rsplit("_", 1)
            ctx = int(ctx)
            got = tok(text, context_length=ctx, truncate=mode)[0].tolist()
            assert got == row + [0] * (ctx - len(row)), (key, text)
            checked += 1
        # Short captions: both modes give SOT + ids + EOT + padding.
        if len(case["ids"]) <= 75:
            expected = [SOT, *case["ids"], EOT]
            for mode in TRUNCATE_MODES:
                assert tok(text, truncate=mode)[0].tolist() == expected + [0] * (77 - len(expected)), text
    assert checked >= 40


@pytest.mark.parametrize("text", ["", " ", "\t\n  \r\n", "\u3000\u00a0", "&nbsp;"])
def test_empty_and_whitespace(tok, text):
    assert tok.encode(text) == []
    row = tok(text)[0].tolist()
    assert row[:2] == [SOT, EOT] and row[2:] == [0] * 75


def test_special_strings_and_digits(tok):
    assert tok.encode("<|startoftext|>a<|endoftext|>") == [SOT, tok.encode("a")[0], EOT]
    assert tok.encode("<|EndOfText|>") == [EOT]  # cleaning lower-cases first
    assert len(tok.encode("1234")) == 4
    assert tok.encode("1234") == [tok.encode(d)[0] for d in "1234"]


def test_keep_eot_long_caption(tok):
    ids = tok.encode(LONG_CAPTION)
    assert len(ids) > 150
    row = tok([LONG_CAPTION])[0]
    assert row[0].item() == SOT and row[76].item() == EOT
    assert row[1:76].tolist() == ids[:75]
    assert row.argmax().item() == 76  # pooling at the largest id lands on EOT


def test_reference_mode_loses_eot(tok):
    row = tok(LONG_CAPTION, truncate="reference")[0]
    assert EOT not in row.tolist()
    assert row[1:].tolist() == tok.encode(LONG_CAPTION)[:76]
    assert row.argmax().item() == 0  # SOT (49406) is then the largest id: every long caption pools at position 0
    default_ref = Tokenizer(truncate="reference")  # the constructor option sets the default mode
    assert torch.equal(default_ref(LONG_CAPTION), row[None])
    assert torch.equal(default_ref(LONG_CAPTION, truncate="keep_eot"), tok(LONG_CAPTION))


def test_truncation_boundaries(tok):
    for n, same in [(75, True), (76, False), (77, False)]:
        text = " ".join(["a"] * n)
        keep, ref = tok(text)[0], tok(text, truncate="reference")[0]
        assert keep[76].item() == EOT
        assert torch.equal(keep, ref) is same
    assert tok(" ".join(["a"] * 76), truncate="reference")[0, 76].item() == tok.encode("a")[0]


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a dog",
        "two cats sleeping on a red sofa next to the window",
        "supercalifragilisticexpialidocious pneumonoultramicroscopic words",
        "it's 12:30, don't you think? (yes!)",
        "e-mail: someone@example.com #tag",
    ],
)
def test_decode_round_trip(tok, text):
    cleaned = clean_text(text)
    decoded = tok.decode(tok.encode(text))
    assert "".join(decoded.split()) == "".join(cleaned.split())
    if all(ch.isalpha() or ch == " " for ch in cleaned):
        assert decoded.strip() == cleaned
    assert tok.decode(torch.tensor(tok.encode(text))) == decoded


def test_decode_unicode_and_specials(tok):
    assert tok.decode(tok.encode("Café 東京 🐶")).split() == ["café", "東京", "🐶"]
    assert tok.decode([SOT, *tok.encode("a dog"), EOT]) == "<|startoftext|>a dog <|endoftext|>"
    with pytest.raises(ValueError, match="49408"):
        tok.decode([49408])
    with pytest.raises(ValueError):
        tok.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_batch_shape_and_dtype(tok):
    texts = ["a dog", "a cat on a mat", "", LONG_CAPTION]
    for batch in (texts, tuple(texts), (t for t in texts)):
        out = tok(batch)
        assert out.shape == (4, 77) and out.dtype == torch.long
    assert tok("a dog").shape == (1, 77)
    assert tok([]).shape == (0, 77)
    assert torch.equal(tok(texts)[1], tok(texts[1])[0])


@pytest.mark.parametrize("ctx", [2, 5, 16, 32, 100])
def test_other_context_lengths(tok, ctx):
    out = tok(["a dog", LONG_CAPTION], context_length=ctx)
    assert out.shape == (2, ctx)
    ids = tok.encode("a dog")
    short = [SOT, *ids, EOT][:ctx] if len(ids) + 2 <= ctx else [SOT, *ids[: ctx - 2], EOT]
    assert out[0].tolist() == short + [0] * (ctx - len(short))
    assert out[1, -1].item() == EOT and out[1].argmax().item() == ctx - 1
    if ctx == 2:
        assert out.tolist() == [[SOT, EOT], [SOT, EOT]]


def test_bad_inputs(tok):
    with pytest.raises(TypeError, match=r"texts\[1\] is a int, expected str"):
        tok(["a dog", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is a NoneType"):
        tok([None])
    with pytest.raises(TypeError, match="str or a list of str"):
        tok(b"bytes")
    with pytest.raises(TypeError, match="str or a list of str"):
        tok(42)
    with pytest.raises(TypeError, match="encode expects a str"):
        tok.encode(["a"])
    for ctx in (1, 0, -5):
        with pytest.raises(ValueError, match="context_length must be at least 2"):
            tok("a dog", context_length=ctx)
    with pytest.raises(TypeError, match="context_length must be an int"):
        tok("a dog", context_length=7.5)
    with pytest.raises(ValueError, match="'keep_eot', 'reference'"):
        tok("a dog", truncate="left")
    with pytest.raises(ValueError, match="'keep_eot', 'reference'"):
        Tokenizer(truncate="right")


def test_fast_cleaning_path_matches_full_cleaning():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + [" "] * 20 + list("&;<>'") * 3 + ["&amp;", "&lt;", "\r\n"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert clean_text(text) == tokenizer_module._full_clean(text), repr(text)


def test_cache_is_bounded():
    small = Tokenizer(cache_size=8)
    words = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(5) for j in range(5)]
    text = " ".join(words)
    first = small.encode(text)
    assert len(small._cache) <= 8
    assert small.encode(text) == first == get_tokenizer().encode(text)
    uncached = Tokenizer(cache_size=0)
    assert uncached.encode(text) == first and not uncached._cache


def test_pickle_and_copy(tok):
    ref = Tokenizer(truncate="reference")
    for clone in (pickle.loads(pickle.dumps(ref)), copy.copy(ref), copy.deepcopy(ref)):
        assert clone is not ref and clone.truncate == "reference"
        assert torch.equal(clone(LONG_CAPTION), ref(LONG_CAPTION))
    assert len(pickle.dumps(tok)) < 1000  # settings only: the tables are rebuilt (and shared) in the new process
    assert ref._ranks is tok._ranks


def test_benchmark_runs():
    result = tokenizer_module.benchmark_tokenizer(n=20)
    assert result["cold_captions_per_s"] > 0 and result["warm_captions_per_s"] > 0
