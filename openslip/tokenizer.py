"""CLIP byte-level BPE tokenizer (49,408 ids, context 77), compatible with the 2021 CLIP / SLIP reference.

A caption goes through four stages:

1. **cleaning** -- ftfy ``fix_text``, ``html.unescape`` twice, strip, every run of whitespace becomes one space,
   lower-case. Captions made only of printable ASCII (plus tab / newline / CR / form feed) and without ``&`` take
   a fast path that gives the same string without calling ftfy (ftfy only removes ASCII control characters,
   rewrites ``\\r`` and unescapes entities in such text; ``test_tokenizer.py`` checks the equivalence).
2. **pre-tokenisation** -- a regular expression splits the text into the special strings ``<|startoftext|>`` /
   ``<|endoftext|>``, the contractions ``'s 't 're 've 'm 'll 'd``, runs of letters, single digits, and runs of
   other non-space characters.
3. **byte-level BPE** -- each piece is UTF-8 encoded, every byte is shown as a printable character (the GPT-2 /
   CLIP byte alphabet), the last symbol is marked with ``</w>``, and the pair with the lowest merge rank is merged
   (all its non-overlapping occurrences, left to right) until no ranked pair is left. Results are cached per piece.
4. **framing** -- ``[SOT] + ids + [EOT]``, zero-padded to ``context_length``.

Truncation of captions with more than ``context_length - 2`` BPE ids:

- ``truncate="keep_eot"`` (default): keep the first ``context_length - 2`` ids and put EOT in the last position,
  so the text tower, which pools at the position of the largest id (EOT, 49407), sees the end of the text.
- ``truncate="reference"``: the 2021 behaviour, ``([SOT] + ids + [EOT])[:context_length]``; EOT is cut off, the
  largest id in the row is then SOT (49406) at position 0 and every long caption gets the same pooled embedding
  (docs/DESIGN.md, 'End of text in long captions'). Use it only for apples-to-apples comparisons with the reference
  code.

The merges file (``assets/bpe_simple_vocab_16e6.txt.gz``) is the CLIP data file as shipped in the MIT-licensed
``open_clip_torch`` wheel; see ``assets/LICENSE-open_clip.txt``.
"""

from __future__ import annotations

import array
import functools
import gzip
import html
import importlib.resources
import os
import random
import re
import time
from collections.abc import Iterable
from itertools import pairwise
from typing import NamedTuple

import ftfy
import regex
import torch

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "TRUNCATE_MODES",
    "Tokenizer",
    "benchmark_tokenizer",
    "clean_text",
    "get_tokenizer",
]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
TRUNCATE_MODES = ("keep_eot", "reference")
# The merges file has a version line, then merges by rank; CLIP uses the first 49152 - 256 - 2 of them so that the
# vocabulary is 256 bytes + 256 end-of-word bytes + merges + 2 specials = 49408 ids.
NUM_MERGES = 49152 - 256 - 2
_ASSET = "bpe_simple_vocab_16e6.txt.gz"

# Pre-tokeniser of the reference (the same alternatives in the same order; IGNORECASE matters for e.g. "'ſ").
_PRETOKEN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
# Any character outside this set sends a caption through ftfy + html.unescape (see module docstring).
_NEEDS_FULL_CLEAN = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")
_WHITESPACE = regex.compile(r"\s+")


def _byte_alphabet() -> list[tuple[int, str]]:
    """The 256 byte values with the printable character standing for each, in vocabulary order.

    Bytes that are visible Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves and
    come first; the other 68 (controls, space, DEL, NBSP, soft hyphen) follow in byte order as U+0100, U+0101, ...
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    hidden = sorted(set(range(256)) - set(visible))
    return [(b, chr(b)) for b in visible] + [(b, chr(0x100 + i)) for i, b in enumerate(hidden)]


def _full_clean(text: str) -> str:
    """The reference cleaning, step by step (any caption)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def clean_text(text: str) -> str:
    """Normalise a caption exactly as the reference tokenizer does before splitting it."""
    if _NEEDS_FULL_CLEAN.search(text) is None:
        return " ".join(text.split()).lower()  # same result as _full_clean here, without ftfy (~20 us)
    return _full_clean(text)


def _check_truncate(truncate: str) -> str:
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"truncate must be one of {', '.join(map(repr, TRUNCATE_MODES))}, got {truncate!r}")
    return truncate


def _check_context_length(context_length: int) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (room for SOT and EOT), got {context_length}")
    return context_length


class _Tables(NamedTuple):
    """Read-only lookup tables built from one merges file, shared by every Tokenizer that uses it."""

    symbol_to_id: dict[str, int]  # vocabulary: byte symbols, byte symbols + "</w>", merged symbols, 2 specials
    ranks: dict[tuple[str, str], int]  # merge pair -> rank (lower merges first)
    byte_to_symbol: dict[int, str]  # str.translate table: Latin-1 decoded byte -> printable stand-in
    id_to_bytes: list[bytes]  # each id's bytes, "</w>" kept literally (decode replaces it after UTF-8 decoding)


@functools.lru_cache(maxsize=4)
def _load_tables(merges_path: str | os.PathLike | None) -> _Tables:
    if merges_path is None:
        data = importlib.resources.files("openslip").joinpath("assets", _ASSET).read_bytes()
    else:
        with open(merges_path, "rb") as f:
            data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")[1 : 1 + NUM_MERGES]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{merges_path or _ASSET}: expected a header line and {NUM_MERGES} 'a b' merge lines")

    alphabet = _byte_alphabet()
    byte_symbols = [c for _, c in alphabet]
    vocab = byte_symbols + [c + END_OF_WORD for c in byte_symbols]
    vocab += [a + b for a, b in merges]
    symbol_to_byte = {c: b for b, c in alphabet}
    id_to_bytes = [bytes(symbol_to_byte[ch] for ch in symbol) for symbol in vocab]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    id_to_bytes += [SOT_TOKEN.encode(), EOT_TOKEN.encode()]
    return _Tables(
        symbol_to_id={symbol: i for i, symbol in enumerate(vocab)},
        ranks={pair: rank for rank, pair in enumerate(merges)},
        byte_to_symbol=dict(alphabet),
        id_to_bytes=id_to_bytes,
    )


class Tokenizer:
    """CLIP byte-level BPE tokenizer.

    ``tok(texts, context_length=77)`` -> LongTensor ``[B, context_length]``; ``tok.encode(text)`` -> BPE ids without
    SOT/EOT; ``tok.decode(ids)`` -> text. Use :func:`get_tokenizer` for the shared instance. The merge tables are
    loaded once per process and merges file (~0.2 s) and shared; each instance has its own word cache.

    Args:
        merges_path: a CLIP merges file (gzipped or plain); ``None`` uses the copy shipped with openslip.
        truncate: default truncation, ``"keep_eot"`` or ``"reference"`` (see the module docstring).
        cache_size: how many words / pieces to keep BPE results for; the cache is emptied when full.
    """

    pad_token_id = 0

    def __init__(
        self,
        merges_path: str | os.PathLike | None = None,
        *,
        truncate: str = "keep_eot",
        cache_size: int = 100_000,
    ) -> None:
        self.truncate = _check_truncate(truncate)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self._merges_path = merges_path
        self._cache_size = cache_size
        tables = _load_tables(merges_path)
        self._symbol_to_id = tables.symbol_to_id
        self._ranks = tables.ranks
        self._byte_to_symbol = tables.byte_to_symbol
        self._id_to_bytes = tables.id_to_bytes
        self.sot_token_id = self._symbol_to_id[SOT_TOKEN]
        self.eot_token_id = self._symbol_to_id[EOT_TOKEN]
        self.vocab_size = len(self._id_to_bytes)
        self._specials = {SOT_TOKEN: (self.sot_token_id,), EOT_TOKEN: (self.eot_token_id,)}
        self._cache: dict[str, tuple[int, ...]] = {}

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, truncate={self.truncate!r})"

    def __reduce__(self):
        # Pickle the settings, not the tables: a spawned DataLoader worker loads them once (~0.2 s).
        return _rebuild, (self._merges_path, self.truncate, self._cache_size)

    # --- BPE ---------------------------------------------------------------------------------------------------

    def _remember(self, key: str, ids: tuple[int, ...]) -> tuple[int, ...]:
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = ids
        return ids

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        """BPE ids of one pre-token."""
        ids = self._specials.get(piece)
        if ids is not None:
            return ids
        word = piece.encode("utf-8").decode("latin-1").translate(self._byte_to_symbol)
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        ranks = self._ranks
        while len(symbols) > 1:
            best_rank, best = NUM_MERGES, None  # NUM_MERGES is above every rank
            for pair in pairwise(symbols):
                rank = ranks.get(pair, NUM_MERGES)
                if rank < best_rank:
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged = []  # merge every occurrence, left to right, without overlaps ("a a a" -> "aa a")
            i, n = 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self._symbol_to_id[s] for s in symbols)

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        """BPE ids of one space-free chunk of cleaned text (cached, as are its pieces)."""
        pieces = _PRETOKEN.findall(chunk)
        if len(pieces) == 1 and pieces[0] == chunk:
            return self._remember(chunk, self._piece_ids(chunk))
        ids: list[int] = []
        cache = self._cache
        for piece in pieces:
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._remember(piece, self._piece_ids(piece))
            ids += piece_ids
        return self._remember(chunk, tuple(ids))

    def _encode_clean(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of cleaned text; stops once at least ``limit`` ids are produced (the rest would be cut).

        No piece contains whitespace and cleaning leaves single spaces only, so splitting at spaces first and
        pre-tokenising each chunk gives the reference pieces; the cache maps chunks (mostly whole words) and pieces
        to ids, so a warm caption costs one dictionary look-up per word. A key's ids are always those of the pieces
        the pre-tokeniser finds in it, whether it was stored as a chunk or as a piece.
        """
        out: list[int] = []
        cache = self._cache
        for chunk in text.split(" "):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._chunk_ids(chunk)
            out += ids
            if limit is not None and len(out) >= limit:
                break
        return out

    # --- public API --------------------------------------------------------------------------------------------

    def clean(self, text: str) -> str:
        """The cleaned, lower-cased text that is split into pieces."""
        return clean_text(text)

    def encode(self, text: str) -> list[int]:
        """BPE ids of one caption, without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._encode_clean(clean_text(text))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of a sequence of ids: each word followed by a space, SOT/EOT/padding decoded as given."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        else:
            ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode expects ints in [0, {self.vocab_size}), got {bad[0]!r}")
        table = self._id_to_bytes
        data = b"".join([table[i] for i in ids])
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def __call__(
        self,
        texts: str | Iterable[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        truncate: str | None = None,
    ) -> torch.Tensor:
        """Tokenize one caption or a list of captions into a LongTensor ``[B, context_length]`` (0-padded)."""
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        else:
            texts = list(texts)
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str: {text!r:.80}")
        ctx = _check_context_length(context_length)
        keep_eot = (self.truncate if truncate is None else _check_truncate(truncate)) == "keep_eot"
        sot, eot = self.sot_token_id, self.eot_token_id
        body = ctx - 2
        flat: list[int] = []
        for text in texts:
            ids = self._encode_clean(clean_text(text), ctx - 1)
            n = len(ids)
            if n <= body:
                flat.append(sot)
                flat += ids
                flat.append(eot)
                flat += [0] * (body - n)
            elif keep_eot:
                flat.append(sot)
                flat += ids[:body]
                flat.append(eot)
            else:  # reference: SOT + the first ctx - 1 ids, EOT cut off
                flat.append(sot)
                flat += ids[: ctx - 1]
        if not flat:
            return torch.zeros(0, ctx, dtype=torch.long)
        # array -> frombuffer is ~3x faster than torch.tensor(list); the tensor keeps the array alive.
        return torch.frombuffer(array.array("q", flat), dtype=torch.long).view(len(texts), ctx)


def _rebuild(merges_path, truncate, cache_size) -> Tokenizer:
    return Tokenizer(merges_path, truncate=truncate, cache_size=cache_size)


@functools.cache
def get_tokenizer(*args: object, **kwargs: object) -> Tokenizer:
    """The shared CLIP tokenizer (built once per process, ~0.3 s). Every openslip model uses it: it takes no
    model name (open_clip's `get_tokenizer("ViT-B-32")` is refused with that answer)."""
    if args or kwargs:
        given = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise TypeError(
            f"openslip.get_tokenizer() takes no model name (got {given}): every openslip model uses the one CLIP "
            "tokenizer, openslip.get_tokenizer()"
        )
    return Tokenizer()


def _benchmark_captions(tok: Tokenizer, n: int, seed: int) -> list[str]:
    """Typical 10-20 word captions drawn from the whole words of the BPE vocabulary (so most words are new)."""
    rng = random.Random(seed)
    words = [s[: -len(END_OF_WORD)] for s in tok._symbol_to_id if s.endswith(END_OF_WORD) and s[:-4].isalpha()]
    words = [w for w in words if w.isascii() and len(w) >= 3]
    starts = ["a photo of", "an image of", "close-up of", "there is", "my friend's", "two", "the"]
    captions = []
    for _ in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(8, 17)))
        caption = f"{rng.choice(starts)} {body}{rng.choice(['.', '', '!', ' at night.'])}"
        captions.append(caption.capitalize() if rng.random() < 0.5 else caption)
    return captions


def benchmark_tokenizer(n: int = 2000, *, batch_size: int = 1, seed: int = 0, unicode: bool = False) -> dict:
    """Captions per second on one CPU thread, for a fresh tokenizer (cold cache) and again (warm cache).

    ``batch_size=1`` times ``tok(caption)`` per caption, as a dataset ``__getitem__`` would; larger values time
    ``tok(list_of_captions)`` as a collate function would. ``unicode=True`` adds an accented word to every caption,
    which sends it through ftfy (the slow cleaning path).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = Tokenizer()
        captions = _benchmark_captions(tok, n, seed)
        if unicode:
            captions = [c + " café naïve" for c in captions]
        batches = [captions[i : i + batch_size] for i in range(0, n, batch_size)]
        if batch_size == 1:
            batches = [b[0] for b in batches]
        result = {"n": n, "batch_size": batch_size, "unicode": unicode}
        for name in ("cold", "warm"):
            start = time.perf_counter()
            for batch in batches:
                tok(batch)
            result[f"{name}_captions_per_s"] = n / (time.perf_counter() - start)
        result["cache_entries"] = len(tok._cache)
        return result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python -m openslip.tokenizer: print the benchmark
    for kwargs in ({}, {"batch_size": 256}, {"unicode": True}):
        print(benchmark_tokenizer(**kwargs))
