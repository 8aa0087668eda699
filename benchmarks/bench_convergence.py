"""Convergence curves: AP50 (or --metric) against updates for a built-in preset with and without each option.

Each variant is one `hf-detr-train` run of the built-in preset (same seed, same data order) for a
fixed number of updates, evaluated every `--eval-steps` on the built-in validation split, one after
the other on this machine. Prints a markdown table (AP50 at every evaluation, minutes and updates/s)
and writes it, with a PNG of the curves (needs matplotlib), under `--output`.

    python benchmarks/bench_convergence.py --max-steps 600 --eval-steps 100 \\
        --variant paper-queries= --variant groups-4=num_query_groups=4 --output docs/convergence

A variant is NAME=SETTINGS, SETTINGS being comma-separated `flag=value` pairs of `hf-detr-train`
(underscores or dashes); an empty SETTINGS is the preset as it is. The fine-tuning recipe's curves
(benchmarks/RESULTS.md, "Fine-tuning"), from the main job's output in outputs/hf-detr-shapes:

    python benchmarks/bench_convergence.py --max-steps 300 --eval-steps 50 --metric AP --target none \\
        --variant preset=preset=builtin-finetune --variant scratch=preset=builtin-finetune,init_from=none \\
        --variant frozen=preset=builtin-finetune,trainable_backbone_layers=0,freeze_backbone_batch_norm=true \\
        --output docs/finetune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition("=")
    flags = []
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        flags += [f"--{key.strip().replace('_', '-')}", value.strip()]
    return name, flags


def finished_with_these_settings(output_dir: Path, argv: list[str]) -> bool:
    """Whether `output_dir` holds a completed run whose settings equal what `argv` resolves to now."""
    from hf_detr.training import parse_args

    log, saved = output_dir / "log.jsonl", output_dir / "training_args.json"
    if not (log.is_file() and saved.is_file()):
        return False
    if '"reason": "completed"' not in log.read_text().splitlines()[-1]:
        return False
    expected = json.loads(json.dumps(dataclasses.asdict(parse_args(argv)), default=str))
    found = json.loads(saved.read_text())
    return {**found, "output_dir": None} == {**expected, "output_dir": None}  # the run may have been moved


def run_variant(name: str, flags: list[str], args: argparse.Namespace) -> dict:
    output_dir = args.work_dir / name
    command = [
        sys.executable, "-m", "hf_detr.training.cli", "--output-dir", str(output_dir),
        "--max-steps", str(args.max_steps), "--eval-steps", str(args.eval_steps), "--eval-epochs", "none",
        "--time-limit-minutes", "none", *flags,
    ]  # fmt: skip
    start = time.monotonic()
    if args.reuse and finished_with_these_settings(output_dir, command[3:]):
        print(f"{name}: reusing the finished run in {output_dir}")
    else:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    minutes = (time.monotonic() - start) / 60
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    if args.reuse:
        minutes = max(r.get("minutes", 0.0) for r in records)  # the run's own clock, not this call's
    curve = {r["step"]: r[args.metric] for r in records if r["event"] == "eval"}
    trained = [r for r in records if r["event"] == "train"]
    batch_size = json.loads((output_dir / "training_args.json").read_text())["batch_size"]
    rate = sum(r["images_per_second"] for r in trained) / max(len(trained), 1) / batch_size
    return {"name": name, "flags": " ".join(flags), "curve": curve, "minutes": minutes, "updates_per_s": rate}


def markdown(results: list[dict]) -> str:
    steps = sorted({step for result in results for step in result["curve"]})
    header = "| variant | settings | " + " | ".join(str(s) for s in steps) + " | min | updates/s |"
    lines = [header, "|" + "---|" * (len(steps) + 4)]
    for r in results:
        values = " | ".join(f"{r['curve'][s]:.3f}" if s in r["curve"] else "" for s in steps)
        lines.append(
            f"| {r['name']} | `{r['flags'] or '(preset)'}` | {values} | {r['minutes']:.1f} | {r['updates_per_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, targets: list[tuple[int, float]], ylabel: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no picture (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    for r in results:
        steps = sorted(r["curve"])
        axis.plot(steps, [r["curve"][s] for s in steps], marker="o", markersize=3, label=r["name"])
    for step, value in targets:
        axis.plot([step], [value], marker="*", color="black", markersize=10, linestyle="none")
    axis.set_ylim(0, 1)
    axis.set_xlabel("optimizer updates (batch 16)")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=flag=value,flag=value")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/convergence"))
    parser.add_argument("--metric", default="AP50", help="the evaluation's stat to tabulate (AP50, AP, ...)")
    parser.add_argument(
        "--target", default="600,0.5", help="STEPS,VALUE drawn as a star on the plot (none: no star)"
    )
    parser.add_argument("--output", type=Path, default=None, help="OUTPUT.md and OUTPUT.png")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read a variant's finished run in --work-dir if its settings match",
    )
    args = parser.parse_args()
    results = []
    for text in args.variant:
        name, flags = parse_variant(text)
        results.append(run_variant(name, flags, args))
        print(markdown(results[-1:]).splitlines()[-1], flush=True)
    table = markdown(results)
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".md").write_text(table + "\n")
        targets = [] if args.target == "none" else [tuple(float(v) for v in args.target.split(","))]
        plot(results, args.output.with_suffix(".png"), targets, f"{args.metric}, val split")


if __name__ == "__main__":
    main()
