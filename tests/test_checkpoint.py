"""Checkpoints: bit-exact round trips, atomic writes, run directories, original SLIP import, refusals."""

import argparse
import copy
import json
import os
import pickle
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import openslip
from openslip.cli import main as cli_main
from openslip.errors import CheckpointError
from openslip.models import SLIP, ModelConfig, create_model, model_config
from openslip.weights import checkpoint as ckpt

KINDS = ("slip", "clip", "simclr")


def _trained(name: str | ModelConfig, seed: int = 0) -> SLIP:
    """A micro model whose weights and BatchNorm running statistics differ from a fresh one (a private copy)."""
    key = (json.dumps(name.to_dict()) if isinstance(name, ModelConfig) else name, seed)
    if key not in _TRAINED:
        _TRAINED[key] = _make_trained(name, seed)
    return copy.deepcopy(_TRAINED[key])


_TRAINED: dict[tuple[str, int], SLIP] = {}


def _make_trained(name: str | ModelConfig, seed: int) -> SLIP:
    torch.manual_seed(seed)
    model = create_model(name) if isinstance(name, str) else SLIP(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        if model.has_ssl_head:  # one train-mode pass updates running_mean / running_var / num_batches_tracked
            size = model.cfg.vision.image_size
            model.train()(view1=torch.randn(4, 3, size, size), view2=torch.randn(4, 3, size, size))
    return model.eval()


def _inputs(model: SLIP, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = model.cfg.vision.image_size
    dtype = model.visual.cls_token.dtype
    kw = {}
    if model.has_text:
        tokens = torch.zeros(3, 77, dtype=torch.long)
        tokens[:, 0] = 49406
        tokens[:, 1:6] = torch.randint(1, 1000, (3, 5), generator=g)
        tokens[:, 6] = 49407
        kw.update(image=torch.randn(3, 3, size, size, generator=g), text=tokens)
    if model.has_ssl_head:
        kw.update(view1=torch.randn(3, 3, size, size, generator=g), view2=torch.randn(3, 3, size, size, generator=g))
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}


def _assert_same(a: SLIP, b: SLIP, embeddings: bool = False) -> None:
    """Same keys, dtypes and values (BatchNorm statistics included); with `embeddings`, same outputs too."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    if not embeddings:
        return
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a(**_inputs(a)), b(**_inputs(b))
    assert oa.keys() == ob.keys()
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared CPU: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slip_model() -> SLIP:
    return _trained("slip_vit_micro")


@pytest.fixture()
def reference_pt(tmp_path, slip_model) -> Path:
    """A checkpoint laid out like the SLIP reference's: DDP `module.` keys, optimizer, scaler, Namespace args."""
    opt = torch.optim.AdamW(slip_model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    for p in slip_model.parameters():
        opt.state[p] = {"step": torch.tensor(7.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.ones_like(p)}
    args = argparse.Namespace(
        model="slip_vit_micro", ssl_mlp_dim=128, ssl_emb_dim=32, ssl_scale=1.0, lr=3e-3, betas=(0.9, 0.98),
        output_dir="/tmp/out", dist_url="env://", gpu=None, evaluate=False,
    )  # fmt: skip
    obj = {
        "epoch": 5,
        "state_dict": {"module." + k: v for k, v in slip_model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "best_acc1": 12.5,
        "args": args,
    }
    path = tmp_path / "checkpoint_best.pt"
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bit_exact(tmp_path, kind):
    model = _trained(f"{kind}_vit_micro")
    out = openslip.save_model(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
    loaded = openslip.load_model(out)
    assert loaded.cfg == model.cfg and not loaded.training
    _assert_same(model, loaded, embeddings=True)
    _assert_same(model, openslip.load_model(out / "model.safetensors"))  # a lone weights file


def test_round_trip_keeps_bf16_and_handles_tied_weights(tmp_path):
    model = _trained("clip_vit_micro")
    model.text_projection = model.image_projection  # tied (both 64 x 64 in the micro model)
    model = model.to(torch.bfloat16)
    out = ckpt.save_model(model, tmp_path / "tied")
    loaded = ckpt.load_model(out)
    assert loaded.image_projection.dtype == torch.bfloat16
    _assert_same(model, loaded, embeddings=True)
    # The weights file alone carries its config in its metadata.
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((out / "model.safetensors").read_bytes())
    _assert_same(model, ckpt.load_model(alone))


def test_train_state_and_config_round_trip(tmp_path, slip_model):
    model = _trained("clip_vit_micro")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()(**_inputs(model))["image_embed"].sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "data": {"epoch": 1, "position": 128},
    }
    d = ckpt.save_checkpoint(tmp_path / "step_0000010", model, config_extra={"step": 10, "train_config": {"lr": 1e-3}})
    assert not (d / ckpt.TRAIN_STATE_FILE).exists()
    d = ckpt.save_checkpoint(tmp_path / "step_0000010", model, train_state=state, config_extra={"step": 10})
    assert (tmp_path / "latest").read_text().strip() == "step_0000010"
    doc = json.loads((d / "config.json").read_text())
    assert doc["model"] == model.cfg.to_dict() and doc["step"] == 10 and doc["openslip_version"]
    back = ckpt.load_train_state(d)
    assert back["rng"]["python"] == state["rng"]["python"] and back["data"] == state["data"]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    fresh = create_model("clip_vit_micro")
    ckpt.load_weights(fresh, tmp_path)
    _assert_same(model, fresh)
    # Values torch.load(weights_only=True) would refuse are rejected before anything is written.
    import numpy as np

    with pytest.raises(TypeError, match="numpy"):
        ckpt.save_checkpoint(tmp_path / "step_0000020", model, train_state={"rng": np.random.get_state()})
    assert not (tmp_path / "step_0000020").exists() and not (tmp_path / ".tmp-step_0000020").exists()


# ------------------------------------------------------------------------------------ atomic writes, runs


def _save_steps(run: Path, steps: list[int]) -> dict[int, SLIP]:
    models = {}
    for s in steps:
        models[s] = _trained("clip_vit_micro", seed=s)
        ckpt.save_checkpoint(run / "checkpoints" / ckpt.checkpoint_dir_name(s), models[s], config_extra={"step": s})
    return models


def test_crash_mid_write_leaves_no_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    run = tmp_path / "run"
    models = _save_steps(run, [10])
    written = []

    def crash(path, doc):  # config.json is written after model.safetensors: crash between the two
        written.extend(p.name for p in path.parent.iterdir())
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt, "_write_config", crash)
    for step in (20, 10):  # a new checkpoint, then an overwrite of the existing one
        with pytest.raises(RuntimeError, match="simulated crash"):
            ckpt.save_checkpoint(run / "checkpoints" / ckpt.checkpoint_dir_name(step), _trained("clip_vit_micro", 99))
    assert written == ["model.safetensors", "model.safetensors"]
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000010"]
    assert ckpt.find_latest_checkpoint(run) == run / "checkpoints" / "step_0000010"
    _assert_same(models[10], ckpt.load_model(run))
    # A staging directory left by a killed process is ignored and replaced by the next save.
    stale = run / "checkpoints" / ".tmp-step_0000020"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert ckpt.list_checkpoints(run) == [run / "checkpoints" / "step_0000010"]
    ckpt.save_checkpoint(run / "checkpoints" / "step_0000020", models[10])
    assert not stale.exists() and ckpt.find_latest_checkpoint(run).name == "step_0000020"


def test_latest_and_fallback_when_newest_is_truncated(tmp_path):
    run = tmp_path / "run"
    models = _save_steps(run, [10, 20, 30])
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000030"
    _assert_same(models[30], ckpt.load_model(run))
    # `latest` may name an older checkpoint (a run resumed from it): it wins over higher numbers.
    (root / "latest").write_text("step_0000010\n")
    assert ckpt.find_latest_checkpoint(run) == root / "step_0000010"
    (root / "latest").write_text("step_0000030\n")
    weights = root / "step_0000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "truncated" in ckpt.checkpoint_problem(root / "step_0000030")
    with pytest.warns(UserWarning, match="broken checkpoint.*using step_0000020"):
        _assert_same(models[20], ckpt.load_model(run))
    (root / "latest").unlink()
    with pytest.warns(UserWarning, match="no 'latest' file.*using step_0000020"):
        assert ckpt.find_latest_checkpoint(root) == root / "step_0000020"
    assert ckpt.list_checkpoints(run) == [root / "step_0000010", root / "step_0000020"]
    assert len(ckpt.list_checkpoints(run, valid_only=False)) == 3
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load_model(root / "step_0000030")
    assert ckpt.find_latest_checkpoint(tmp_path / "empty") is None


def test_prune_keeps_the_newest_and_latest(tmp_path):
    run = tmp_path / "run"
    _save_steps(run, [10, 20, 30])
    root = run / "checkpoints"
    (root / ".tmp-step_0000015").mkdir()
    (root / "latest").write_text("step_0000010\n")
    removed = ckpt.prune_checkpoints(run, keep_last=1)
    assert [p.name for p in removed] == [".tmp-step_0000015", "step_0000020"]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_0000010", "step_0000030"]
    with pytest.raises(ValueError):
        ckpt.prune_checkpoints(run, keep_last=0)


# ------------------------------------------------------------------------------- original SLIP import


def test_reference_checkpoint_loads_strictly_with_same_embeddings(reference_pt, slip_model):
    loaded = ckpt.load_model(reference_pt)
    assert loaded.cfg.name == "slip_vit_micro"
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for that one load only
    _assert_same(slip_model, loaded, embeddings=True)


def test_reference_head_sizes_come_from_args(tmp_path):
    cfg = model_config("slip_vit_micro")
    cfg.ssl_head = replace(cfg.ssl_head, mlp_dim=96, out_dim=16)
    source = _trained(cfg)
    args = argparse.Namespace(model="slip_vit_micro", ssl_mlp_dim=96, ssl_emb_dim=16)
    obj = {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}, "args": args}
    torch.save(obj, tmp_path / "r.pt", _use_new_zipfile_serialization=False)  # the pre-1.6 file format
    _assert_same(source, ckpt.load_model(tmp_path / "r.pt"), embeddings=True)


def test_reference_names_resolve_without_building():
    cfg = ckpt._reference_config("SLIP_VITB16", {"ssl_mlp_dim": 4096, "ssl_emb_dim": 256}, Path("x.pt"))
    assert cfg.name == "slip_vit_b16" and cfg.vision.width == 768 and cfg.ssl_head.mlp_dim == 4096
    assert ckpt._reference_config("CLIP_VITB16", {"ssl_mlp_dim": 4096}, Path("x.pt")).ssl_head is None
    assert ckpt._reference_config("SIMCLR_VITS16", {}, Path("x.pt")).name == "simclr_vit_s16"
    with pytest.raises(CheckpointError, match="choose one of: .*slip_vit_b16"):
        ckpt._reference_config("SLIP_VITH14", {}, Path("x.pt"))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_needs_a_model_name(tmp_path, slip_model, prefix):
    path = tmp_path / "bare.pt"
    torch.save({prefix + k: v for k, v in slip_model.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="--model NAME"):
        ckpt.load_model(path)
    _assert_same(slip_model, ckpt.load_model(path, model_name="slip_vit_micro"))
    with pytest.raises(CheckpointError, match="weights do not fit model 'clip_vit_micro'.*unexpected keys: image_mlp"):
        ckpt.load_model(path, model_name="clip_vit_micro")


def test_key_mismatches_are_reported(tmp_path, slip_model):
    sd = {"module." + k: v for k, v in slip_model.state_dict().items() if k != "ln_final.bias"}
    sd["module.head.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd, "args": argparse.Namespace(model="slip_vit_micro")}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="missing keys: ln_final.bias; unexpected keys: head.weight"):
        ckpt.load_model(tmp_path / "r.pt")
    with pytest.warns(UserWarning, match="non-strictly"):
        loaded = ckpt.load_model(tmp_path / "r.pt", strict=False)
    assert torch.equal(loaded.ln_final.weight, slip_model.ln_final.weight)
    with pytest.raises(CheckpointError, match="trained as 'slip_vit_micro', not the requested 'clip_vit_micro'"):
        ckpt.load_model(tmp_path / "r.pt", model_name="clip_vit_micro")


# ------------------------------------------------------------------------------------------- refusals


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path, slip_model):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"module.visual.cls_token": slip_model.visual.cls_token}, "args": _RunsCode(marker)}
    torch.save(payload, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with open(tmp_path / "evil.pkl", "rb") as f:  # the payload is live: an ordinary unpickle runs it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(CheckpointError, match=rf"{name}: refused"):
            ckpt.load_model(tmp_path / name, model_name="slip_vit_micro")
    with pytest.raises(CheckpointError, match="would import `(posix|os|nt).system`"):
        ckpt.load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def _bad_files(tmp_path: Path, reference_pt: Path) -> dict[str, tuple[Path, str]]:
    data = reference_pt.read_bytes()
    files = {
        "truncated.pt": (data[: len(data) // 2], "truncated"),
        "notes.txt": (b"epoch 5: loss 1.23\nepoch 6: loss 1.19\n", "looks like a text file"),
        "photo.jpg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "looks like a JPEG image"),
        "empty.pt": (b"", "empty"),
        "huge_header.safetensors": ((10**12).to_bytes(8, "little") + b"{}", "bad safetensors header"),
        "garbage_header.safetensors": ((6).to_bytes(8, "little") + b"{nope}" + bytes(4), "not JSON"),
    }
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    files["cut.safetensors"] = (len(header).to_bytes(8, "little") + header + bytes(8), "truncated")
    out = {}
    for name, (content, reason) in files.items():
        (tmp_path / name).write_bytes(content)
        out[name] = (tmp_path / name, reason)
    return out


def test_broken_and_foreign_files_are_refused(tmp_path, reference_pt):
    for name, (path, reason) in _bad_files(tmp_path, reference_pt).items():
        with pytest.raises(CheckpointError, match=reason) as info:
            ckpt.load_model(path, model_name="slip_vit_micro")
        assert str(path) in str(info.value), name
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.load_model(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        ckpt.load_model(tmp_path)


def test_config_naming_an_unknown_model_is_refused(tmp_path):
    out = ckpt.save_model(_trained("clip_vit_micro"), tmp_path / "m")
    (out / "checksums.json").unlink()  # config.json is edited by hand below
    (out / "config.json").write_text(json.dumps({"model": "slip_vit_huge"}))
    with pytest.raises(CheckpointError, match="unknown model 'slip_vit_huge'; choose one of: .*slip_vit_micro"):
        ckpt.load_model(out)
    (out / "config.json").write_text(json.dumps({"model": {"name": "x", "vision": {"pixels": 3}}}))
    with pytest.raises(CheckpointError, match="invalid model config"):
        ckpt.load_model(out)


# ------------------------------------------------------------------------------------------------ CLI


def test_convert_command_end_to_end(tmp_path, reference_pt, slip_model, capsys):
    dst = tmp_path / "converted"
    assert cli_main(["convert", str(reference_pt), str(dst)]) == 0
    assert f"wrote {dst}: model slip_vit_micro" in capsys.readouterr().out
    _assert_same(slip_model, ckpt.load_model(dst), embeddings=True)
    doc = ckpt.load_checkpoint_config(dst)
    assert doc["converted_from"]["epoch"] == 5 and doc["converted_from"]["args"]["model"] == "slip_vit_micro"
    assert cli_main(["convert", str(reference_pt), str(dst)]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert cli_main(["convert", "--force", str(reference_pt), str(dst)]) == 0
    bare = tmp_path / "bare.pt"
    torch.save(slip_model.state_dict(), bare)
    assert cli_main(["convert", str(bare), str(tmp_path / "b"), "--model", "slip_vit_micro"]) == 0
    _assert_same(slip_model, ckpt.load_model(tmp_path / "b"))


def test_convert_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "Traceback" not in err
    (tmp_path / "a.txt").write_text("not a checkpoint")
    assert cli_main(["convert", str(tmp_path / "a.txt"), str(tmp_path / "out")]) == 2
    assert "text file" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_config_claiming_a_huge_model_fails_before_allocating(tmp_path):
    """config.json naming ViT-L sizes beside micro weights: refused from the shapes alone (on the meta device),
    instead of allocating the large model first."""
    out = ckpt.save_model(_trained("slip_vit_micro"), tmp_path / "m")
    doc = json.loads((out / "config.json").read_text())
    doc["model"]["vision"].update(width=4096, layers=48, heads=32)
    (out / "config.json").write_text(json.dumps(doc))
    (out / "checksums.json").unlink()  # edited by hand
    with pytest.raises(CheckpointError, match="weights do not fit"):
        ckpt.load_model(out)


def test_absurdly_nested_json_is_a_checkpoint_error(tmp_path):
    out = ckpt.save_model(_trained("slip_vit_micro"), tmp_path / "m")
    (out / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    (out / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        ckpt.load_model(out)


def test_checkpoint_files_share_one_mode(tmp_path):
    out = ckpt.save_model(_trained("clip_vit_micro"), tmp_path / "m")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors was 0600 while the others were 0644
