"""Which samples make each batch of an epoch, per rank and loader worker, and how a batch is built.

The two plans behind ``openslip.data.loader.TrainLoader`` (see its module docstring for the rules):
``MapPlan`` for map-style sources (a seeded permutation split by position), ``ShardPlan`` for tar shards
(a seeded shard order split into one stream per worker). Both are pure functions of (seed, epoch, rank,
world size, batch size, and for shards the worker count), so a resumed run rebuilds the same batches.

Weighted sources and ``resampled`` (docs/TRAINING.md, 'Weighted sources and resampled shards') change what an
epoch holds, never these rules: a map-style epoch is then ``epoch_order``'s list of indices in place of the
permutation, with the same length; a resampled shard stream draws shard after shard with replacement
(``ShardDraws``) in place of its share of a shuffled list, for a nominal epoch of the shards' total size.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from openslip.data.batch_decode import pack, packed_size
from openslip.data.buffer_ring import batch_buffers, worker_ring
from openslip.data.formats.decode import DEFAULT_DECODE, DecodeOptions
from openslip.data.formats.shards import ShardSource
from openslip.data.skips import BadSample, SkipCounter
from openslip.errors import DataError

Transform = Callable[[Any], Any]
Tokenize = Callable[[list[str]], torch.Tensor]

PACKED_KEY = "image_data"  # a transform output packed into one buffer (see finish_batch)
_MASK64 = (1 << 64) - 1
# Stream tags so that the hashes for different purposes never coincide.
_TAG_PERM, _TAG_REPLACE, _TAG_CAPTION, _TAG_AUGMENT, _TAG_SHARDS = 1, 2, 3, 4, 5
_TAG_MIX, _TAG_PART, _TAG_DRAW = 6, 7, 8


def mix_seed(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps): deterministic, order-sensitive, well spread."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore torch's CPU RNG, ``random`` and ``numpy.random`` on exit (CUDA generators are never touched)."""
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def seed_all(seed: int) -> None:
    """Seed torch's CPU generator, ``random`` and ``numpy.random`` (the RNGs a transform may draw from)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def round_robin(counts: Sequence[int], start: int = 0) -> list[int]:
    """Worker ids in the order ``DataLoader`` yields their results when worker ``i`` has ``counts[i]`` items
    and the cycle starts at worker ``start``."""
    left = list(counts)
    order: list[int] = []
    w = start
    while any(left):
        if left[w]:
            order.append(w)
            left[w] -= 1
        w = (w + 1) % len(left)
    return order


# ---------------------------------------------------------------------------------------------------------------
# Plans: which batches each (logical) worker builds, and how
# ---------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchSettings:
    """What every plan needs to build a batch (shared with the loader, which may change ``seed`` on resume)."""

    transform: Transform
    """Decoded RGB PIL image -> tensor or dict of tensors (e.g. SLIPTransform's image / view1 / view2)."""
    tokenize: Tokenize | None
    """Batch of captions -> LongTensor [B, 77]; None keeps the captions as strings."""
    seed: int
    """Seed of the data order, caption choice and augmentation."""
    rank: int
    """This process's rank."""
    world_size: int
    """Number of ranks."""
    batch_size: int
    """Samples per batch on each rank."""
    max_attempts: int
    """Replacements tried for one bad sample before giving up with DataError."""
    decode: DecodeOptions = DEFAULT_DECODE
    """How images are decoded (size guards, JPEG draft size, EXIF orientation), handed to every ``load_image``."""
    captions: bool = True
    """False: captions are never read (a SimCLR-only run): a sample needs none and batches carry none."""
    resampled: bool = False
    """Samples (map-style) or shards drawn with replacement; epochs become nominal (``epoch_order``, ``ShardDraws``)."""
    view_dtype: torch.dtype = torch.float32
    """The dtype floating-point transform outputs (the CPU views) are stacked in (``TrainLoader(view_dtype=...)``)."""
    ring_slots: int = 0
    """Shared-memory segments each worker reuses for its batches' images (``buffer_ring``); 0: a new one per batch."""


def render_views(transform: Transform, image: Any) -> Any:
    """``transform(image)`` with autograd switched off (``torch.inference_mode``).

    At the demo's 64 px a sample's views take some 600 small torch calls, and autograd's bookkeeping is a good part
    of each one's cost: without it the views cost ≈ 17 % less CPU (docs/PERFORMANCE.md). The views come back as
    inference tensors; ``finish_batch`` stacks them outside inference mode, which gives ordinary tensors that a
    training step may use."""
    with torch.inference_mode():
        return transform(image)


def finish_batch(
    common: BatchSettings, views: list[Any], texts: list[str], ids: list[int], counter: SkipCounter
) -> dict[str, Any]:
    """Stack the transformed samples, tokenize the captions, attach ids and this batch's skip counts. A transform's
    ``image_data`` (data.augment=device: JPEG bytes or pixels of any size) is packed, not stacked
    (``batch_decode.pack``: ``image_data`` uint8 [N] and ``image_index`` long [B, 5]). The images' tensors are
    built in shared memory in a worker, in a segment of its ring when the loader reuses buffers
    (``buffer_ring``; the batch's ``_meta`` then carries the ``lease``). Its CPU time goes in the batch's ``_meta``
    as ``collate_s`` (``openslip bench train`` reports it)."""
    start = time.thread_time()
    samples = views if isinstance(views[0], dict) else [{"image": v} for v in views]
    keys = list(samples[0])
    columns = {k: [s[k] for s in samples] for k in keys}
    stacked = {k: [torch.as_tensor(v) for v in c] for k, c in columns.items() if k != PACKED_KEY}
    dtypes = {k: common.view_dtype if t[0].is_floating_point() else t[0].dtype for k, t in stacked.items()}
    sizes = [
        packed_size(columns[k]) if k == PACKED_KEY else len(stacked[k]) * stacked[k][0].numel() * dtypes[k].itemsize
        for k in keys
    ]
    buffers, lease = batch_buffers(sizes, worker_ring(common.ring_slots))
    batch: dict[str, Any] = {}
    for k, buffer in zip(keys, buffers, strict=True):
        if k == PACKED_KEY:
            batch[PACKED_KEY], batch[PACKED_KEY.replace("data", "index")] = pack(columns[k], out=buffer)
        else:
            out = buffer.view(dtypes[k]).view(len(stacked[k]), *stacked[k][0].shape)
            batch[k] = torch.stack(stacked[k], out=out)  # rounded to view_dtype if that is narrower
    if common.captions and common.tokenize is not None:
        batch["text"] = common.tokenize(texts)
    elif common.captions:
        batch["caption"] = texts
    batch["id"] = torch.tensor(ids, dtype=torch.long)
    batch["_meta"] = {"skips": counter.state_dict(), "collate_s": time.thread_time() - start}
    if lease is not None:
        batch["_meta"]["lease"] = lease
    return batch


def epoch_order(source: Any, seed: int, epoch: int, resampled: bool = False) -> np.ndarray:
    """The source indices of epoch ``epoch``'s positions 0 .. len(source) - 1 (a map-style source).

    - No weights: a permutation of all indices (each sample once per epoch), or with ``resampled`` uniform draws
      with replacement.
    - ``source.weights`` (a weighted ``ConcatSource``): each position draws its part ``k`` with probability
      ``weights[k] / sum(weights)``; the ``j``-th position of part ``k`` takes entry ``j`` of that part's own
      permutations of this epoch, laid end to end (a part drawn more often than its size starts another
      permutation: no sample repeats before every sample of its part came once), or with ``resampled`` a uniform
      draw from the part.
    A pure function of (seed, epoch): a resumed run reads the same order.
    """
    n = len(source)
    weights = getattr(source, "weights", None)
    if weights is None:
        rng = np.random.default_rng([seed & _MASK64, epoch, _TAG_PERM])
        return rng.integers(n, size=n) if resampled else rng.permutation(n)
    p = np.asarray(weights, dtype=np.float64)
    part = np.random.default_rng([seed & _MASK64, epoch, _TAG_MIX]).choice(len(p), size=n, p=p / p.sum())  # [n]
    order = np.empty(n, dtype=np.int64)
    for k, (start, size) in enumerate(zip(source.starts, source.sizes, strict=False)):
        where = np.flatnonzero(part == k)
        rng = np.random.default_rng([seed & _MASK64, epoch, _TAG_PART, k])
        if resampled:
            inside = rng.integers(size, size=len(where))
        else:
            laps = max(1, math.ceil(len(where) / size))
            inside = np.concatenate([rng.permutation(size) for _ in range(laps)])[: len(where)]
        order[where] = start + inside
    return order


class MapPlan:
    """Batches of a map-style source for one rank and one epoch."""

    def __init__(self, source: Any, common: BatchSettings, drop_last: bool) -> None:
        self.source = source
        self.c = common
        self.drop_last = drop_last
        self.n = len(source)
        self.per_rank = self.n // common.world_size
        if self.per_rank == 0:
            raise DataError(f"{self.n} samples cannot be split over {common.world_size} ranks")
        full, rest = divmod(self.per_rank, common.batch_size)
        self.num_batches = full if drop_last or rest == 0 else full + 1
        if self.num_batches == 0:
            raise DataError(
                f"{self.n:,} samples give {self.per_rank:,} per rank, fewer than the batch size {common.batch_size} "
                "(training: lower train.batch_size or add data)"
            )
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm, self._perm_epoch = epoch_order(self.source, self.c.seed, epoch, self.c.resampled), epoch
        return self._perm

    def batches_per_epoch(self, epoch: int) -> int:
        return self.num_batches

    def make_batch(self, epoch: int, b: int) -> dict[str, Any]:
        c = self.c
        perm = self.permutation(epoch)
        lo = b * c.batch_size
        hi = min(lo + c.batch_size, self.per_rank)
        counter = SkipCounter()
        views, texts, ids = [], [], []
        with preserve_rng():
            for i in range(lo, hi):
                pos = c.world_size * i + c.rank  # position in the epoch's permutation
                index, view, text = self._load(epoch, pos, perm, counter)
                views.append(view)
                texts.append(text)
                ids.append(index)
        return finish_batch(c, views, texts, ids, counter)

    def _load(self, epoch: int, pos: int, perm: np.ndarray, counter: SkipCounter) -> tuple[int, Any, str]:
        c = self.c
        index = int(perm[pos])
        for attempt in range(c.max_attempts + 1):
            if attempt:  # replace a bad sample by one at a hashed position of this epoch's permutation
                index = int(perm[mix_seed(c.seed, epoch, pos, attempt, _TAG_REPLACE) % self.n])
            counter.add_seen()
            try:
                record = self.source.record(index)
                captions = record.clean_captions() if c.captions else [""]
                image = record.load_image(c.decode, counter=counter)
            except BadSample as bad:
                counter.skip(bad.reason)
                continue
            text = captions[mix_seed(c.seed, epoch, index, _TAG_CAPTION) % len(captions)]
            seed_all(mix_seed(c.seed, epoch, pos, attempt, _TAG_AUGMENT))
            return index, render_views(c.transform, image), text
        raise DataError(
            f"{c.max_attempts + 1} samples in a row failed to load around permutation position {pos} "
            f"({counter.summary()}); is the data path right?"
        )


class ShardDraws:
    """The shards of one resampled worker stream, as an endless sequence: entry ``d`` is its ``d``-th draw.

    Draw ``d`` of stream ``stream`` of rank ``rank`` in epoch ``epoch`` picks a shard from the hash of those five
    numbers and the seed, so a stream resumes at any draw without replaying the ones before (the resume state is
    the draw index and the sample inside its shard). The shard probabilities are ``probabilities``'s."""

    def __init__(self, cdf: np.ndarray, seed: int, epoch: int, rank: int, stream: int) -> None:
        self.cdf, self.key = cdf, (seed, epoch, rank, stream)

    def __len__(self) -> int:
        return 1 << 62  # endless; the stream's batch quota ends it

    def __getitem__(self, d: int | slice) -> Any:
        if isinstance(d, slice):
            return [self[i] for i in range(*d.indices(len(self)))]
        u = (mix_seed(*self.key, d, _TAG_DRAW) >> 10) / float(1 << 53)  # uniform in [0, 1)
        return min(int(np.searchsorted(self.cdf, u, side="right")), len(self.cdf) - 1)

    @staticmethod
    def probabilities(source: ShardSource, sizes: Sequence[int]) -> np.ndarray:
        """Per shard: the chance one draw picks it. Without weights every non-empty shard alike (each sample as
        likely as in the concatenation, as open_clip's resampling). With weights ``w`` per listed source, a shard
        of source ``k`` (``N_k`` samples) gets ``w_k / N_k``: a draw then gives ``w_k`` samples of source ``k`` per
        unit of the sum on average, so the long-run share of source ``k``'s samples is ``w_k / sum(w)`` whatever
        the shard sizes. Empty shards are never drawn."""
        size = np.asarray(sizes, dtype=np.float64)  # [S]
        p = (size > 0).astype(np.float64)
        if source.weights is not None and source.part_of is not None:
            part = np.asarray(source.part_of)
            totals = np.bincount(part, weights=size, minlength=len(source.weights))  # N_k
            if (totals == 0).any():
                raise DataError(f"listed source {int(np.argmin(totals))} has no samples, so its weight cannot be drawn")
            p *= np.asarray(source.weights)[part] / totals[part]
        return p / p.sum()


class ShardPlan:
    """Batches of a shard source for one rank and one epoch: one stream of shards per logical worker."""

    def __init__(self, source: ShardSource, common: BatchSettings, num_streams: int) -> None:
        self.source = source
        self.c = common
        self.num_streams = num_streams
        self.sizes = source.ensure_sizes()
        if source.weights is not None and not common.resampled:
            raise DataError(
                "weighted shard sources are read by drawing shards with replacement: add data.resampled=true"
            )
        self._cdf = np.cumsum(ShardDraws.probabilities(source, self.sizes)) if common.resampled else None
        if common.resampled:
            if sum(self.sizes) == 0:
                raise DataError("the shards hold no sample")
        elif len(source.urls) < common.world_size:
            raise DataError(
                f"{len(source.urls)} shards cannot be split over {common.world_size} ranks; "
                "write more, smaller shards (openslip data make-shards --shard-size)"
            )
        if not common.resampled and len(source.urls) < common.world_size * num_streams:
            warnings.warn(
                f"{len(source.urls)} shards for {common.world_size} ranks x {num_streams} workers: some workers "
                "get no shard and stay idle",
                stacklevel=3,
            )
        self._cache: dict[int, tuple[list[Any], list[int], int]] = {}
        self._reading = 0  # the stream's shard being read (its index in the stream's list), for error messages

    def layout(self, epoch: int) -> tuple[list[list[int]], list[int], int]:
        """(this rank's shard lists per stream, its batch quota per stream, batches per rank) for ``epoch``."""
        if epoch not in self._cache and self.c.resampled:
            self._cache = {epoch: self._resampled_layout(epoch)}
        if epoch not in self._cache:
            c, S = self.c, len(self.source.urls)
            order = np.random.default_rng([c.seed & _MASK64, epoch, _TAG_SHARDS]).permutation(S)
            streams = [[[] for _ in range(self.num_streams)] for _ in range(c.world_size)]
            for k, shard in enumerate(order):
                streams[k % c.world_size][(k // c.world_size) % self.num_streams].append(int(shard))
            available = [[sum(self.sizes[s] for s in st) // c.batch_size for st in rank] for rank in streams]
            num_batches = min(sum(a) for a in available)
            if num_batches == 0:
                raise DataError(
                    f"the shards give some rank no full batch of {c.batch_size} (sizes {self.sizes[:8]}...); "
                    "use fewer workers, a smaller batch or more samples"
                )
            # The first `num_batches` of this rank's round-robin order decide each stream's quota.
            quota = [0] * self.num_streams
            for w in round_robin(available[c.rank])[:num_batches]:
                quota[w] += 1
            self._cache = {epoch: (streams[c.rank], quota, num_batches)}
        return self._cache[epoch]

    def _resampled_layout(self, epoch: int) -> tuple[list[Any], list[int], int]:
        """A nominal epoch: as many batches per rank as one pass over the shards would give all ranks together
        (their total size / (ranks x batch)), spread evenly over the streams, which draw shards endlessly."""
        c = self.c
        num_batches = sum(self.sizes) // (c.world_size * c.batch_size)
        if num_batches == 0:
            raise DataError(
                f"the shards' {sum(self.sizes)} samples make no batch of {c.batch_size} on each of "
                f"{c.world_size} rank(s): an epoch would be empty; use a smaller batch or more samples"
            )
        quota = [
            num_batches // self.num_streams + (w < num_batches % self.num_streams) for w in range(self.num_streams)
        ]
        assert self._cdf is not None
        streams = [ShardDraws(self._cdf, c.seed, epoch, c.rank, w) for w in range(self.num_streams)]
        return streams, quota, num_batches

    def batches_per_epoch(self, epoch: int) -> int:
        return self.layout(epoch)[2]

    def iterate(
        self, epoch: int, logical: int, count: int, stream_pos: tuple[int, int, int]
    ) -> Iterator[dict[str, Any]]:
        """``count`` batches of stream ``logical`` starting at ``stream_pos = (cycle, shard in list, sample)``."""
        c = self.c
        shards = self.layout(epoch)[0][logical]
        if count == 0:
            return
        if not shards:
            raise DataError(f"worker stream {logical} of rank {c.rank} has batches to make but no shard")
        samples = self._samples(epoch, shards, stream_pos)
        # Like MapPlan's replacement attempts: a stream whose samples all fail (no caption anywhere, every image
        # undecodable) would otherwise read its shards round and round forever.
        failures = 0
        recent = SkipCounter()  # the reasons of the current run of failures, for the message
        for _ in range(count):
            counter = SkipCounter()
            views, texts, ids = [], [], []
            end = stream_pos
            with preserve_rng():
                while len(views) < c.batch_size:
                    if failures > c.max_attempts:
                        shown = shards[max(0, self._reading - 3) : self._reading + 1] if c.resampled else shards[:4]
                        names = ", ".join(os.path.basename(self.source.urls[s]) for s in shown)
                        more = f" and {len(shards) - 4} more" if len(shards) > 4 and not c.resampled else ""
                        raise DataError(
                            f"{failures} samples in a row failed to load in loader stream {logical} of rank {c.rank} "
                            f"(shards {names}{more}): {recent.summary()}; is the data path right?"
                        )
                    item = next(samples)
                    if isinstance(item, str):  # a bad shard, reported by its reason
                        counter.add_seen()
                        counter.skip(item)
                        recent.add_seen()
                        recent.skip(item)
                        failures += 1
                        continue
                    cycle, li, sample = item
                    end = (cycle, li, sample.position + 1)
                    counter.add_seen()
                    try:
                        captions = sample.clean_captions() if c.captions else [""]
                        image = sample.load_image(c.decode, counter=counter)
                    except BadSample as bad:
                        counter.skip(bad.reason)
                        recent.add_seen()
                        recent.skip(bad.reason)
                        failures += 1
                        continue
                    failures, recent = 0, SkipCounter()
                    # a resampled shard may come twice in an epoch, also on two ranks: each draw has its own
                    draw = (c.rank, logical, li) if c.resampled else ()
                    text = captions[mix_seed(c.seed, epoch, sample.id, *draw, _TAG_CAPTION) % len(captions)]
                    seed_all(mix_seed(c.seed, epoch, sample.id, cycle, *draw, _TAG_AUGMENT))
                    views.append(render_views(c.transform, image))
                    texts.append(text)
                    ids.append(sample.id)
            batch = finish_batch(c, views, texts, ids, counter)
            batch["_meta"]["stream"] = [logical, *end]
            yield batch

    def _samples(self, epoch: int, shards: list[int], pos: tuple[int, int, int]) -> Iterator[Any]:
        """(cycle, list index, ShardSample) forever over the stream's shards, from ``pos``; bad shards as reasons."""
        cycle, li, skip = pos
        errors: list[str] = []
        while True:
            good_in_cycle = False
            full_cycle = li == 0 and skip == 0
            while li < len(shards):
                self._reading = li
                for sample in self.source.iter_shard(
                    shards[li], skip=skip, on_error=lambda r, d: errors.append(r), max_bytes=self.c.decode.max_bytes
                ):
                    good_in_cycle = True
                    yield cycle, li, sample
                while errors:
                    yield errors.pop()
                li, skip = li + 1, 0
            if not good_in_cycle and full_cycle:
                raise DataError(f"the shards of worker stream {shards} hold no readable sample")
            cycle, li = cycle + 1, 0
