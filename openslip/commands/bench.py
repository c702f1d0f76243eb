"""`openslip bench {train,data}`: throughput, step-time breakdown, peak memory and MFU.

What is measured and why: docs/DESIGN.md, 'Measuring performance'.

openslip bench train model=slip_vit_s16 train.batch_size=16 train.precision=bf16 --steps 3 --baseline
openslip bench train model=slip_vit_tiny train.batch_size=64 --with-data --output tiny.json
openslip bench data --n 64 --image-size 224

`bench train` builds its trainer from `openslip train`'s settings, given the same way (`key.path=value` on the
recipe: model, seed, train.batch_size, train.precision, train.compile, train.grad_checkpointing,
train.patch_dropout, train.threads, data.train, data.image_size, data.num_workers, data.worker_priority,
data.augment ...); its options are what the benchmark itself does (steps timed, paths compared, output). An
option it once had for a training setting (`--batch-size 16`) is refused in one line naming the key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from openslip.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmark training steps and the data pipeline")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)

    t = sub.add_parser("train", help="samples/s, step breakdown, peak memory, FLOPs and MFU of training steps")
    t.add_argument("--model", default=None, help="registered model name, as every command takes it (= model=NAME)")
    t.add_argument("--steps", type=int, default=5, help="measured steps per path (default 5)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    t.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --with-data: alternate model-only and end-to-end N times (default 1)",
    )
    t.add_argument(
        "--with-data", action="store_true", help="also time end-to-end steps with the data pipeline (data.train)"
    )
    t.add_argument("--baseline", action="store_true", help="also time the 2021 implementation, same weights")
    t.add_argument(
        "--compare-reference",
        default=None,
        metavar="PATH",
        help="a checkout of the original SLIP code: time its own step too (model-only, same process)",
    )
    t.add_argument("--reference-model", default=None, help="its model name (default: from model=, e.g. SLIP_VITS16)")
    t.add_argument("--text-len", type=int, default=None, help="tokens per synthetic caption (default 77)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    t.add_argument("--memory-sweep", action="store_true", help="peak memory at --sweep-batches, +/- checkpointing")
    t.add_argument("--sweep-batches", default="64,128,256", help="batch sizes of --memory-sweep (default 64,128,256)")
    t.add_argument("--profile", type=int, default=0, metavar="N", help="profile one more step, show its top N ops")
    t.add_argument("--peak-budget", type=float, default=2.0, help="seconds per matmul-peak measurement (default 2)")
    t.add_argument("--no-tune", action="store_true", help="skip openslip.train.perf.tune_cpu_runtime (to measure it)")
    t.add_argument("--output", default=None, metavar="FILE.json", help="write the result as JSON")
    t.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="training settings as `openslip train` takes them (default: the demo recipe's), e.g. "
        "model=slip_vit_s16 train.batch_size=16 train.precision=bf16 data.num_workers=4",
    )
    # the options it had before they became the training settings' keys: `--data` was data.train (the others match
    # their key by name: `--batch-size` -> train.batch_size)
    t.set_defaults(func=run_train, option_renames={"data": "data.train"})

    d = sub.add_parser("data", help="three-view augmentation: ms per sample per core, CPU / batched / PIL paths")
    d.add_argument("-n", "--num-images", "--n", dest="n", type=int, default=64, help="images per round (default 64)")
    d.add_argument("--image-size", type=int, default=224)
    d.add_argument("--rounds", type=int, default=5)
    d.add_argument("--device", default="cpu", help="device of the batched path (default cpu)")
    d.add_argument("--batch-size", type=int, default=None, help="batch size of the batched path (default n)")
    d.add_argument("--output", default=None, metavar="FILE.json", help="write the result as JSON")
    d.set_defaults(func=run_data)


def _check_output(path: str | None) -> None:
    """Before the benchmark runs: an --output that cannot be written, or would overwrite a run's or a checkpoint's
    file, is refused in one line."""
    if path:
        from openslip.outputs import check_output_file

        p = check_output_file(path, option="--output")
        if p.parent and not p.parent.exists():
            raise ConfigError(f"--output: folder {str(p.parent)!r} does not exist")


def _write(path: str | None, result: dict) -> None:
    if path:
        _check_output(path)
        Path(path).expanduser().write_text(json.dumps(result, indent=2) + "\n")


def run_train(args: argparse.Namespace) -> int:
    from openslip.bench.training import TrainBenchConfig, bench_train
    from openslip.overrides import parse_overrides

    _check_output(args.output)
    try:
        batches = tuple(int(b) for b in args.sweep_batches.split(","))
    except ValueError:
        raise ConfigError(f"--sweep-batches {args.sweep_batches!r} should be integers separated by commas") from None
    settings = parse_overrides(args.overrides)
    if args.model is not None:
        if "model" in settings:
            raise ConfigError(
                f"the model is given twice (--model {args.model}, model={settings['model']}): give it once"
            )
        settings["model"] = args.model
    bc = TrainBenchConfig(
        settings=settings,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        with_data=args.with_data,
        baseline=args.baseline,
        compare_reference=args.compare_reference,
        reference_model=args.reference_model,
        text_len=args.text_len,
        device=args.device,
        memory_sweep=args.memory_sweep,
        sweep_batches=batches,
        profile=args.profile,
        peak_budget_s=args.peak_budget,
        tune=not args.no_tune,
    )
    result = bench_train(bc)
    print(format_train_table(result), flush=True)
    _write(args.output, result)
    return 0


def run_data(args: argparse.Namespace) -> int:
    import os

    _check_output(args.output)
    from openslip.data.augment.pil_reference import benchmark_augment

    if args.n < 1 or args.rounds < 1:
        raise ConfigError("--n and --rounds must be >= 1")
    r = benchmark_augment(args.n, args.image_size, rounds=args.rounds, device=args.device, batch_size=args.batch_size)
    result: dict[str, Any] = {k: v for k, v in r.items()}
    for path in ("pil", "cpu", "batched"):  # one core, so samples/s per core
        result[f"{path}_samples_per_s_per_core"] = 1e3 / r[f"{path}_ms"]
    result["image_size"] = args.image_size
    result["load_avg"] = list(os.getloadavg())
    print(
        f"three-view SLIP augmentation at {args.image_size} px, ms per sample on one core (median of "
        f"{args.rounds} rounds of {args.n}; decode {r['decode_ms']:.2f} ms/image, not included)"
    )
    for path, label in (("pil", "PIL baseline (2021)"), ("cpu", "CPU path (workers)"), ("batched", "batched path")):
        print(f"  {label:22s} {r[f'{path}_ms']:7.2f} ms  {result[f'{path}_samples_per_s_per_core']:7.1f} samples/s")
    print(f"  speed-up vs PIL: CPU path {r['speedup_cpu']:.2f}x, batched {r['speedup_batched']:.2f}x")
    _write(args.output, result)
    return 0


def _checkout_state(ref: dict[str, Any]) -> str:
    """ "commit c6faf5d, timm 0.4.12" for the report line of a --compare-reference run."""
    if ref.get("commit") is None:
        state = "not a git checkout (commit unknown)"
    else:
        state = f"commit {ref['commit'][:7]}" + (" with modified files" if ref.get("modified") else "")
    return f"{state}, timm {ref.get('timm') or 'not installed'}"


def _ceiling_line(ceiling: float, other: str) -> str:
    return f"ceiling: openslip's FLOPs at the full measured matmul peak would be {ceiling:.2f}x {other} (model-only)"


def format_train_table(r: dict[str, Any]) -> str:
    """A readable table of `bench_train`'s result."""
    m = r["machine"]
    c = r["config"]
    lines = [
        f"{c['model']} @ {r['image_size']} px, batch {c['batch_size']}, {c['precision']}, {c['steps']} steps "
        f"(+{c['warmup']} warm-up) on {m.get('gpu') or m['cpu']} ({m['threads']} threads, load "
        f"{r['load_avg']['before'][0]:.1f} -> {r['load_avg']['after'][0]:.1f})",
        f"ISA: {' '.join(m.get('isa') or ['unknown'])}; native bf16 matmul: "
        f"{'yes' if m.get('fast_bf16', True) else 'no (emulated)'}",
        f"matmul peak (F.linear, {c['precision']}): {r['matmul_peak_flops_per_s'] / 1e9:,.1f} GFLOP/s; "
        f"model FLOPs per sample (fwd+bwd): {r['flops_per_sample']['train'] / 1e9:,.2f} GFLOP",
        "",
        f"{'path':24s} {'samples/s':>10s} {'step s':>8s} {'data':>7s} {'fwd':>7s} {'bwd':>7s} {'optim':>7s} "
        f"{'GFLOP/s':>8s} {'MFU':>6s} {'peak MB':>8s} {'faults':>8s} {'sys s':>6s}",
    ]
    rows = [("model-only", r["model_only"])]
    if "end_to_end" in r:
        rows.append(("end-to-end", r["end_to_end"]))
    for key, row in r.get("baseline", {}).items():
        rows.append((f"baseline {key.replace('_', '-')}", row))
    if "reference" in r:
        rows.append((f"reference {r['reference']['model']}", r["reference"]["model_only"]))
    for name, s in rows:
        b = s["breakdown_s"]
        lines.append(
            f"{name:24s} {s['samples_per_s']:10.2f} {s['step_s']:8.3f} {b['data']:7.3f} {b['forward']:7.3f} "
            f"{b['backward']:7.3f} {b['optimizer']:7.3f} {s['achieved_flops_per_s'] / 1e9:8.1f} "
            f"{100 * s['mfu']:5.1f}% {s['peak_memory_mb']:8.0f} {s['minor_page_faults_per_step']:8.0f} "
            f"{s['sys_cpu_s_per_step']:6.2f}"
        )
    if "end_to_end" in r:
        e2e = r["end_to_end"]
        rounds = e2e.get("ratio_by_round", [])
        each = f" (median of {len(rounds)} rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if len(rounds) > 1 else ""
        lines.append(f"end-to-end / model-only: {e2e['ratio_to_model_only']:.2f}{each}")
        if "loader_cpu_s_per_batch" in e2e:
            cpu = e2e["loader_cpu_s_per_batch"]
            line = f"loader: {1e3 * cpu:.0f} ms of CPU per batch ({1e3 * cpu / c['batch_size']:.2f} ms per sample)"
            if "loader_share" in e2e:
                ls = e2e["loader_share"]
                line += (
                    f", {100 * ls['share']:.0f}% of a model-only step's {ls['step_cpu_s']:.2f} CPU-s "
                    f"({m['threads']} threads), so on shared cores expect end-to-end "
                    f"~{ls['expected_ratio']:.2f} x model-only"
                )
            lines.append(line)
        lines += data_parts_lines(e2e, c)
    for k, v in r.get("speedup_vs_baseline", {}).items():
        lines.append(f"speed-up vs 2021 baseline, both {c['precision']} ({k.replace('_', '-')}): {v:.2f}x")
    if "speedup_ceiling_vs_baseline" in r:
        lines.append(_ceiling_line(r["speedup_ceiling_vs_baseline"], "the baseline"))
    if "reference" in r:
        ref = r["reference"]
        lines.append(f"reference: {ref['model']} from {ref['checkout']}, {_checkout_state(ref)}")
    for k, v in r.get("speedup_vs_reference", {}).items():
        lines.append(f"speed-up vs the reference checkout, both {c['precision']} ({k.replace('_', '-')}): {v:.2f}x")
    if "speedup_ceiling_vs_reference" in r:
        lines.append(_ceiling_line(r["speedup_ceiling_vs_reference"], "the reference"))
    for row in r.get("memory_sweep", []):
        mem = f"{row['peak_memory_mb']:,.0f} MB" if row.get("peak_memory_mb") is not None else row.get("error")
        lines.append(
            f"memory: batch {row['batch_size']:4d} checkpointing {'on ' if row['grad_checkpointing'] else 'off'}"
            f" -> {mem}"
        )
    if r.get("profile"):
        lines.append("top ops of one model-only step (self time):")
        lines += [
            f"  {p['op'][:40]:40s} {p['self_s']:8.3f} s {100 * p['share']:5.1f}%  x{p['calls']}" for p in r["profile"]
        ]
    if m.get("fast_bf16") is False and c["precision"] == "bf16":
        lines.append("note: this CPU has no native bf16 matmul (no AVX512-BF16 / AMX): bf16 runs emulated kernels")
    return "\n".join(lines)


DATA_PART_LABELS = {
    "workers": "waiting for workers",
    "handoff": "hand-off",
    "copy": "host-to-device copy",
    "decode_augment": "decode + augment on device",
}


def data_parts_lines(e2e: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """The end-to-end data phase split into its parts, and the CPU the batch decoder spent (data.decode=device)."""
    if "data_parts_ms_per_step" not in e2e:
        return []
    parts = e2e["data_parts_ms_per_step"]
    lines = ["data phase, ms per step: " + ", ".join(f"{DATA_PART_LABELS[k]} {v:.1f}" for k, v in parts.items())]
    lines.append(f"collation in the workers: {1e3 * e2e['collate_cpu_s_per_batch']:.1f} ms of CPU per batch")
    if "batch_decode_cpu_s_per_batch" in e2e:
        cpu = e2e["batch_decode_cpu_s_per_batch"]
        fallback = sum(e2e.get("fallback", {}).values())
        lines.append(
            f"batch decode (data.decode={c.get('decode', 'device')}) in the training process: {1e3 * cpu:.0f} ms "
            f"of CPU per batch ({1e3 * cpu / c['batch_size']:.2f} ms per sample); {fallback} images decoded in "
            "the workers instead (not JPEG, ...)"
        )
    return lines
