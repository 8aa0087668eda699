"""Plot AP50 against training minutes from one or more runs' log.jsonl (hf-detr-train output).

python benchmarks/plot_learning_curve.py outputs/hf-detr-shapes/log.jsonl --output docs/learning_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(log: Path) -> tuple[list[float], list[float]]:
    minutes, ap50 = [], []
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval" and "minutes" in record:
            minutes.append(record["minutes"])
            ap50.append(record["AP50"])
    return minutes, ap50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--output", type=Path, default=Path("docs/learning_curve.png"))
    parser.add_argument("--target", type=float, default=0.5)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # left: the full AP50 scale with the target; right: the same curves zoomed to their own range
    figure, (axis, zoomed) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for index, log in enumerate(args.logs):
        minutes, ap50 = read_curve(log)
        label = args.labels[index] if args.labels and index < len(args.labels) else log.parent.name
        for panel in (axis, zoomed):
            panel.plot(minutes, ap50, marker="o", markersize=3, label=label)
    axis.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"target AP50 {args.target}")
    axis.set_ylim(0, 1)
    zoomed.set_ylim(bottom=0)
    zoomed.set_title("zoomed", fontsize=9)
    for panel in (axis, zoomed):
        panel.axvline(15, color="grey", linestyle=":", linewidth=1)
        panel.set_xlabel("training minutes (2-core CPU)")
        panel.set_ylabel("AP50, built-in val split")
        panel.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
