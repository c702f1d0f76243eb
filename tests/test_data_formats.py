"""Dataset formats: manifests, folders, shards, the reference's metadata, labelled sets, and `openslip data`."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.data.formats import reference as reference_formats
from openslip.data.formats.labelled import image_folder, label_csv
from openslip.data.formats.manifest import FolderSource, ManifestSource
from openslip.data.formats.open_labelled import open_labelled
from openslip.data.formats.records import Record
from openslip.data.formats.shards import ShardSource, count_samples, expand_braces, expand_shard_spec, make_shards
from openslip.data.loader import mix_seed
from openslip.data.skips import BadSample, SkipCounter
from openslip.data.sources import SOURCE_FORMATS, ConcatSource, open_source, open_sources, parse_spec
from openslip.errors import DataError


def _png(path: Path, value: int, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value % 256, np.uint8)).save(path)
    return path


def _jpeg(path: Path, value: int, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value % 256, np.uint8)).save(path, format="JPEG", quality=95)
    return path


def _value(record) -> int:
    return int(np.asarray(record.load_image())[0, 0, 0])


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    for i in range(10):
        _png(tmp_path / "img" / f"{i}.png", 20 * i)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------


def test_csv_manifest_paths_are_relative_to_the_manifest(image_dir: Path, monkeypatch: pytest.MonkeyPatch):
    lines = ["filepath,title,extra"] + [f'img/{i}.png,"a photo, number {i}",x' for i in range(10)]
    (image_dir / "m.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir("/")  # the working directory must not matter
    src = open_source(str(image_dir / "m.csv"))
    assert isinstance(src, ManifestSource) and len(src) == 10
    assert (src.image_key, src.caption_keys) == ("filepath", ["title"])
    rec = src.record(3)
    assert rec.clean_captions() == ["a photo, number 3"] and _value(rec) == 60
    assert src[-1].id == "img/9.png"


def test_tsv_manifest_with_several_caption_columns(image_dir: Path):
    lines = ["image\tcaption_a\tcaption_b"] + [f'img/{i}.png\tsays "hi" {i}\tsecond {i}' for i in range(10)]
    (image_dir / "m.tsv").write_text("\n".join(lines) + "\n")
    src = ManifestSource(image_dir / "m.tsv", caption_keys="caption_a,caption_b")
    assert src.record(4).clean_captions() == ['says "hi" 4', "second 4"]


def test_jsonl_manifest_with_caption_lists_and_root(image_dir: Path, tmp_path: Path):
    rows = [{"image": f"{i}.png", "captions": [f"first {i}", f"second {i}", ""]} for i in range(10)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = open_source(str(tmp_path / "sub" / "m.jsonl"), root=str(image_dir / "img"))
    assert len(src) == 10 and _value(src.record(2)) == 40
    assert src.record(2).clean_captions() == ["first 2", "second 2"]  # the empty one is dropped


def test_json_array_manifest(image_dir: Path):
    (image_dir / "m.json").write_text(json.dumps([{"file": f"img/{i}.png", "text": f"t{i}"} for i in range(10)]))
    src = open_source(str(image_dir / "m.json"))
    assert len(src) == 10 and src.record(1).clean_captions() == ["t1"]


def test_manifest_errors_name_the_file_and_line(image_dir: Path):
    (image_dir / "nocap.csv").write_text("image,label\nimg/0.png,1\n")
    with pytest.raises(DataError, match=r"nocap\.csv:1: no caption column"):
        ManifestSource(image_dir / "nocap.csv")
    (image_dir / "short.csv").write_text("image,caption\nimg/0.png,a\nimg/1.png\n")
    with pytest.raises(DataError, match=r"short\.csv:3: malformed row: 1 fields"):
        ManifestSource(image_dir / "short.csv")
    (image_dir / "bad.jsonl").write_text('{"image": "img/0.png", "caption": "a"}\n{"image": "img/1.png", \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        ManifestSource(image_dir / "bad.jsonl")
    (image_dir / "missing.jsonl").write_text('{"image": "img/0.png", "caption": "a"}\n{"image": "img/1.png"}\n')
    with pytest.raises(DataError, match=r"missing\.jsonl:2: missing 'caption'"):
        ManifestSource(image_dir / "missing.jsonl")
    (image_dir / "url.csv").write_text("image,caption\nhttps://x.org/a.jpg,a\n")
    with pytest.raises(DataError, match="URL"):
        ManifestSource(image_dir / "url.csv")
    with pytest.raises(DataError, match="no image column 'pic'"):
        ManifestSource(image_dir / "short.csv", image_key="pic")


def test_caption_choice_is_deterministic_per_sample_and_epoch():
    captions = [f"c{i}" for i in range(5)]
    pick = [captions[mix_seed(0, epoch, 7, 3) % 5] for epoch in range(20)]
    assert pick == [captions[mix_seed(0, epoch, 7, 3) % 5] for epoch in range(20)]
    assert len(set(pick)) > 1


# ---------------------------------------------------------------------------------------------------------------
# Folders with sidecar captions
# ---------------------------------------------------------------------------------------------------------------


def test_folder_with_sidecar_captions(tmp_path: Path):
    for i in range(10):
        _jpeg(tmp_path / "d" / ("a" if i < 5 else "b") / f"{i}.jpg", 25 * i)
        if i != 7:
            (tmp_path / "d" / ("a" if i < 5 else "b") / f"{i}.txt").write_text(f"picture {i}\nalso {i}\n")
    src = open_source(str(tmp_path / "d"))
    assert isinstance(src, FolderSource) and len(src) == 10
    assert [r.id for r in src][:2] == ["a/0.jpg", "a/1.jpg"]
    assert src.record(1).clean_captions() == ["picture 1", "also 1"]
    with pytest.raises(BadSample) as err:
        src.record(7).clean_captions()
    assert err.value.reason == "missing_caption"


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


def test_expand_braces_and_shard_specs(tmp_path: Path):
    assert expand_braces("d-{000..002}.tar") == ["d-000.tar", "d-001.tar", "d-002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{y}z") == ["x{y}z"]
    for i in range(3):
        (tmp_path / f"d-{i:03d}.tar").write_bytes(b"")
    assert len(expand_shard_spec(str(tmp_path / "d-{000..002}.tar"))) == 3
    assert len(expand_shard_spec(str(tmp_path / "d-*.tar"))) == 3
    spec = f"{tmp_path}/d-000.tar::{tmp_path}/d-{{001..002}}.tar"
    assert [Path(u).name for u in expand_shard_spec(spec)] == ["d-000.tar", "d-001.tar", "d-002.tar"]
    with pytest.raises(DataError, match="no such shard"):
        expand_shard_spec(str(tmp_path / "d-{000..005}.tar"))


def test_make_shards_roundtrip_with_index(image_dir: Path, tmp_path: Path):
    (image_dir / "m.csv").write_text("image,caption\n" + "".join(f"img/{i}.png,cap {i}\n" for i in range(10)))
    index = make_shards(open_source(str(image_dir / "m.csv")), tmp_path / "out", shard_size=4, seed=3)
    assert [s["samples"] for s in index["shards"]] == [4, 4, 2] and index["samples"] == 10
    on_disk = json.loads((tmp_path / "out" / "index.json").read_text())
    assert on_disk["shards"] == index["shards"]
    for spec in (str(tmp_path / "out"), str(tmp_path / "out" / "shard-{000000..000002}.tar")):
        src = open_source(spec)
        assert isinstance(src, ShardSource) and src.sizes == [4, 4, 2] and len(src) == 10
    samples = list(src)
    got = sorted((s.clean_captions()[0], int(np.asarray(s.load_image())[0, 0, 0])) for s in samples)
    assert got == sorted((f"cap {i}", 20 * i) for i in range(10))
    assert samples[5].shard == 1 and samples[5].position == 1 and samples[5].id == (1 << 32) | 1
    assert count_samples(src.urls[0]) == 4
    with tarfile.open(src.urls[0]) as tar:  # img2dataset layout: KEY.png, KEY.txt, KEY.json
        names = tar.getnames()
    assert names[:3] == ["000000000.png", "000000000.txt", "000000000.json"]
    # skipping inside a shard reads only the headers of what it skips
    assert [s.position for s in src.iter_shard(0, skip=2)] == [2, 3]


def test_make_shards_resizes_and_converts(tmp_path: Path):
    (tmp_path / "d").mkdir()
    Image.new("RGBA", (40, 20), (255, 0, 0, 0)).save(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "a.txt").write_text("transparent")
    Image.fromarray(np.full((30, 60, 3), 7, np.uint8)).save(tmp_path / "d" / "b.jpg")
    (tmp_path / "d" / "b.txt").write_text("big")
    counter = SkipCounter()
    make_shards(open_source(str(tmp_path / "d")), tmp_path / "s", image_size=10, shuffle=False, counter=counter)
    samples = list(open_source(str(tmp_path / "s")))
    assert [min(s.load_image().size) for s in samples] == [10, 10]
    assert "jpg" in samples[0].files  # converted images are stored as JPEG
    assert counter.converted == {"rgba": 1}


def test_webdataset_tar_with_json_captions(tmp_path: Path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="WEBP")
    with tarfile.open(tmp_path / "w.tar", "w") as tar:
        for key, members in [
            ("a/x1", {"webp": buf.getvalue(), "json": json.dumps({"caption": "from json"}).encode()}),
            ("a/x2", {"webp": buf.getvalue(), "txt": b"from txt", "json": b'{"caption": "ignored"}'}),
        ]:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    src = open_source(str(tmp_path / "w.tar"))
    assert [s.key for s in src] == ["a/x1", "a/x2"]
    assert [s.clean_captions() for s in src] == [["from json"], ["from txt"]]
    assert next(iter(src)).load_image().size == (8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Reference metadata formats
# ---------------------------------------------------------------------------------------------------------------


def test_yfcc15m_pickle_folder_and_zip_layouts(tmp_path: Path):
    ids = [12345678 + i for i in range(10)]
    meta = [(i, f"title {i}", f"description {i}" if i % 2 else "") for i in ids]
    with open(tmp_path / "yfcc15m.pkl", "wb") as f:
        pickle.dump(meta, f)
    for i in ids:
        s = f"{i:08d}"
        _png(tmp_path / "flat" / s[:3] / s[3:6] / f"{s}.jpg", i)
    assert parse_spec("yfcc15m:/x.pkl?root=/r") == ("yfcc15m", "/x.pkl", {"root": "/r"})
    src = open_source(f"{tmp_path}/yfcc15m.pkl?root={tmp_path}/flat")  # format sniffed from the triples
    assert len(src) == 10 and _value(src.record(0)) == ids[0] % 256
    assert src.record(1).clean_captions() == [f"title {ids[1]}", f"description {ids[1]}"]
    assert src.record(0).clean_captions() == [f"title {ids[0]}"]  # empty description dropped
    # the reference layout: root/images/II/JJJ.zip holding KKK.jpg
    (tmp_path / "z" / "images" / "12").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "z" / "images" / "12" / "345.zip", "w") as zf:
        for i in ids[:5]:
            out = io.BytesIO()
            Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(out, format="JPEG")
            zf.writestr(f"{i:08d}"[5:] + ".jpg", out.getvalue())
    src = open_source(str(tmp_path / "yfcc15m.pkl"), format="yfcc15m", root=str(tmp_path / "z"))
    assert abs(_value(src.record(4)) - ids[4] % 256) <= 3
    with pytest.raises(BadSample) as err:
        src.record(6).load_image()  # not in the zip
    assert err.value.reason == "missing_file"


def test_cc3m_npy_cc12m_pickle_and_tsv(tmp_path: Path):
    for i in range(10):
        _png(tmp_path / "cc" / f"{i}.jpg", i)
    arr = np.array([{"image_id": f"{i}.jpg", "captions": [f"cc3m {i}"]} for i in range(10)], dtype=object)
    np.save(tmp_path / "cc3m_train.npy", arr, allow_pickle=True)
    src = open_source(f"cc3m:{tmp_path}/cc3m_train.npy", root=str(tmp_path / "cc"))
    assert len(src) == 10 and src.record(3).clean_captions() == ["cc3m 3"] and _value(src.record(3)) == 3
    with open(tmp_path / "cc12m.pkl", "wb") as f:
        pickle.dump([{"image_name": f"{i}.jpg", "captions": [f"cc12m {i}"]} for i in range(10)], f)
    src = open_source(str(tmp_path / "cc12m.pkl"), root=str(tmp_path / "cc"))  # sniffed as cc12m
    assert src.record(9).clean_captions() == ["cc12m 9"]
    with open(tmp_path / "pairs.pkl", "wb") as f:
        pickle.dump([(f"{i}.jpg", f"pair {i}") for i in range(10)], f)
    assert open_source(str(tmp_path / "pairs.pkl"), root=str(tmp_path / "cc")).record(2).clean_captions() == ["pair 2"]
    (tmp_path / "cc" / "train.tsv").write_text("".join(f"caption {i}\t{i}.jpg\n" for i in range(10)))
    src = open_source(f"cc12m:{tmp_path}/cc/train.tsv")
    assert src.record(5).clean_captions() == ["caption 5"] and _value(src.record(5)) == 5


def test_coco_captions(tmp_path: Path):
    images = [{"id": 100 + i, "file_name": f"{100 + i:012d}.jpg"} for i in range(10)]
    anns = [{"image_id": 100 + i % 10, "id": i, "caption": f"coco {i}"} for i in range(25)]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns})
    )
    for i in range(10):
        _png(tmp_path / "train2017" / f"{100 + i:012d}.jpg", i)
    src = open_source(str(tmp_path / "annotations" / "captions_train2017.json"))  # root found above annotations/
    assert len(src) == 10
    assert src.record(2).clean_captions() == ["coco 2", "coco 12", "coco 22"] and src.record(2).id == "102"
    assert _value(src.record(2)) == 2


def test_redcaps_annotations_file_and_folder(tmp_path: Path):
    anns = [{"image_id": f"id{i}", "subreddit": "pics" if i < 5 else "cats", "caption": f"red {i}"} for i in range(10)]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "pics_2020.json").write_text(json.dumps({"info": {}, "annotations": anns[:5]}))
    (tmp_path / "ann" / "cats_2020.json").write_text(json.dumps({"info": {}, "annotations": anns[5:]}))
    (tmp_path / "all.json").write_text(json.dumps(anns))  # the reference's combined list
    for i, a in enumerate(anns):
        _png(tmp_path / "images" / a["subreddit"] / f"{a['image_id']}.jpg", i)
    src = open_source(str(tmp_path / "all.json"), root=str(tmp_path / "images"))
    assert len(src) == 10 and src.record(7).clean_captions() == ["red 7"] and _value(src.record(7)) == 7
    src = open_source(f"redcaps:{tmp_path}/ann", root=str(tmp_path / "images"))
    assert len(src) == 10 and src.record(0).id == "id5"  # files in name order: cats_2020 first


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_reference_pickles_are_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([(1, "title", _Evil())], f)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        open_source(f"yfcc15m:{tmp_path}/evil.pkl")
    with pytest.raises(DataError, match="refusing"):
        open_source(str(tmp_path / "evil.pkl"))  # format sniffing loads safely too
    np.save(tmp_path / "evil.npy", np.array([_Evil(), 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refusing"):
        open_source(f"cc3m:{tmp_path}/evil.npy")
    assert not (tmp_path / "pwned").exists()
    # numpy scalars and plain containers are fine
    with open(tmp_path / "ok.pkl", "wb") as f:
        pickle.dump([(np.int64(5), "t", "d")], f)
    assert reference_formats.safe_pickle_load(tmp_path / "ok.pkl") == [(5, "t", "d")]


# ---------------------------------------------------------------------------------------------------------------
# open_source dispatch and the format registry
# ---------------------------------------------------------------------------------------------------------------


def test_open_source_errors_and_registry_hook(tmp_path: Path):
    with pytest.raises(DataError, match="no such file or directory"):
        open_source(str(tmp_path / "nope.csv"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="cannot tell the data format"):
        open_source(str(tmp_path / "x.parquet"))
    with pytest.raises(DataError, match="unknown data format 'nosuch'"):
        open_source("x", format="nosuch")
    name = "testfmt_hook"
    if name not in SOURCE_FORMATS:
        SOURCE_FORMATS.register(name, lambda path, **kw: [Record(id=path or "none", image=b"", captions=["c"])])
    assert open_source(f"{name}:abc")[0].id == "abc"
    assert open_source(name)[0].id == "none"


# ---------------------------------------------------------------------------------------------------------------
# Several sources as one (data.train=[...])
# ---------------------------------------------------------------------------------------------------------------


def test_open_sources_concatenates_map_style_sources(image_dir: Path, tmp_path: Path):
    (image_dir / "m.csv").write_text("image,caption\n" + "".join(f"img/{i}.png,cap {i}\n" for i in range(10)))
    for i in range(4):
        _png(tmp_path / "photos" / f"{i}.png", 7 * i)
        (tmp_path / "photos" / f"{i}.txt").write_text(f"photo {i}\n")
    specs = [str(image_dir / "m.csv"), str(tmp_path / "photos"), "demo?size=5&image_size=16"]
    src = open_sources(specs)
    assert isinstance(src, ConcatSource) and len(src) == 10 + 4 + 5 and src.sizes == [10, 4, 5]
    # ids name the part: the same relative name in two parts stays two samples
    assert src.record(3).id == f"{specs[0]}#img/3.png" and _value(src.record(3)) == 60
    assert src.record(11).id == f"{specs[1]}#1.png" and src.record(11).clean_captions() == ["photo 1"]
    assert src.record(14).id == f"{specs[2]}#demo/train/0" and src.record(18).clean_captions()
    assert len({src.record(i).id for i in range(len(src))}) == len(src)
    assert src[-1].id == src.record(18).id
    # one spec, alone or in a list of one, is exactly what open_source gives
    assert type(open_sources(specs[:1])) is type(open_source(specs[0])) is ManifestSource
    assert isinstance(open_sources(specs[0]), ManifestSource)


def test_open_sources_concatenates_shards(image_dir: Path, tmp_path: Path):
    (image_dir / "m.csv").write_text("image,caption\n" + "".join(f"img/{i}.png,cap {i}\n" for i in range(10)))
    make_shards(open_source(str(image_dir / "m.csv")), tmp_path / "a", shard_size=4, seed=0)
    make_shards(open_source(str(image_dir / "m.csv")), tmp_path / "b", shard_size=3, seed=1)
    src = open_sources([str(tmp_path / "a"), str(tmp_path / "b" / "shard-{000000..000003}.tar")])
    assert isinstance(src, ShardSource) and len(src.urls) == 7 and src.sizes == [4, 4, 2, 3, 3, 3, 1]
    assert len(src) == 20 and Path(src.urls[3]).parent.name == "b"


def test_open_sources_bad_input(image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (image_dir / "m.csv").write_text("image,caption\n" + "".join(f"img/{i}.png,cap {i}\n" for i in range(4)))
    make_shards(open_source(str(image_dir / "m.csv")), tmp_path / "s", shard_size=2)
    csv_path = str(image_dir / "m.csv")
    with pytest.raises(DataError, match="empty list"):
        open_sources([], what="data.train")
    with pytest.raises(DataError, match=r"^data.train\[1\]: no such file or directory: .*missing.csv$"):
        open_sources([csv_path, str(tmp_path / "missing.csv")], what="data.train")
    monkeypatch.chdir(image_dir)  # the same file under two spellings is a repeat
    with pytest.raises(DataError, match=r"data.train\[1\] \(./m.csv\) repeats data.train\[0\]"):
        open_sources([csv_path, "./m.csv"], what="data.train")
    with pytest.raises(DataError, match="named by both"):
        open_sources([str(tmp_path / "s"), str(tmp_path / "s" / "shard-000000.tar")])
    with pytest.raises(DataError, match="mixes shards") as err:
        open_sources([str(tmp_path / "s"), csv_path])
    assert f"openslip data make-shards {csv_path} SHARD_DIR" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Labelled evaluation sets
# ---------------------------------------------------------------------------------------------------------------


def test_image_folder_and_label_csv(tmp_path: Path):
    for c, name in enumerate(["dog", "cat", "bird"]):
        for i in range(3):
            _png(tmp_path / "eval" / name / f"{i}.png", 10 * c + i)
    ds = open_labelled(str(tmp_path / "eval"))
    assert ds.classes == ["bird", "cat", "dog"] and len(ds) == 9
    image, label = ds[0]
    assert label == 0 and np.asarray(image)[0, 0, 0] == 20
    ds.with_transform(lambda im: np.asarray(im).mean())
    assert ds[8] == (pytest.approx(2.0), 2)
    rows = ["path,label"] + [f"eval/{n}/0.png,{n}" for n in ("dog", "cat")]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    ds = label_csv(tmp_path / "l.csv")
    assert ds.classes == ["cat", "dog"] and [ds[i][1] for i in range(2)] == [1, 0]
    (tmp_path / "n.csv").write_text("image,label\neval/dog/0.png,2\neval/cat/1.png,0\n")
    ds = label_csv(tmp_path / "n.csv", classes=["a", "b", "c"])
    assert [ds.record(i).label for i in range(2)] == [2, 0] and ds.classes == ["a", "b", "c"]
    counter, bad = image_folder(tmp_path / "eval").check()
    assert counter.seen == 9 and bad == []


# ---------------------------------------------------------------------------------------------------------------
# `openslip data`
# ---------------------------------------------------------------------------------------------------------------


def _caption_folder(root: Path, n: int = 10) -> Path:
    for i in range(n):
        _jpeg(root / f"{i:02d}.jpg", 20 * i, size=24)
        (root / f"{i:02d}.txt").write_text(f"a grey square number {i}")
    return root


def test_cli_make_shards_and_inspect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from openslip.cli import main

    monkeypatch.setitem(__import__("sys").modules, "openslip.data.augment.views", None)  # no views: fast, independent
    folder = _caption_folder(tmp_path / "folder")
    out = tmp_path / "shards"
    assert main(["data", "make-shards", str(folder), str(out), "--shard-size", "4", "--image-size", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json", *[f"shard-00000{i}.tar" for i in range(3)]]
    assert "wrote 3 shards, 10 samples" in capsys.readouterr().out
    assert main(["data", "make-shards", str(folder), str(out)]) == 2  # refuses to overwrite
    assert "already holds shards" in capsys.readouterr().err
    assert main(["data", "inspect", str(out), "--n", "4", "--output", str(tmp_path / "grid.png")]) == 0
    text = capsys.readouterr().out
    assert "samples: 10" in text and "skipped 0% of 10 samples" in text
    grid = Image.open(tmp_path / "grid.png")
    assert grid.format == "PNG" and grid.height >= 4 * 16


def test_cli_inspect_draws_views_when_augment_exists(tmp_path: Path, capsys):
    pytest.importorskip("openslip.data.augment.views")
    from openslip.cli import main

    folder = _caption_folder(tmp_path / "folder", n=3)
    args = ["data", "inspect", str(folder), "--n", "2", "--image-size", "32", "--output", str(tmp_path / "g.png")]
    assert main(args) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_cli_bad_path_is_a_one_line_error(tmp_path: Path, capsys):
    from openslip.cli import main

    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openslip data: error: no such file or directory") and err.count("\n") == 1
    assert main(["data", "make-shards", str(tmp_path / "missing.csv"), str(tmp_path / "o")]) == 2


def test_cc12m_reference_records_with_image_name_and_image_id_through_the_cli(tmp_path: Path, capsys):
    """The reference's cc12m.npy records carry both keys (README: {'image_name': '0.jpg', 'image_id': 0,
    'captions': [...]}); its datasets.py opens root/image_name. image_id alone names no file."""
    from train_utils import overrides, read_metrics

    from openslip.cli import main

    for i in range(16):
        _jpeg(tmp_path / "cc12m" / f"{i}.jpg", 16 * i, size=40)
    records = [{"image_name": f"{i}.jpg", "image_id": i, "captions": [f"photo number {i}"]} for i in range(16)]
    np.save(tmp_path / "cc12m.npy", np.array(records, dtype=object), allow_pickle=True)
    spec = f"cc12m:{tmp_path}/cc12m.npy?root={tmp_path}/cc12m"
    assert main(["data", "inspect", spec, "--n", "0", "--scan", "0"]) == 0
    out = capsys.readouterr().out
    assert "samples: 16" in out and "scanned: 16 samples; skipped 0% of 16 samples" in out
    assert main(["train", *overrides(tmp_path / "run", f"data.train={spec}", "train.steps=2")]) == 0
    last = read_metrics(tmp_path / "run")[-1]
    assert not any(k.startswith("data/skip/") and v for k, v in last.items())
    # cc3m keeps the reference's image_id as the file name
    src = open_source(f"cc3m:{tmp_path}/cc12m.npy?root={tmp_path}/cc12m")
    with pytest.raises(BadSample) as err:
        src.record(0).load_image()
    assert err.value.reason == "missing_file"
