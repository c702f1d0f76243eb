"""The step time of each objective against SLIP's, measured side by side with `openslip bench train` (issue 28).

    python benchmarks/objective_costs.py [--model slip_vit_tiny] [--rounds 3] [--steps 5] [KEY=VALUE ...]

Each round runs `openslip bench train` (model-only: synthetic views, the step `openslip train` runs) once per
objective, in a rotated order, so that a change of machine load falls on every objective alike; the figure per
objective is the median over rounds of its samples/s, and its step time relative to SLIP's is SLIP's median samples/s
over its own (1.00: as fast as SLIP; 1.50: steps 50 % longer). KEY=VALUE settings go to every run
(e.g. train.batch_size=64 train.threads=1). The objectives are the methods of `openslip compare` that train the SLIP
model or a part of it; each gets that method's loss settings and nothing else (same model size, batch, precision).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from openslip.cli import main as openslip_main

# objective -> the settings that make it (the model's part left out, its loss terms)
OBJECTIVES = {
    "slip": [],
    "clip": ["model_kind=clip", "loss.ssl_scale=0"],
    "siglip": ["model_kind=clip", "loss.ssl_scale=0", "loss.contrastive=sigmoid"],
    "slip_sigmoid": ["loss.contrastive=sigmoid"],
    "clip_distill": ["loss.ssl=distill"],
    "siglip_distill": ["loss.ssl=distill", "loss.contrastive=sigmoid"],
}


def _argv(objective: str, model: str, steps: int, extra: list[str], out: Path) -> list[str]:
    settings = list(OBJECTIVES[objective])
    if "model_kind=clip" in settings:
        settings.remove("model_kind=clip")
        model = "clip_" + model.split("_", 1)[1]
    argv = ["bench", "train", "--model", model, "--steps", str(steps), "--warmup", "2", "--peak-budget", "0.2"]
    return [*argv, *settings, *extra, "--output", str(out)]


def run(model: str, rounds: int, steps: int, extra: list[str]) -> dict[str, dict[str, float]]:
    names = list(OBJECTIVES)
    seen: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                out = Path(tmp) / f"{name}_{r}.json"
                if openslip_main(_argv(name, model, steps, extra, out)) != 0:
                    raise SystemExit(f"bench train failed for {name}")
                seen[name].append(json.loads(out.read_text())["model_only"]["samples_per_s"])
    slip = statistics.median(seen["slip"])
    return {
        n: {"samples_per_s": statistics.median(v), "step_time_vs_slip": slip / statistics.median(v), "runs": len(v)}
        for n, v in seen.items()
    }


def _cpu() -> str:
    """The CPU's model name (the figures are only comparable on one machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="slip_vit_tiny", help="a SLIP model (the baselines drop a part of it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the table as JSON")
    parser.add_argument("settings", nargs="*", help="KEY=VALUE given to every run")
    args = parser.parse_args()
    table = run(args.model, args.rounds, args.steps, args.settings)
    print(f"{args.model}, {' '.join(args.settings) or 'demo recipe settings'}; {_cpu()}")
    print(f"{'objective':<16}{'samples/s':>11}{'step time vs SLIP':>19}")
    for name, row in table.items():
        print(f"{name:<16}{row['samples_per_s']:>11.1f}{row['step_time_vs_slip']:>19.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
