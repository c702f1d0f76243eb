"""The built-in demo world: determinism, disjoint splits, captions that agree with labels and pixels, tasks."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np
import pytest

from openslip.data.demo.captions import NOISE_KINDS
from openslip.data.demo.render import render_scene
from openslip.data.demo.scene import COLOUR_RGB, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, position_class
from openslip.data.demo.tasks import DEMO_TASKS, demo_retrieval, demo_task, demo_task_names
from openslip.data.demo.world import (
    DemoWorld,
    DemoWorldConfig,
    benchmark_demo_world,
    generate_sample,
    open_demo_source,
    stream_id,
)
from openslip.errors import ConfigError

SIZE_WORDS = {"small": {"small", "little", "tiny"}, "large": {"large", "big", "huge"}}


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_same_seed_and_index_give_the_same_sample():
    a, b = DemoWorld(DemoWorldConfig(seed=3)), DemoWorld(DemoWorldConfig(seed=3))
    for i in (0, 1, 17, 99_999):
        sa, sb = a[i], b.sample(i)
        assert np.array_equal(sa["image"], sb["image"])
        assert (sa["caption"], sa["captions"], sa["labels"]) == (sb["caption"], sb["captions"], sb["labels"])
        assert sa["id"] == i


def test_different_indices_and_seeds_give_different_images():
    world = DemoWorld()
    digests = {_digest(world[i]["image"]) for i in range(64)}
    assert len(digests) == 64
    other = DemoWorld(DemoWorldConfig(seed=1))
    assert not np.array_equal(world[5]["image"], other[5]["image"])


def test_splits_tasks_and_retrieval_never_share_an_image():
    seen: dict[str, str] = {}
    groups = {split: [DemoWorld.split(split)[i]["image"] for i in range(150)] for split in ("train", "val", "test")}
    groups["task"] = [demo_task("demo_shapes", "test", n=80)[i][0] for i in range(80)]
    groups["probe"] = [demo_task("demo_shapes", "train", n=80)[i][0] for i in range(80)]
    groups["retrieval"] = list(demo_retrieval("test", n=40, captions_per_image=1).images)
    for name, images in groups.items():
        for image in images:
            key = _digest(image)
            assert seen.setdefault(key, name) == name, f"an image of {name} also occurs in {seen[key]}"


def test_split_constructor_and_sizes():
    val = DemoWorld.split("val", DemoWorldConfig(seed=2, image_size=32))
    assert (val.config.split, val.config.seed, val.config.image_size, len(val)) == ("val", 2, 32, 5000)
    assert len(DemoWorld.split("train")) == 100_000
    assert len(DemoWorld(DemoWorldConfig(size=10))) == 10
    assert val.with_split("test").config.split == "test"
    assert len(DemoWorld(split="val")) == 5000  # a split's default size follows the split
    assert len(DemoWorld.split("test", DemoWorldConfig(size=7))) == 5000


@pytest.mark.parametrize("size", [32, 64])
def test_image_dtype_and_shape(size):
    world = DemoWorld(DemoWorldConfig(image_size=size))
    for i in range(8):
        image = world[i]["image"]
        assert image.dtype == np.uint8 and image.shape == (size, size, 3) and image.flags.c_contiguous
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 4  # a rendered scene, not a flat fill


def test_sample_structure():
    s = DemoWorld()[0]
    assert set(s) >= {"image", "caption", "captions", "labels", "id", "caption_kind"}
    assert isinstance(s["caption"], str) and s["caption"].strip()
    assert len(s["captions"]) == 5 and all(isinstance(c, str) for c in s["captions"])
    assert all(isinstance(v, int) for v in s["labels"].values())
    assert s["caption_kind"] in NOISE_KINDS


def _check_caption_agrees(caption: str, labels: dict[str, int]) -> None:
    words = _words(caption)
    objects = [("", labels)] + ([("2", labels)] if labels["n_objects"] == 2 else [])
    colours = {COLOURS[labels["colour" + k]] for k, _ in objects}
    shapes = {SHAPES[labels["shape" + k]] for k, _ in objects}
    assert {w for w in words if w in COLOURS} == colours, caption
    assert {w for w in words if w in SHAPES} == shapes, caption
    if labels["n_objects"] == 1:
        said = {size for size, syn in SIZE_WORDS.items() if syn & set(words)}
        assert said <= {SIZES[labels["size"]]}, caption


def test_clean_captions_agree_with_labels():
    world = DemoWorld(DemoWorldConfig(noise_prob=0.0, num_captions=3))
    kinds = Counter()
    for i in range(300):
        s = world[i]
        kinds[s["caption_kind"]] += 1
        for caption in [s["caption"], *s["captions"]]:
            _check_caption_agrees(caption, s["labels"])
    assert kinds == {"clean": 300}


def test_noise_captions_occur_at_the_configured_rate():
    world = DemoWorld(DemoWorldConfig(noise_prob=0.3, num_captions=0))
    kinds = Counter(world.sample(i)["caption_kind"] for i in range(800))
    rate = 1.0 - kinds["clean"] / 800
    assert abs(rate - 0.3) < 0.065  # > 4 standard deviations of a binomial(800, 0.3) proportion
    assert set(kinds) == set(NOISE_KINDS)  # every kind of noise shows up


def test_labels_and_attributes_are_roughly_balanced():
    world = DemoWorld()
    scenes = [world.scene(i) for i in range(1600)]
    singles = [s.objects[0] for s in scenes if len(s.objects) == 1]
    assert 0.6 < len(singles) / len(scenes) < 0.8  # two_object_prob = 0.3
    for attr, names in (("shape", SHAPES), ("colour", COLOURS), ("texture", TEXTURES), ("position", POSITIONS)):
        # Two-object scenes put their objects on opposite sides, never in the centre: count positions on singles.
        objects = singles if attr == "position" else [o for s in scenes for o in s.objects]
        counts = Counter(getattr(o, attr) for o in objects)
        expected = sum(counts.values()) / len(names)
        assert set(counts) == set(range(len(names))), attr
        assert all(0.7 * expected < c < 1.3 * expected for c in counts.values()), (attr, counts)


def test_pixels_reflect_the_labels():
    size = 64
    world = DemoWorld(DemoWorldConfig(image_size=size))
    palette = np.asarray(COLOUR_RGB, dtype=np.float64)
    checked = 0
    for i in range(120):
        scene = world.scene(i)
        image, masks = render_scene(scene, size, return_masks=True)
        assert np.array_equal(image, world[i]["image"])
        for obj, mask in zip(scene.objects, masks, strict=True):
            inside = mask > 0.99
            assert inside.sum() >= 20
            # The lighter tone of a texture is the object's colour itself: average the brightest pixels.
            pixels = image[inside].astype(np.float64)
            lum = pixels.sum(1)
            mean = pixels[lum >= np.percentile(lum, 75)].mean(0)
            nearest = int(np.argmin(((palette - mean) ** 2).sum(1)))
            assert nearest == obj.colour, (i, COLOURS[obj.colour], mean)
            ys, xs = np.nonzero(inside)
            assert position_class((xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size) == obj.position, i
            checked += 1
    assert checked > 120


@pytest.mark.parametrize("name", demo_task_names())
def test_tasks_are_balanced_and_labelled(name):
    task = demo_task(name, split="test", n=None)
    c = task.num_classes
    assert len(task.classnames) == len(set(task.classnames)) == c
    assert task.templates and all(t.count("{}") == 1 for t in task.templates)
    assert len(task) == 1024
    counts = np.bincount(task.labels(), minlength=c)
    assert counts.max() - counts.min() <= 1
    spec = DEMO_TASKS.get(name)
    for i in range(min(c, 16)):
        s = task.sample(i)
        image, label = task[i]
        assert np.array_equal(image, s["image"]) and label == task.label(i) == i % c
        assert s["labels"]["n_objects"] == 1
        for attr, value in spec.force(label).items():
            assert s["labels"][attr] == value, (name, attr)


def test_task_catalogue_and_errors():
    names = demo_task_names()
    assert {"demo_shapes", "demo_colours", "demo_shape_colour"} <= set(names)
    assert demo_task("demo_shapes").classnames == list(SHAPES)
    assert demo_task("demo_colours").classnames == list(COLOURS)
    combo = demo_task("demo_shape_colour")
    assert combo.num_classes == 64 and combo.classnames[9] == f"{COLOURS[1]} {SHAPES[1]}"
    with pytest.raises(KeyError, match="demo_shapes"):
        demo_task("demo_nope")
    with pytest.raises(ConfigError):
        demo_task("demo_shapes", split="holdout")
    images, labels = demo_task("demo_sizes", "val", n=6, image_size=32).arrays()
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 1] * 3


def test_retrieval_set():
    ret = demo_retrieval("val", n=12, captions_per_image=4, image_size=32)
    assert ret.images.shape == (12, 32, 32, 3) and ret.images.dtype == np.uint8
    assert len(ret.captions) == 12 and all(len(c) == 4 for c in ret.captions)
    texts, owner = ret.flat()
    assert len(texts) == 48 and owner.tolist() == [i for i in range(12) for _ in range(4)]
    # Detailed, distinct phrasings that agree with the scene.
    stream = stream_id("retrieval/val")
    for i, caps in enumerate(ret.captions):
        assert len(set(caps)) == 4
        labels = generate_sample(0, stream, i, image_size=32, num_captions=0)["labels"]
        for cap in caps:
            _check_caption_agrees(cap, labels)


def test_config_validation_and_indexing():
    for bad in ({"split": "holdout"}, {"seed": -1}, {"image_size": 4}, {"noise_prob": 1.5}, {"size": 0}):
        with pytest.raises(ConfigError):
            DemoWorldConfig(**bad)
    world = DemoWorld(DemoWorldConfig(size=5))
    assert world[-1]["id"] == 4
    with pytest.raises(IndexError):
        world[5]
    assert len(list(world)) == 5  # iteration stops at IndexError, as for any sequence


def test_data_source_format():
    world = open_demo_source("val", image_size="32", seed="1", noise_prob="0.0")
    assert world.config == DemoWorldConfig(split="val", image_size=32, seed=1, noise_prob=0.0)
    record = world.record(7)
    assert record.id == "demo/val/7" and record.clean_captions() == [world[7]["caption"]]
    assert np.array_equal(np.asarray(record.load_image()), world[7]["image"])
    with pytest.raises(ConfigError, match="image_size"):
        open_demo_source(None, imagesize="32")

    from openslip.data.sources import open_source

    assert open_source("demo:test?image_size=32").config.split == "test"


def test_benchmark_runs():
    assert benchmark_demo_world(5, warmup=1) > 0
