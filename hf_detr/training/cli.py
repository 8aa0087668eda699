"""`hf-detr-train` / `scripts/train.py`: train DETR (see `hf-detr-train --help`).

hf-detr-train                                     # the built-in dataset, its preset
accelerate launch scripts/train.py --dataset /data/coco --output-dir outputs/detr-r50
"""

from __future__ import annotations

import logging
import sys
import warnings

from ..commands import run_command
from .arguments import DeprecatedFlagWarning, TrainingArguments, parse_args
from .panoptic import stage_to_run, training_stages
from .trainer import TrainingStopped, train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("hf_detr").setLevel(logging.INFO)
    # one "Saving current state to ..." line per checkpoint (accelerate.accelerator), not one per file
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    args = parse_args_announcing_deprecations(argv)
    stages = training_stages(args)  # panoptic with detector_steps: the detector, then the mask head
    for number, stage in enumerate(stages, start=1):
        stage = stage_to_run(stage, is_last=number == len(stages))
        if stage is None:
            continue
        if len(stages) > 1:
            logging.getLogger("hf_detr.training").info(
                "Stage %d of %d: %s.", number, len(stages), stage.output_dir
            )
        try:
            result = train(stage)
        except TrainingStopped as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if result.stop_reason in ("signal", "stop_after_steps"):
            break
    if result.stats is not None:
        from ..evaluation import format_stats

        text = (
            "\n".join(f" {name:6s} = {value:0.3f}" for name, value in result.stats.items())
            if args.task == "panoptic"
            else format_stats(result.stats)
        )
        best_kept = args.load_best_model_at_end and result.best_step not in (None, result.global_step)
        label = f"the best model, step {result.best_step}" if best_kept else f"{result.global_step} steps"
        print(f"Final evaluation ({label}):\n{text}")
    if result.stop_reason in ("signal", "stop_after_steps"):
        print(
            f"Stopped ({result.stop_reason}) at step {result.global_step}; resume with --resume-from-checkpoint latest."
        )
    else:
        print(f"Model saved to {result.output_dir}")
    return result.exit_code


def parse_args_announcing_deprecations(argv: list[str] | None) -> TrainingArguments:
    """`parse_args`, each deprecated model flag announced in one `warning:` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecatedFlagWarning)
        try:
            return parse_args(argv)
        finally:
            for warning in caught:
                if issubclass(warning.category, DeprecatedFlagWarning):
                    print(f"warning: {warning.message}", file=sys.stderr)
                else:  # any other warning as Python shows it
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


if __name__ == "__main__":
    sys.exit(run_command(main))
