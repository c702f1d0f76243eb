"""Evaluation datasets: demo-world tasks, ImageFolder trees / CSV files, and retrieval sets, behind one shape.

A classification set is a ``torch`` dataset of ``(image [3, S, S] float, label)`` that also carries what
zero-shot transfer needs: ``classnames``, ``templates`` and the reported ``metric`` (from the catalog,
``openslip.eval.catalog``). A retrieval set is an image set plus the captions of every image.

    ds = open_classification("demo_shapes", split="test", image_size=32)
    ds = open_classification("/data/food101/test", catalog="food101", image_size=224)
    rs = open_retrieval("demo", image_size=32)          # or a manifest, COCO captions, a Karpathy JSON
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from openslip import files
from openslip.data.augment.params import IMAGENET_MEAN, IMAGENET_STD
from openslip.data.augment.views import EvalTransform
from openslip.data.demo.tasks import demo_retrieval, demo_task, demo_task_names
from openslip.data.formats.class_lists import (
    check_templates,
    clean_folder_name,
    is_prompt_json,
    read_classnames,
    read_templates,
)
from openslip.data.formats.decode import decode_image
from openslip.data.formats.labelled_shards import is_shard_set
from openslip.data.formats.open_labelled import open_labelled
from openslip.data.skips import BadSample
from openslip.data.sources import open_source
from openslip.errors import DataError
from openslip.eval.catalog import DEFAULT_PROMPTS, CatalogEntry, get_entry
from openslip.eval.preprocess import ModelInputs, eval_transform

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
DEMO_RETRIEVAL_NAMES = ("demo", "demo_retrieval")

# --- transforms ------------------------------------------------------------------------------------------


class UInt8ToTensor:
    """A uint8 [H, W, 3] array already at the model's size -> normalised float [3, H, W] (demo images)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(image)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std


# --- classification sets ---------------------------------------------------------------------------------


class ImageSet(Dataset):
    """Images with integer labels; ``dataset[i] = (transform(image_i), label_i)``.

    ``identity`` names the exact set (source, split, size, class list) and keys the feature cache.
    """

    def __init__(
        self,
        *,
        name: str,
        labels: np.ndarray,
        classnames: list[str],
        templates: list[str],
        metric: str,
        identity: str,
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classnames = classnames
        self.templates = templates
        self.metric = metric
        self._identity = identity
        self.transform = transform
        # every name of each class to prompt with (a catalog's synonym lists); None: just `classnames`
        self.prompt_names: list[list[str]] | None = None
        self.inputs: ModelInputs | None = None  # the model's recorded inputs, kept when the protocol changes

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Any:
        """The decoded image ``i`` (uint8 array or PIL image), before the transform."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(i)), int(self.labels[i])

    @property
    def identity(self) -> str:
        """The exact set and preprocessing (keys the feature cache)."""
        return f"{self._identity}:{getattr(self.transform, 'key', type(self.transform).__name__)}"

    def with_transform(self, transform: Callable[[Any], torch.Tensor]) -> ImageSet:
        self.transform = transform
        return self

    def for_protocol(self, protocol: str, crop_fraction: float | None = None) -> ImageSet:
        """Resize and crop image files as ``protocol`` does (``openslip.eval.preprocess``); demo images are
        rendered at the model's size and stay as they are."""
        if isinstance(self.transform, EvalTransform):
            self.transform = eval_transform(protocol, self.transform.config.image_size, crop_fraction, self.inputs)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={self.num_classes}, metric={self.metric})"


class DemoImageSet(ImageSet):
    """A demo-world task split, rendered at the model's size on the fly (deterministic per index)."""

    def __init__(self, task: Any, *, metric: str = "top1") -> None:
        super().__init__(
            name=task.name,
            labels=task.labels(),
            classnames=task.classnames,
            templates=task.templates,
            metric=metric,
            identity=f"demo:{task.name}:{task.split}:{task.n}:{task.seed}:{task.image_size}",
            transform=UInt8ToTensor(),
        )
        self.task = task

    def load(self, i: int) -> np.ndarray:
        return self.task.sample(i)["image"]


class FileImageSet(ImageSet):
    """Image files with labels (an ``openslip.data.formats.labelled.LabelledSource``); bad files stop the evaluation."""

    def __init__(self, source: Any, **kwargs: Any) -> None:
        super().__init__(labels=np.asarray(source.labels), **kwargs)
        self.source = source

    def load(self, i: int) -> Any:
        record = self.source.record(i)
        try:
            return record.load_image(self.source.decode)
        except BadSample as err:  # skipping would change the metric; say which file is broken
            raise DataError(f"{record.image}: unreadable image ({err}); fix or remove it") from None


class ArrayImageSet(ImageSet):
    """Images already in memory (uint8 [N, H, W, 3]): demo retrieval images, tests."""

    def __init__(self, images: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


class RecordImageSet(ImageSet):
    """Images of ``openslip.data.sources`` records (manifests, COCO, folders with captions), labels = index."""

    def __init__(self, images: Sequence[Any], **kwargs: Any) -> None:
        super().__init__(labels=np.arange(len(images)), **kwargs)
        self.images = list(images)

    def load(self, i: int) -> Any:
        try:
            return decode_image(self.images[i])
        except BadSample as err:
            raise DataError(f"{self.images[i]}: unreadable image ({err}); fix or remove it") from None


def open_classification(
    spec: str,
    *,
    split: str = "test",
    image_size: int = 224,
    n: int | None = None,
    catalog: str | None = None,
    classnames: str | Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    metric: str | None = None,
    seed: int = 0,
    prompts: str = DEFAULT_PROMPTS,
    protocol: str = "zeroshot",
    crop_fraction: float | None = None,
    inputs: ModelInputs | None = None,
) -> ImageSet:
    """A labelled set: a demo task name, an ImageFolder tree, a CSV/TSV of (image, label), or labelled
    WebDataset shards (``openslip.data.formats.labelled_shards``: KEY.jpg + KEY.cls, classnames.txt beside them).

    Args:
        spec: demo task name (``demo_shapes`` ...), folder, CSV path, or shards (a pattern, .tar, or folder).
        split: the demo split ("train" / "val" / "test"); ignored for files.
        image_size: the model's input size (files are resized and centre-cropped to it as ``protocol`` does).
        n: number of demo images (default per split).
        catalog: a catalog entry (``openslip.eval.catalog``) giving class names, templates and metric.
        classnames: a file (one per line, release class lists as shipped, or a JSON list) or a list of class
            names; overrides the catalog's. A JSON ``{"classnames": [...], "templates": [...]}`` gives both
            (given as ``classnames`` or ``templates``, it fills the other unless that is given too).
        templates: a file or list of prompt templates with one ``{}``; overrides the catalog's.
        metric: the reported metric; overrides the catalog's.
        prompts: the catalog's prompt set: ``reference`` (the 2021 reference's files) or ``clip_benchmark``.
        protocol, crop_fraction: the test-image preprocessing (``openslip.eval.preprocess``); switch it later
            with ``ImageSet.for_protocol``.
        inputs: the model's recorded mean, std and resize (``model_inputs``); default ImageNet's statistics.
    """
    entry = get_entry(catalog, prompts) if catalog else None
    names_file = classnames if isinstance(classnames, (str, os.PathLike)) else None
    temps_file = templates if isinstance(templates, (str, os.PathLike)) else None
    names = read_classnames(names_file) if names_file is not None else classnames
    temps = read_templates(temps_file) if temps_file is not None else templates
    if names is None and temps_file is not None and is_prompt_json(temps_file):
        names, names_file = read_classnames(temps_file), temps_file
    if temps is None and names_file is not None and is_prompt_json(names_file):
        temps = read_templates(names_file)
    if spec in demo_task_names():
        task = demo_task(spec, split, n, seed=seed, image_size=image_size)
        ds: ImageSet = DemoImageSet(task, metric=metric or (entry.metric if entry else "top1"))
        if temps is not None:
            ds.templates = check_templates(list(temps))
        return ds
    path = Path(spec).expanduser()
    if not path.exists() and not is_shard_set(spec):
        raise DataError(
            f"{spec}: neither a demo task ({', '.join(demo_task_names())}) nor an existing folder, CSV file or shards"
        )
    source = _labelled_source(path, entry, names, names_file)
    final_templates = check_templates(list(temps or (entry.templates if entry else DEFAULT_TEMPLATES)))
    final_metric = metric or (entry.metric if entry else "top1")
    if entry is not None and len(source.classes) != entry.num_classes:
        raise DataError(
            f"{spec}: {len(source.classes)} classes, but {entry.title} has {entry.num_classes}; "
            f"expected layout: {entry.layout}"
        )
    identity = f"files:{path.resolve()}:{len(source)}:{image_size}:{'|'.join(source.classes)}"
    ds = FileImageSet(
        source,
        name=entry.name if entry else path.name,
        classnames=list(source.classes),
        templates=final_templates,
        metric=final_metric,
        identity=identity,
        transform=eval_transform(protocol, image_size, crop_fraction, inputs),
    )
    ds.inputs = inputs
    if names is None and entry is not None and entry.classnames is not None:
        ds.prompt_names = entry.prompt_names()  # the reference averages the prompts of all of a class's names
    return ds


def _labelled_source(
    path: Path, entry: CatalogEntry | None, names: Sequence[str] | None, names_file: str | os.PathLike | None = None
) -> Any:
    """The labelled source with ``classes`` = the class names to prompt with, labels indexing them.
    ``names_file``: where ``names`` came from, named by the errors about them."""
    wanted = list(names) if names is not None else (list(entry.classnames) if entry and entry.classnames else None)
    names_from = f" (class names from {Path(names_file).expanduser()})" if names_file is not None else ""
    # class indices in the data are the dataset's own (or the reference's) order, whatever the prompt set's order
    index_classes = entry.index_classes if entry is not None and names is None and wanted is not None else None
    if path.is_file() or is_shard_set(path):
        in_index_order = [wanted[c] for c in index_classes] if index_classes else wanted
        try:  # integer labels index `in_index_order`; names are found in it all the same
            source = open_labelled(path, classes=in_index_order)
        except DataError as err:
            raise DataError(f"{err}{names_from}") from None
        return _relabel(source, list(index_classes), wanted) if index_classes else source
    source = open_labelled(path)
    folders = list(source.classes)
    if wanted is None:
        if all(re.fullmatch(r"\d+", f) for f in folders):  # ROOT/<index>/ without names: folder k is class k
            return _relabel(source, [int(f) for f in folders], [str(i) for i in range(max(map(int, folders)) + 1)])
        source.classes = [clean_folder_name(f) for f in folders]
        return source
    numbered = all(re.fullmatch(r"\d+", f) for f in folders)
    if names is not None and len(names) == len(folders) and not numbered:  # --classnames FILE: sorted folders' names
        source.classes = list(names)
        return source
    mapping = _folder_classes(folders, wanted, entry.class_ids if entry and names is None else None, index_classes)
    if mapping is None:
        unmatched = [f for f in folders if _folder_classes([f], wanted, None) is None][:3] or folders[:3]
        if names_file is not None:  # the user's list: counts differ and the names do not match either
            raise DataError(
                f"{Path(names_file).expanduser()}: {len(wanted)} class names, but {path} has {len(folders)} class "
                f"folders, and folder(s) {', '.join(unmatched)} match none of the names or indices"
            )
        folder_ids = "WordNet id" if entry and entry.name == "imagenet" else "release folder name"
        ids = f", {folder_ids}" if entry and entry.class_ids and names is None else ""
        hint = f"; expected layout: {entry.layout}" if entry else ""
        raise DataError(
            f"{path}: class folder(s) {', '.join(unmatched)} match no class name{ids} or class index "
            f"0..{len(wanted) - 1} of {entry.title if entry else 'the class list'} (pass --classnames FILE){hint}"
        )
    if entry is not None and names is None and len(set(mapping)) < len(wanted):
        warnings.warn(
            f"{path}: {len(set(mapping))} of {entry.title}'s {len(wanted)} classes have a folder; the images are "
            f"still classified among all {len(wanted)} classes",
            stacklevel=2,
        )
    return _relabel(source, mapping, wanted)


def _folder_classes(
    folders: list[str],
    wanted: list[str],
    class_ids: Sequence[str] | None,
    index_classes: Sequence[int] | None = None,
) -> list[int] | None:
    """The class index of each folder, trying in turn the class names (any order of folders, underscores and
    case ignored: 'apple_pie' is 'apple pie'), the dataset's folder ids (ImageNet's 'n01440764'), and class
    indices ('0', '17', '007'; index k is class ``index_classes[k]`` when the dataset's own order is not
    ``wanted``'s); None when no rule places every folder. Names come first because some names are numbers
    (CLEVR counts '3' … '10')."""
    by_name: dict[str, int | None] = {}
    for i, c in enumerate(wanted):
        by_name[_norm(c)] = None if _norm(c) in by_name else i  # a name given twice (ImageNet) places no folder
    mapping = [by_name.get(_norm(clean_folder_name(f)), by_name.get(_norm(f))) for f in folders]
    if all(m is not None for m in mapping):
        return mapping  # type: ignore[return-value]
    if class_ids is not None:
        by_id = {c: i for i, c in enumerate(class_ids)}
        if all(f in by_id for f in folders):
            return [by_id[f] for f in folders]
    if all(re.fullmatch(r"\d+", f) and int(f) < len(wanted) for f in folders):
        return [index_classes[int(f)] if index_classes else int(f) for f in folders]
    return None


def _relabel(source: Any, mapping: list[int], classes: list[str]) -> Any:
    """Point the source's labels (indices of its folders) at ``classes`` through ``mapping``."""
    source.labels = [mapping[lab] for lab in source.labels]
    source.classes = list(classes)
    return source


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# --- retrieval sets --------------------------------------------------------------------------------------


@dataclass
class RetrievalSet:
    """Images and their captions: ``captions[i]`` describe image ``i`` (one or more each)."""

    name: str
    images: ImageSet
    captions: list[list[str]]

    def flat(self) -> tuple[list[str], np.ndarray]:
        """All captions in one list and the image index of each."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self.captions), dtype=np.int64), [len(c) for c in self.captions])
        return texts, owner


def open_retrieval(
    spec: str,
    *,
    split: str = "test",
    image_size: int = 224,
    n: int | None = None,
    image_root: str | None = None,
    caption_keys: str | None = None,
    seed: int = 0,
    crop_fraction: float | None = None,
    inputs: ModelInputs | None = None,
) -> RetrievalSet:
    """``demo`` (the demo world's retrieval split), a Karpathy-split JSON (COCO / Flickr30k, ``split``
    selects its images), or anything ``openslip.data.sources.open_source`` reads with captions (CSV / JSONL
    manifests with one or more caption columns, ``caption_keys="c1,c2"``; COCO captions JSON; folders with
    sidecar .txt captions). Rows naming the same image (one caption per row, as Flickr30k's CSV) are merged
    into one image with all their captions, in first-seen order: counting them as separate images would
    make every other caption of that image a wrong answer."""
    if spec in DEMO_RETRIEVAL_NAMES:
        r = demo_retrieval(split, n or 1000, seed=seed, image_size=image_size)
        images = ArrayImageSet(
            r.images,
            name="demo_retrieval",
            labels=np.arange(len(r.images)),
            classnames=[],
            templates=[],
            metric="recall",
            identity=f"demo_retrieval:{split}:{len(r.images)}:{seed}:{image_size}",
            transform=UInt8ToTensor(),
        )
        return RetrievalSet("demo_retrieval", images, r.captions)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".json" and path.exists() and _is_karpathy(path):
        paths, captions = _read_karpathy(path, split, image_root)
    else:
        options = {"root": image_root} if image_root else {}
        if caption_keys:
            options["caption_keys"] = caption_keys
        source = open_source(spec, **options)
        if not hasattr(source, "record"):
            raise DataError(f"{spec}: retrieval needs a map-style source (a manifest, COCO JSON or folder), not shards")
        images_by_key: dict[Any, Any] = {}
        captions_by_key: dict[Any, list[str]] = {}
        for i in range(len(source)):
            record = source.record(i)
            try:
                caps = record.clean_captions()
            except BadSample as err:
                raise DataError(f"{spec}: sample {record.id} has no usable caption ({err})") from None
            key = record.image if isinstance(record.image, str) else i  # in-memory images are never merged
            images_by_key.setdefault(key, record.image)
            known = captions_by_key.setdefault(key, [])
            known.extend(c for c in caps if c not in known)
        paths, captions = list(images_by_key.values()), list(captions_by_key.values())
    if n is not None:
        paths, captions = paths[:n], captions[:n]
    if not paths:
        raise DataError(f"{spec}: no images for retrieval (split {split!r})")
    images = RecordImageSet(
        paths,
        name=path.stem,
        classnames=[],
        templates=[],
        metric="recall",
        identity=f"retrieval:{path.resolve()}:{split}:{len(paths)}:{image_size}",
        transform=eval_transform("retrieval", image_size, crop_fraction, inputs),
    )
    images.inputs = inputs  # kept by `for_protocol` (converted CLIP weights keep CLIP's statistics)
    return RetrievalSet(path.stem, images, captions)


def _is_karpathy(path: Path) -> bool:
    with files.open_regular(path, "r", error=DataError, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    return '"sentences"' in head or ('"images"' in head and '"annotations"' not in head and '"split"' in head)


def _read_karpathy(path: Path, split: str, image_root: str | None) -> tuple[list[str], list[list[str]]]:
    """Karpathy's dataset_{coco,flickr30k}.json: images[*] = {filepath?, filename, split, sentences[*].raw}."""
    try:
        doc = files.read_json(path, limit=files.METADATA_BYTES, error=DataError)
        items = doc["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a Karpathy-split JSON ({err})") from None
    root = Path(image_root).expanduser() if image_root else path.parent
    paths, captions = [], []
    for item in items:
        if item.get("split") != split:
            continue
        caps = [s["raw"].strip() for s in item.get("sentences", []) if s.get("raw", "").strip()]
        if not caps:
            raise DataError(f"{path}: image {item.get('filename')} has no captions")
        paths.append(str(root / item.get("filepath", "") / item["filename"]))
        captions.append(caps)
    splits = sorted({str(i.get("split")) for i in items})
    if not paths:
        raise DataError(f"{path}: no images in split {split!r}; splits present: {', '.join(splits)}")
    return paths, captions


def split_indices(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, held-out) split of range(n) with ``fraction`` held out (at least one each)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = min(max(int(math.ceil(n * fraction)), 1), n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])
