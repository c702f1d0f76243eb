"""Every `openslip ...` command shown in README.md and docs/*.md runs, shrunk to a micro model and a few samples.

The project's rule: a feature is done when a user's command does it and a test runs that same command; a
documented command that fails is a failing test. The commands are read from the fenced code blocks of the
docs, so a command added to the docs is tested without touching this file, and one whose flags drift from
the CLI fails here. What a command needs (a trained run directory, an original SLIP checkpoint, image
folders, shards, manifests) is made small in a temporary directory, and the documented placeholder path is
rewritten to point at it (PLACEHOLDERS). Size settings are appended per sub-command (SHRINK); the few
commands that cannot run in seconds on a CPU are listed with their reason (LEFT_OUT).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference_checkout import write_checkout

from openslip.cli import COMMANDS, build_parser, main
from openslip.eval.finetune import FinetuneConfig
from openslip.eval.sets import task_options
from openslip.models import MODELS, create_model
from openslip.overrides import apply_overrides, parse_overrides
from openslip.train.recipes import RECIPES, make_config

# The paper recipes train in bf16, which this kind of CPU emulates slowly: the warning is expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:train.precision=bf16 has no fast kernels:UserWarning"),
    pytest.mark.usefixtures("one_thread"),  # micro models on a shared 2-core CPU (conftest.py)
]

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Fenced blocks that hold shell commands (an untagged block too: the docs use them for commands and output).
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
# A line that shows what a command printed, not a command: `openslip train: error: ...`.
OUTPUT_LINE = re.compile(r"^openslip( [\w-]+)*: (error|usage):")
# Flags whose command only lists or prints something: run as documented, nothing to shrink.
LISTING_FLAGS = {"--list-recipes", "--print-config", "--list", "--help", "-h"}


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    file: str  # e.g. "docs/TRAINING.md"
    line: int  # 1-based line where the command starts
    text: str  # the command as documented: continuations joined, comment stripped
    argv: tuple[str, ...]  # what `openslip` receives: sub-command first
    torchrun: bool  # documented as `torchrun ... -m openslip.cli ...`
    expected_error: str | None = None  # the `openslip X: error: ...` line the docs show after it, if any

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{'torchrun ' if self.torchrun else ''}{' '.join(self.argv[:2])}"


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join `\\` continuations; each result keeps the number of its first line."""
    out: list[tuple[int, str]] = []
    start, parts = None, []
    for number, raw in block:
        line = raw.strip()
        if start is None:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        out.append((start, " ".join(parts)))
        start, parts = None, []
    if parts:
        out.append((start, " ".join(parts)))
    return out


def _segments(tokens: list[str]) -> list[list[str]]:
    """`a && b ; c` -> [a, b, c]: the README chains set-up steps before `openslip train`."""
    segs: list[list[str]] = [[]]
    for tok in tokens:
        if tok in ("&&", ";", "||"):
            segs.append([])
        else:
            segs[-1].append(tok)
    return [s for s in segs if s]


def _drop_optional_groups(tokens: list[str]) -> list[str]:
    """`... --peak-budget 0.2 [--threads 1]` -> without the optional group (SHRINK adds its own settings)."""
    out, depth = [], 0
    for tok in tokens:
        opens = tok.startswith("[")
        depth += tok.count("[") if opens else 0
        if depth == 0:
            out.append(tok)
        if depth:
            depth -= tok.count("]")
    return out


def _commands_in(text: str, file: str) -> list[DocCommand]:
    found: list[DocCommand] = []
    block: list[tuple[int, str]] = []
    in_block = shell = False
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and not in_block:
            in_block, shell, block = True, fence.group(1).lower() in SHELL_LANGS, []
        elif fence:
            if shell:  # python, yaml ... blocks hold no shell commands
                found += _commands_in_block(block, file)
            in_block = False
        elif in_block:
            block.append((number, line))
    return found


def _commands_in_block(block: list[tuple[int, str]], file: str) -> list[DocCommand]:
    found: list[DocCommand] = []
    for number, line in _logical_lines(block):
        if OUTPUT_LINE.match(line):
            # printed by the command above it: that command must end with exactly this error
            if found:
                found[-1] = dataclasses.replace(found[-1], expected_error=line)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # prose or output that is not shell syntax
            continue
        for seg in _segments(tokens):
            if seg[0] == "openslip":
                argv, torchrun = seg[1:], False
            elif seg[0] == "torchrun" and "openslip.cli" in seg:
                # torchrun's own options go; the sub-command runs in one process (see test_documented_command_runs)
                argv, torchrun = seg[seg.index("openslip.cli") + 1 :], True
            else:
                continue
            found.append(DocCommand(file, number, shlex.join(seg), tuple(argv), torchrun))
    return found


def extract_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for path in DOC_FILES:
        commands += _commands_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return commands


COMMANDS_IN_DOCS = extract_commands()

# The documented commands the default test run leaves out, by their text as extracted (DocCommand.text):
# ("skip", why it cannot run here) or ("slow", why it takes minutes; it runs with `pytest -m slow`, the
# project's marker for long tests). Keep this short: everything that can run in seconds on a CPU runs, shrunk.
LEFT_OUT: dict[str, tuple[str, str]] = {
    "openslip bench train '[key.path=value' '...]'": ("skip", "a usage synopsis, not a command"),
    "openslip bench data '[--n' '64]' '[--image-size' '224]' '[--rounds' '5]' '[--device' 'cpu|cuda]' "
    "'[--output' 'FILE.json]'": ("skip", "a usage synopsis (alternatives cpu|cuda), not a command"),
    "openslip bench train model=slip_vit_b16 train.batch_size=256 train.precision=bf16 train.compile=true --steps 20 "
    "--warmup 5": (
        "slow",
        "torch.compile generates and builds C++ kernels on a CPU: about 3 min even for the micro model at one "
        "step, and no flag shrinks compilation",
    ),
}


if importlib.util.find_spec("onnx") is None:  # the optional [export] extra
    LEFT_OUT["openslip export runs/demo exported/onnx --format onnx"] = ("skip", "needs the onnx package ([export])")


def _params() -> list:
    params = []
    for cmd in COMMANDS_IN_DOCS:
        kind, reason = LEFT_OUT.get(cmd.text, ("run", ""))
        marks = {"run": [], "skip": [pytest.mark.skip(reason=reason)], "slow": [pytest.mark.slow]}[kind]
        params.append(pytest.param(cmd, marks=marks, id=cmd.id))
    return params


# ---------------------------------------------------------------------------------------------------------------
# Shrinking
# ---------------------------------------------------------------------------------------------------------------

# Per sub-command: settings appended to a documented command so that it runs in seconds on a CPU. They come
# last, so they win (argparse keeps an option's last value; `openslip train` applies overrides in order).
# A new sub-command adds its entry here (an empty list when it has nothing to shrink); a documented command
# of a sub-command without an entry fails, naming this dict. `model` of train / bench is swapped for the
# micro model of the same family (_micro_model), not listed here.
SHRINK: dict[tuple[str, ...], list[str]] = {
    ("train",): (
        "train.steps=2 train.batch_size=8 data.num_workers=0 eval.samples=16 optim.warmup_steps=1 "
        "ckpt.every_steps=2 train.progress=false"
    ).split(),
    ("eval", "zeroshot"): "-n 16".split(),
    ("eval", "retrieval"): "-n 16".split(),
    # a global batch of 64: the smallest for which `linear_reference_lr_bug=8` (docs/PAPER.md) gives a rate above 0
    ("eval", "linear"): "-n 16 --num-train 32 linear_epochs=1 linear_batch_size=64".split(),
    ("eval", "knn"): "-n 16 --num-train 32".split(),
    # 25 train images of each of demo_shapes' 8 classes: the documented --shots 1,5,10,25 as written
    ("eval", "fewshot"): "-n 16 --num-train 200".split(),
    ("eval", "suite"): [],  # its sets are small already (PLACEHOLDERS)
    ("finetune",): "-n 16 --num-train 32 epochs=1 warmup_epochs=0 batch_size=16".split(),
    ("embed",): "--batch-size 16".split(),
    # one loader worker still runs the worker path (and --worker-priority); a small sweep for --memory-sweep
    ("bench", "train"): (
        "train.batch_size=8 --steps 1 --warmup 1 --peak-budget 0.05 train.threads=1 data.num_workers=1 "
        "--sweep-batches 4,8"
    ).split(),
    ("bench", "data"): "--n 8 --rounds 1".split(),
    ("data", "make-shards"): [],
    ("data", "inspect"): "--n 4 --scan 16".split(),
    # --force: the documented converted folder (clip_b16) is also an input of later commands, built in advance
    ("convert",): ["--force"],
    ("export",): [],
    ("plot",): [],
    ("compare",): (
        "--num-test 16 --num-train 32 --bootstrap 100 --finetune-epochs 1 train.steps=2 train.batch_size=8 "
        "data.num_workers=0 train.progress=false model=slip_vit_micro"
    ).split(),
}


def _subcommand(argv: tuple[str, ...]) -> tuple[str, ...]:
    for size in (2, 1):
        if tuple(argv[:size]) in SHRINK:
            return tuple(argv[:size])
    return tuple(argv[:1])


def _micro_model(model: str) -> str:
    """The micro model with the same parts as `model`: slip_vit_b16 -> slip_vit_micro, clip_* -> clip_vit_micro."""
    family = model.lower().split("_")[0]
    micro = f"{family}_vit_micro"
    assert micro in MODELS, f"no micro model for {model}"
    return micro


def _train_values(argv: list[str]) -> dict[str, str]:
    """The key=value overrides of a train command (the last one of a key wins, as in `openslip train`)."""
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))


def _train_model(argv: list[str]) -> str:
    """The model a train command would build: its last `model=`, else its recipe's (default: demo)."""
    values = _train_values(argv)
    return values.get("model") or RECIPES.get(values.get("recipe", "demo"))().model


def shrink(cmd: DocCommand, argv: list[str], inputs: Inputs, cwd: Path) -> list[str]:
    if LISTING_FLAGS & set(argv):
        return argv
    sub = _subcommand(tuple(argv))
    if sub not in SHRINK:
        if sub and sub[0] in COMMANDS:
            pytest.fail(f"`openslip {' '.join(sub)}` has no shrink settings: add them to SHRINK in {__name__}")
        return argv  # not a sub-command of the CLI: it runs and fails loudly (argparse names the choices)
    extra = list(SHRINK[sub])
    if sub == ("train",) and not any(a.startswith("data.train=") for a in argv):
        # the paper recipes default to /data/<dataset>/shard-... : that path is a placeholder too
        default = RECIPES.get(_train_values(argv).get("recipe", "demo"))().data.train
        if default in PLACEHOLDERS:
            extra.append(f"data.train={PLACEHOLDERS[default](inputs, cwd)}")
    if sub == ("train",) and cmd.expected_error is None:
        # a command documented to fail keeps its model, so that the message is the documented one
        extra.append(f"model={_micro_model(_train_model(argv))}")
    if sub == ("train",) and any(a.startswith("data.image_batch_size=") for a in argv):
        extra.append("data.image_batch_size=4")  # the unpaired images of the small inputs are a dozen
    if sub == ("compare",) and "--eval-sets" not in argv:
        extra += ["--eval-sets", "demo_colours,demo"]  # one labelled and one retrieval set of the default three
    if sub == ("bench", "train"):
        extra.append(f"model={_micro_model(_train_model(argv))}")
    # the CLI refuses a key given twice: the shrink value replaces the doc's
    if sub in (("train",), ("compare",), ("finetune",), ("bench", "train")) or sub[0] == "eval":
        shrunk = {e.partition("=")[0] for e in extra if "=" in e and not e.startswith("-")}
        argv = [a for a in argv if a.startswith("-") or a.partition("=")[0] not in shrunk or "=" not in a]
    return argv + extra


# ---------------------------------------------------------------------------------------------------------------
# Inputs the commands name: built small, once per session
# ---------------------------------------------------------------------------------------------------------------


def _write_images(folder: Path, n: int, seed: int, size: int = 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def _image_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """An ImageFolder tree ROOT/<class>/<image>."""
    for c, name in enumerate(classes):
        _write_images(root / name, per_class, seed=c)
    return root


def _caption_shards(root: Path) -> str:
    """Training shards written by `openslip data make-shards`, 16 captioned images in 2 shards: their pattern."""
    src = root / "src"
    _write_images(src, 16, seed=7)
    for i in range(16):
        (src / f"{i:03d}.txt").write_text(f"a photo of noise number {i}")
    assert main(["data", "make-shards", str(src), str(root / "shards"), "--shard-size", "8"]) == 0
    return str(root / "shards" / "shard-{000000..000001}.tar")


def _jpeg_caption_shards(root: Path) -> str:
    """JPEG training shards (data.decode=device hands their bytes over), 16 captioned images of 64 x 48 and one PNG
    (decoded in the worker, counted) in 2 shards: their pattern."""
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    for i in range(16):
        pixels = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        pixels.save(src / f"{i:03d}.png") if i == 3 else pixels.save(src / f"{i:03d}.jpg", quality=90)
        (src / f"{i:03d}.txt").write_text(f"a photo of noise number {i}")
    assert main(["data", "make-shards", str(src), str(root / "shards"), "--shard-size", "8"]) == 0
    return str(root / "shards" / "shard-{000000..000001}.tar")


def _labelled_shards(folder: Path, num_shards: int, num_classes: int) -> None:
    """clip-benchmark's layout: KEY.png + KEY.cls (the class index), uncompressed tars shard-K.tar."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    n = 0
    for k in range(num_shards):
        with tarfile.open(folder / f"shard-{k}.tar", "w") as tar:
            for _ in range(3):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
                for name, data in ((f"s{n:04d}.png", png.getvalue()), (f"s{n:04d}.cls", str(n % num_classes).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1


def _csv_manifest(path: Path) -> None:
    _write_images(path.parent / "images", 16, seed=11)
    rows = [f"images/{i:03d}.png,a photo of noise number {i}" for i in range(16)]
    path.write_text("image,caption\n" + "\n".join(rows) + "\n")


def _captioned_folder(root: Path) -> str:
    """An image folder with a sidecar .txt caption per image."""
    _write_images(root, 12, seed=13)
    for i in range(12):
        (root / f"{i:03d}.txt").write_text(f"a picture of noise number {i}")
    return str(root)


def _benchmark_tree(root: Path) -> Path:
    """CIFAR-10's test split under test/ (class-name folders) and Hateful Memes' class-index folders."""
    _image_folder(root / "cifar10" / "test", ["airplane", "cat"], per_class=2)
    _image_folder(root / "hateful_memes", ["0", "1"], per_class=2)
    return root


IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]
PROMPTS_JSON = '{"classnames": ["cat", "dog"], "templates": ["a photo of a {}.", "a picture of a {}."]}'


def _text_file(root: Path, name: str, text: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return str(root / name)


def _original_slip_checkpoint(path: Path) -> None:
    """Laid out like the SLIP reference's files: DDP 'module.' keys and argparse args naming the model."""
    torch.manual_seed(0)
    model = create_model("slip_vit_micro")
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 24, "state_dict": state, "args": argparse.Namespace(model="slip_vit_micro")}, path)


def _open_clip_file(path: Path) -> None:
    """An open_clip-layout state dict (random values) of slip_vit_micro's sizes, which the shrunk train swaps in."""
    from clip_layout_utils import clip_state_dict

    torch.save(clip_state_dict(patch=8, image_size=32, context=77, vocab=49408, embed=64), path)


def _converted_clip(path: Path) -> None:
    _open_clip_file(path.with_suffix(".bin"))
    assert main(["convert", str(path.with_suffix(".bin")), str(path), "--activation", "gelu"]) == 0


class Inputs:
    """Builds each input the first time a command asks for it; `root` is a session-wide temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path | str] = {}

    def get(self, name: str, build: Callable[[Path], Path | str]) -> Path | str:
        if name not in self._built:
            self._built[name] = build(self.root / name)
        return self._built[name]

    def trained_run(self) -> Path:
        """A shrunk `openslip train` run directory (SLIP, the README's main command): the `runs/demo` of the docs.
        It keeps a best checkpoint too (`runs/demo/checkpoints/best`, docs/TRAINING.md)."""

        def build(out: Path) -> Path:
            argv = ["train", *SHRINK[("train",)], "model=slip_vit_micro", "eval.best_metric=zeroshot/demo_shapes"]
            argv.append(f"out_dir={out}")
            assert main(argv) == 0
            return out

        return Path(self.get("run", build))


# Placeholder paths of the docs -> how to make a small input of that kind. Each builder takes the session's
# Inputs and the test's working directory and returns what replaces the placeholder in argv. Run directories
# are copied into the working directory, because commands may write into them (plots, resumed runs).
Builder = Callable[[Inputs, Path], str]


def _copied_run(name: str) -> Builder:
    def build(inputs: Inputs, cwd: Path) -> str:
        shutil.copytree(inputs.trained_run(), cwd / name)
        return name

    return build


def _in_cwd(name: str, make: Callable[[Path], object]) -> Builder:
    def build(inputs: Inputs, cwd: Path) -> str:
        make(cwd / name)
        return name

    return build


def _shared(name: str, make: Callable[[Path], Path | str]) -> Builder:
    return lambda inputs, cwd: str(inputs.get(name, make))


def _labelled_shard_pattern(root: Path) -> str:
    _labelled_shards(root / "test", num_shards=4, num_classes=10)
    return str(root / "test" / "shard-{0..3}.tar")


def _csv_in(root: Path) -> str:
    _csv_manifest(root / "train.csv")
    return str(root / "train.csv")


def _csv_with_own_columns(root: Path) -> str:
    _write_images(root / "images", 16, seed=17)
    rows = [f"images/{i:03d}.png,a photo of noise {i},noise {i}" for i in range(16)]
    (root / "own.csv").write_text("jpg_path,alt_text,title\n" + "\n".join(rows) + "\n")
    return str(root / "own.csv") + "?image_key=jpg_path&caption_keys=alt_text"


PLACEHOLDERS: dict[str, Builder] = {
    # models
    "runs/demo": _copied_run("runs/demo"),
    "runs/demo/checkpoints/best": lambda inputs, cwd: _copied_run("runs/demo")(inputs, cwd) + "/checkpoints/best",
    "runs/demo_seed1": _copied_run("runs/demo_seed1"),
    "M": _copied_run("M"),
    "slip_base_25ep.pt": _in_cwd("slip_base_25ep.pt", _original_slip_checkpoint),
    "open_clip_pytorch_model.bin": _in_cwd("open_clip_pytorch_model.bin", _open_clip_file),  # docs/INTEROP.md
    "clip_b16": _in_cwd("clip_b16", _converted_clip),
    # evaluation sets
    # Food-101's folders are its class names (the reference's, underscores for spaces); three of them here
    "/data/food101/test": _shared("food101", lambda p: str(_image_folder(p, ["apple_pie", "baklava", "tacos"], 2))),
    # ImageNet's own layout: one folder per WordNet id (tench, goldfish, great white shark)
    "/data/imagenet/val": _shared("in_val", lambda p: str(_image_folder(p, IMAGENET_WNIDS, 2))),
    "/data/imagenet/train": _shared("in_train", lambda p: str(_image_folder(p, IMAGENET_WNIDS, 4))),
    "/data/cifar10/test/shard-{0..3}.tar": _shared("cifar10", _labelled_shard_pattern),
    # `openslip eval suite ROOT`: two catalog sets in their layouts (docs/EVALUATION.md)
    "/data/benchmarks": _shared("benchmarks", lambda p: str(_benchmark_tree(p))),
    "TEST_DIR": _in_cwd("TEST_DIR", lambda p: _image_folder(p, ["cat", "dog"], per_class=4)),
    "TRAIN_DIR": _in_cwd("TRAIN_DIR", lambda p: _image_folder(p, ["cat", "dog"], per_class=8)),
    "images/": _in_cwd("images", lambda p: _write_images(p, 5, seed=5)),
    # a checkout of the original SLIP code (docs/PERFORMANCE.md): the stand-in with its layout
    "~/src/SLIP": _shared("slip_checkout", lambda p: str(write_checkout(p))),
    # training data
    "/data/cc3m/train.csv": _shared("cc3m", _csv_in),
    "/data/yfcc/shard-{000000..001499}.tar": _shared("yfcc", _caption_shards),
    "/shared/yfcc/shard-{000000..001499}.tar": _shared("yfcc", _caption_shards),
    "/shared/yfcc15m/shard-{000000..001499}.tar": _shared("yfcc", _caption_shards),
    "/data/yfcc15m/shard-{000000..000999}.tar": _shared("yfcc", _caption_shards),  # the paper recipes' default
    # photo-like JPEG shards (docs/PERFORMANCE.md, 'Decoding on the device')
    "/data/jpeg_shards/shard-{000000..000007}.tar": _shared("jpeg_shards", _jpeg_caption_shards),
    # own data (docs/TRAINING.md, docs/COMPARE.md)
    "/data/train.csv": _shared("own_csv", _csv_in),
    # a manifest with its own column names (the `,title` after it stays in the command)
    "/data/train.csv?image_key=jpg_path&caption_keys=alt_text": _shared("own_cols", _csv_with_own_columns),
    "/data/photos": _shared("photos", _captioned_folder),
    "/data/a/shard-{000000..000009}.tar": _shared("shards_a", _caption_shards),
    "/data/b/": _shared("shards_b", lambda p: str(Path(_caption_shards(p)).parent)),
    "/data/val": _shared("val", lambda p: str(_image_folder(p, ["cat", "dog"], per_class=4))),
    "/data/prompts.json": _shared("prompts", lambda p: _text_file(p, "prompts.json", PROMPTS_JSON)),
    "/data/names.txt": _shared("names", lambda p: _text_file(p, "names.txt", "cat\ndog\n")),
    "/data/templates.txt": _shared("templates", lambda p: _text_file(p, "templates.txt", "a photo of a {}.\n")),
    "runs/custom": _copied_run("runs/custom"),
    "/data/pets/test": _shared("pets_test", lambda p: str(_image_folder(p, ["cat", "dog"], per_class=4))),
    "/data/pets/train": _shared("pets_train", lambda p: str(_image_folder(p, ["cat", "dog"], per_class=8))),
    "/data/flickr30k/test.csv": _shared("flickr30k", _csv_in),
    # outputs on shared storage land in the working directory
    "/shared/runs/slip_b16": lambda inputs, cwd: "runs/slip_b16",
}


# What separates several paths in one value: YAML lists ('[a,b]', quoted items), compare's sets ('TEST@TRAIN,...',
# 'TEST@TRAIN#PROMPTS.json'), the evaluation of a training set ('zeroshot:/data/val', 'knn:TEST@TRAIN') and the
# catalog name of a zero-shot set ('imagenet:/data/imagenet/val') and a source's weight ('/data/b/::0.3').
_PATH_SEPARATORS = re.compile(r"(\[|\]|,|@|#|'|::|retrieval:|imagenet:|zeroshot:|knn:|linear:)")


def resolve_placeholders(argv: list[str], inputs: Inputs, cwd: Path) -> list[str]:
    """Replace each documented placeholder (a whole argument, the value of key=value, or one path of a list of
    them) by its small input."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=") if "=" in arg and not arg.startswith("-") else ("", "", arg)
        pieces = [value] if value in PLACEHOLDERS else _PATH_SEPARATORS.split(value)
        for i, piece in enumerate(pieces):
            if piece in PLACEHOLDERS:
                pieces[i] = PLACEHOLDERS[piece](inputs, cwd)
            elif piece.startswith("/"):
                pytest.fail(f"{arg!r} names a path of the user's machine: add a small input for it to PLACEHOLDERS")
        out.append(f"{key}{sep}{''.join(pieces)}")
    return out


# Options naming a file or folder that the command writes.
OUTPUT_FLAGS = {"--output", "--confusion-matrix", "--save", "--save-predictions", "--out-dir"}


def _outputs(argv: list[str]) -> list[Path]:
    """What a successful command must have written (relative paths: in the test's folder)."""
    paths = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS]
    if argv[:1] == ["train"] and not LISTING_FLAGS & set(argv):
        overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
        out_dir = make_config(parse_overrides(overrides)).out_dir  # the recipe may follow the data (custom)
        paths.append(Path(out_dir) / "checkpoints" / "latest")
    return paths


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("doc_inputs"))


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


def test_extractor_finds_the_documented_commands() -> None:
    """A broken extractor must not pass by finding nothing; every skip names a command that is still documented."""
    per_file: dict[str, int] = {}
    for cmd in COMMANDS_IN_DOCS:
        per_file[cmd.file] = per_file.get(cmd.file, 0) + 1
    assert len(COMMANDS_IN_DOCS) >= 30, per_file
    assert per_file.get("README.md", 0) >= 12, per_file
    assert per_file.get("docs/TRAINING.md", 0) >= 5 and per_file.get("docs/PERFORMANCE.md", 0) >= 8, per_file
    texts = {cmd.text for cmd in COMMANDS_IN_DOCS}
    stale = sorted(set(LEFT_OUT) - texts)
    assert not stale, f"LEFT_OUT names commands that are no longer in the docs: {stale}"
    assert {kind for kind, _ in LEFT_OUT.values()} <= {"skip", "slow"}
    # the README's main command, chained after its set-up steps, is found
    assert any(cmd.file == "README.md" and cmd.argv == ("train",) for cmd in COMMANDS_IN_DOCS)
    # output shown after a command is not a command, and is attached to the command that prints it
    assert not any(cmd.argv and cmd.argv[0].endswith(":") for cmd in COMMANDS_IN_DOCS)
    assert any(cmd.expected_error for cmd in COMMANDS_IN_DOCS)


def test_extractor_handles_continuations_comments_chains_and_output() -> None:
    doc = "\n".join(
        [
            "```bash",
            "openslip train a=1 \\",
            "    b='x y'   # a comment",
            "pip install -e . && openslip eval knn knn_k=3",
            "torchrun --nproc-per-node 2 -m openslip.cli train c=2",
            "openslip train d=0",
            "openslip train: error: d is wrong",
            "```",
            "```python",
            "openslip.load_model('x')",
            "```",
        ]
    )
    got = [(c.line, c.argv, c.torchrun, c.expected_error) for c in _commands_in(doc, "X.md")]
    assert got == [
        (2, ("train", "a=1", "b=x y"), False, None),
        (4, ("eval", "knn", "knn_k=3"), False, None),
        (5, ("train", "c=2"), True, None),
        (6, ("train", "d=0"), False, "openslip train: error: d is wrong"),
    ]
    assert _drop_optional_groups(["--a", "1", "[--threads", "1]", "--b"]) == ["--a", "1", "--b"]


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_shrink_settings_are_real_options() -> None:
    """SHRINK entries of sub-commands the docs do not show yet are checked here, so they cannot rot unseen."""
    make_config(parse_overrides(SHRINK[("train",)]))  # known keys, valid values
    apply_overrides(FinetuneConfig(), [e for e in SHRINK[("finetune",)] if "=" in e])
    make_config(parse_overrides([e for e in SHRINK[("bench", "train")] if "=" in e and not e.startswith("-")]))
    for task in ("zeroshot", "retrieval", "linear", "knn", "fewshot", "suite"):  # keys the task reads, valid values
        task_options(task, {}, [e for e in SHRINK[("eval", task)] if "=" in e and not e.startswith("-")])
    parser = build_parser()
    for path, extra in SHRINK.items():
        if path == ("train",):
            continue
        try:
            sub = _subparser(parser, path)
        except KeyError:
            pytest.fail(f"SHRINK names `openslip {' '.join(path)}`, which the CLI does not have")
        known = {opt for action in sub._actions for opt in action.option_strings}
        assert {e for e in extra if e.startswith("-")} <= known, f"unknown options in SHRINK[{path}]"


def test_unknown_subcommands_run_unshrunk_and_known_ones_need_shrink_settings(tmp_path: Path) -> None:
    inputs = Inputs(tmp_path)
    unknown = DocCommand("X.md", 1, "openslip nosuch --x 1", ("nosuch", "--x", "1"), False)
    assert shrink(unknown, list(unknown.argv), inputs, tmp_path) == ["nosuch", "--x", "1"]
    listing = DocCommand("X.md", 1, "openslip train --list-recipes", ("train", "--list-recipes"), False)
    assert shrink(listing, list(listing.argv), inputs, tmp_path) == ["train", "--list-recipes"]
    baseline = DocCommand("X.md", 1, "openslip train model=clip_vit_tiny", ("train", "model=clip_vit_tiny"), False)
    assert shrink(baseline, list(baseline.argv), inputs, tmp_path)[-1] == "model=clip_vit_micro"


@pytest.mark.parametrize("cmd", _params())
def test_documented_command_runs(
    cmd: DocCommand, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # relative paths of the docs (runs/demo, zs.json, images/) land in this test's folder
    monkeypatch.chdir(tmp_path)
    # `torchrun ... -m openslip.cli X` runs X in one process here: the same code path with world size 1;
    # torchrun itself (several gloo processes) is covered by the multi-process tests.
    argv = resolve_placeholders(_drop_optional_groups(list(cmd.argv)), inputs, tmp_path)
    argv = shrink(cmd, argv, inputs, tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: an unknown sub-command or flag
        code = exc.code
    out = capsys.readouterr()
    if cmd.expected_error is not None:
        assert code == 2, f"documented to fail, but exited {code}: {' '.join(argv)}\n{out.err}"
        assert cmd.expected_error in out.err.splitlines(), f"the docs show another message than:\n{out.err}"
        return
    assert code == 0, f"`openslip {' '.join(argv)}` exited {code}\n{out.err[-3000:]}"
    missing = [str(p) for p in _outputs(argv) if not p.exists()]
    assert not missing, f"`openslip {' '.join(argv)}` did not write {missing}"
