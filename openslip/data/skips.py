"""Bad-sample accounting: why samples were skipped, how many, and when to stop the run.

docs/DESIGN.md, 'Bad input': bad input never kills a run and never passes silently. A sample that cannot be used raises
``BadSample(reason)`` where it is read; the loader catches it, replaces the sample and counts the reason
in a ``SkipCounter``. Counters are plain dicts of ints so that they travel from loader workers to the
main process inside batches, merge across workers and ranks, and go into checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from openslip.errors import DataError

# Reasons used by openslip's readers (others are allowed; these are the documented ones).
SKIP_REASONS: dict[str, str] = {
    "missing_file": "the image file does not exist",
    "unreadable_file": "the image file exists but cannot be read (permissions, a directory, I/O error)",
    "not_a_file": "the path names a FIFO, socket or device, refused without being opened",
    "too_large_file": "the file or tar member is larger than data.max_file_bytes (checked before reading)",
    "empty_file": "the image file has zero bytes",
    "truncated": "the image data ends early (a partial download or copy)",
    "not_an_image": "the bytes are not an image format that Pillow can read",
    "corrupt": "the image header parses but the pixel data cannot be decoded",
    "too_large": "the header claims more pixels than max_pixels (decompression-bomb guard)",
    "out_of_memory": "decoding or converting the image ran out of memory",
    "unsupported_mode": "the pixel format cannot be converted to 8-bit RGB",
    "missing_image": "a shard sample without an image member",
    "missing_caption": "no caption at all (no sidecar file, no caption member)",
    "empty_caption": "every caption is empty or whitespace",
    "bad_caption": "the caption bytes are not valid UTF-8 or not text",
    "bad_shard": "a shard that is missing, truncated or not a tar file (counted once per shard)",
}

# Standard deviations of the one-sided bound in ``check``: the check runs after every batch, so a loose bound
# would sooner or later stop a run whose true rate is just under the threshold (z = 3: 0.13% per look).
SKIP_CHECK_Z = 3.0

_SEEN = "seen"
_SKIP = "skip/"
_CONVERTED = "converted/"
_FALLBACK = "fallback/"


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short key such as ``"truncated"`` (see ``SKIP_REASONS``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts samples seen, samples skipped by reason, and images converted to RGB by source mode.

    ``seen`` counts every sample the loader tried, including the skipped ones, so
    ``rate() = skipped / seen``. Conversions (CMYK, 16-bit, palette, alpha, ...) are information only:
    a converted image is used, not skipped. So are fall-backs: with ``data.decode=device``, the images decoded on
    the CPU instead of by the batch decoder, by why (``png``, ``jpeg_cmyk``, ...; ``decode.device_decodable``).
    """

    def __init__(self) -> None:
        self.seen = 0
        self.skipped: dict[str, int] = {}
        self.converted: dict[str, int] = {}
        self.fallback: dict[str, int] = {}

    # -- counting -----------------------------------------------------------------------------------------------
    def add_seen(self, n: int = 1) -> None:
        self.seen += n

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def convert(self, kind: str, n: int = 1) -> None:
        self.converted[kind] = self.converted.get(kind, 0) + n

    def fall_back(self, why: str, n: int = 1) -> None:
        self.fallback[why] = self.fallback.get(why, 0) + n

    @property
    def total_fallback(self) -> int:
        return sum(self.fallback.values())

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def rate(self) -> float:
        """Fraction of seen samples that were skipped (0.0 before any sample)."""
        return self.total_skipped / self.seen if self.seen else 0.0

    # -- state: a flat dict of ints, mergeable by summation ------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        state = {_SEEN: self.seen}
        state.update({_SKIP + k: v for k, v in sorted(self.skipped.items())})
        state.update({_CONVERTED + k: v for k, v in sorted(self.converted.items())})
        state.update({_FALLBACK + k: v for k, v in sorted(self.fallback.items())})
        return state

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seen, self.skipped, self.converted, self.fallback = 0, {}, {}, {}
        self.update(state)

    def update(self, other: SkipCounter | Mapping[str, int]) -> SkipCounter:
        """Add another counter (or its ``state_dict()``) into this one; returns ``self``."""
        state = other.state_dict() if isinstance(other, SkipCounter) else other
        for key, value in state.items():
            value = int(value)
            if key == _SEEN:
                self.seen += value
            elif key.startswith(_SKIP):
                self.skip(key[len(_SKIP) :], value)
            elif key.startswith(_CONVERTED):
                self.convert(key[len(_CONVERTED) :], value)
            elif key.startswith(_FALLBACK):
                self.fall_back(key[len(_FALLBACK) :], value)
            else:
                raise ValueError(f"unknown skip-counter key {key!r}")
        return self

    @classmethod
    def merged(cls, states: Iterable[SkipCounter | Mapping[str, int]]) -> SkipCounter:
        """Sum of several counters, e.g. one per rank from ``torch.distributed.all_gather_object``."""
        total = cls()
        for state in states:
            total.update(state)
        return total

    def all_reduce(self) -> SkipCounter:
        """The sum over all ranks when ``torch.distributed`` is initialised, else a copy of this counter."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return SkipCounter.merged([self])
        gathered: list[dict[str, int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.state_dict())
        return SkipCounter.merged(s for s in gathered if s is not None)

    # -- reporting ----------------------------------------------------------------------------------------------
    def summary(self) -> str:
        """One line, e.g. ``skipped 37% of 1,000 samples (missing_file: 300, truncated: 70)``."""
        parts = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        text = f"skipped {_percent(self.rate())} of {self.seen:,} samples"
        text += f" ({parts})" if parts else ""
        if self.converted:
            conv = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.converted.items()))
            text += f"; converted to RGB ({conv})"
        if self.fallback:
            text += f"; {self.fallback_summary()}"
        return text

    def fallback_summary(self) -> str:
        """``12 images decoded on the CPU, not by the batch decoder (png: 10, jpeg_cmyk: 2)``."""
        parts = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.fallback.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{self.total_fallback:,} images decoded on the CPU, not by the batch decoder ({parts})"

    def rate_lower_bound(self, z: float = SKIP_CHECK_Z) -> float:
        """Wilson score lower bound of the true skip rate, ``z`` standard deviations below (0 with no samples).

        Unlike the observed rate, it accounts for how few samples were seen: 3 bad of 10 gives 0.07, 30 bad of
        100 gives 0.18, 300 bad of 1,000 gives 0.26."""
        n = self.seen
        if n == 0:
            return 0.0
        p = min(1.0, self.total_skipped / n)
        z2 = z * z
        center = p + z2 / (2 * n)
        half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return max(0.0, (center - half) / (1 + z2 / n))

    def check(self, max_rate: float | None, *, min_samples: int = 100, setting: str = "data.max_skip_rate") -> None:
        """Raise ``DataError`` when the skip rate is significantly above ``max_rate``.

        The test is ``rate_lower_bound() > max_rate`` (Wilson score bound, ``SKIP_CHECK_Z`` standard
        deviations): a short run with many bad files stops, while a few bad files among the first samples of a
        run whose true rate is below the threshold do not. Nothing is checked before ``min_samples`` samples
        were seen or when ``max_rate`` is None.
        """
        if max_rate is None or self.seen < min_samples or self.rate_lower_bound() <= max_rate:
            return
        parts = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        raise DataError(
            f"skipped {_percent(self.rate())} of {self.seen:,} samples ({parts}) — above {setting}={max_rate:g}"
        )

    def __repr__(self) -> str:
        return f"SkipCounter({self.state_dict()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkipCounter) and self.state_dict() == other.state_dict()


def _percent(rate: float) -> str:
    pct = 100.0 * rate
    if pct == 0 or pct >= 10 or pct == int(pct):
        return f"{pct:.0f}%"
    return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"
