"""`openslip bench train --compare-reference PATH` times the original SLIP code from a user's checkout (here the
stand-in of tests/reference_checkout.py: the real one needs timm 0.4.12 and a torchvision that imports, which the
CPU-only torch of the test environment lacks; docs/PERFORMANCE.md has the real figures)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reference_checkout import STAND_IN_MODELS, write_checkout

from openslip.bench.reference import reference_name
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path, models: str = STAND_IN_MODELS) -> Path:
    return write_checkout(tmp_path / "SLIP", models)


def _bench(*extra: str) -> list[str]:
    return ["bench", "train", "model=slip_vit_micro", "train.batch_size=4", "--steps", "2", "--warmup", "1",
            "--peak-budget", "0.05", *extra]  # fmt: skip


def test_reference_names() -> None:
    assert reference_name("slip_vit_s16") == "SLIP_VITS16"
    assert reference_name("clip_vit_b16") == "CLIP_VITB16"
    assert reference_name("simclr_vit_l16") == "SIMCLR_VITL16"


def test_compare_reference_times_the_checkouts_step(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(_bench("--compare-reference", str(_checkout(tmp_path)), "--output", str(out))) == 0
    r = json.loads(out.read_text())
    assert r["reference"]["model"] == "SLIP_VITMICRO"
    ref = r["reference"]["model_only"]
    assert ref["samples_per_s"] > 0 and set(ref["breakdown_s"]) == {"data", "forward", "backward", "optimizer"}
    assert r["speedup_vs_reference"]["model_only"] == pytest.approx(
        r["model_only"]["samples_per_s"] / ref["samples_per_s"]
    )
    assert r["reference"]["commit"] is None and r["reference"]["modified"] is None  # not a git checkout
    # the best ratio any step of openslip's FLOPs could show: the reference's time over those FLOPs at the peak
    ceiling = r["speedup_ceiling_vs_reference"]
    peak, flops = r["matmul_peak_flops_per_s"], r["model_only"]["flops_per_step"]
    assert ceiling == pytest.approx(ref["step_s"] * peak / flops)
    printed = capsys.readouterr().out
    assert f"would be {ceiling:.2f}x the reference" in printed
    assert "reference SLIP_VITMICRO" in printed and "speed-up vs the reference checkout" in printed
    assert "not a git checkout (commit unknown)" in printed


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_compare_reference_names_the_checkouts_commit(tmp_path: Path, capsys) -> None:
    """The figures say which version of the reference they were measured against, and when its files were edited."""
    root = _checkout(tmp_path)

    def git(*args: str) -> str:
        ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run(
            ["git", "-C", str(root), *ident, *args], check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "reference")
    commit = git("rev-parse", "HEAD").strip()
    out = tmp_path / "bench.json"
    assert main(_bench("--compare-reference", str(root), "--output", str(out))) == 0
    r = json.loads(out.read_text())["reference"]
    assert (r["commit"], r["modified"]) == (commit, False)
    assert f"commit {commit[:7]}, timm " in capsys.readouterr().out
    with (root / "losses.py").open("a") as f:
        f.write("# edited\n")
    assert main(_bench("--compare-reference", str(root), "--output", str(out))) == 0
    assert json.loads(out.read_text())["reference"]["modified"] is True
    assert f"commit {commit[:7]} with modified files" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "no models.py and losses.py there"),
        ("broken", "cannot import the reference code: No module named 'timm_that_is_not_here'"),
        ("unknown", "the reference has no model 'SLIP_VITMICRO'; it has: SLIP_VITS16"),
    ],
)
def test_compare_reference_bad_checkouts(tmp_path: Path, capsys, setup: str, message: str) -> None:
    if setup == "missing":
        path = tmp_path / "nothing"
    elif setup == "broken":
        path = _checkout(tmp_path, "import timm_that_is_not_here\n")
    else:
        path = _checkout(tmp_path, STAND_IN_MODELS.replace("def SLIP_VITMICRO", "def SLIP_VITS16"))
    assert main(_bench("--compare-reference", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# timm >= 0.9 as the 2021 models.py meets it: `import timm` loads timm.models but not timm.models.registry
NEW_TIMM = {
    "timm/__init__.py": "from . import models\n",
    "timm/models/__init__.py": "",
    "timm/models/registry.py": "def register_model(fn):\n    return fn\n",
}


def test_compare_reference_imports_with_timm_1(tmp_path: Path) -> None:
    """The checkout's `@timm.models.registry.register_model` resolves with a timm that no longer imports that module
    with the package (it failed with "module 'timm.models' has no attribute 'registry'")."""
    for name, text in NEW_TIMM.items():
        (tmp_path / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "site" / name).write_text(text)
    models = "import timm\n" + STAND_IN_MODELS + "\n\n@timm.models.registry.register_model\ndef vit_x():\n    pass\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "openslip.cli", *_bench("--compare-reference", str(_checkout(tmp_path, models)))]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "speed-up vs the reference checkout" in proc.stdout
