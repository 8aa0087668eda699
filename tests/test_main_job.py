"""The main job: the default run on the built-in dataset, shortened, learns something measurable, and
fine-tuning it to the built-in set of new classes beats training those from scratch."""

from __future__ import annotations

import dataclasses
import json

import pytest
from accelerate.utils import set_seed

from hf_detr import HfDetrImageProcessor
from hf_detr.data import category_ids, class_names, detr_val_size, load_detection_dataset
from hf_detr.evaluation.cli import main as evaluate_main
from hf_detr.training import build_model, resolve_arguments, train

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.mark.slow
def test_a_shortened_default_run_beats_the_untrained_model_and_fine_tunes_better_than_scratch(tmp_path):
    args = resolve_arguments({"output_dir": str(tmp_path / "run"), "max_steps": 150})
    assert args.preset == "builtin" and args.dataset is None
    # the model the run starts from: same seed, same construction as the trainer's
    train_split = load_detection_dataset()["train"]
    set_seed(args.seed)
    build_model(args, class_names(train_split), category_ids(train_split)).save_pretrained(
        tmp_path / "untrained"
    )
    HfDetrImageProcessor(size=detr_val_size(args.image_scale)).save_pretrained(tmp_path / "untrained")
    untrained = tmp_path / "untrained.json"
    assert (
        evaluate_main(["--model", str(tmp_path / "untrained"), "--split", "val", "--output", str(untrained)])
        == 0
    )
    before = json.loads(untrained.read_text())["stats"]
    result = train(args)
    assert result.global_step == 150
    after = result.stats
    summary = {key: (round(before[key], 4), round(after[key], 4)) for key in ("AP", "AP50", "AR100")}
    assert after["AR100"] > before["AR100"] + 0.02, summary
    assert after["AP"] > before["AP"] and after["AP50"] > before["AP50"], summary
    card = (tmp_path / "run" / "README.md").read_text()  # the model card describes this run's schedule
    assert "150 optimizer steps" in card and "x0.1 after 80%" in card and "horizontal flips" in card
    fine_tuned = resolve_arguments(
        {"preset": "builtin-finetune", "init_from": str(tmp_path / "run"), "max_steps": 30,
         "eval_steps": None, "output_dir": str(tmp_path / "fine-tuned")}
    )  # fmt: skip
    scratch = dataclasses.replace(fine_tuned, init_from=None, output_dir=str(tmp_path / "scratch"))
    ours, theirs = train(fine_tuned).stats, train(scratch).stats
    summary = {key: (round(ours[key], 4), round(theirs[key], 4)) for key in ("AP", "AP50", "AR100")}
    assert ours["AP50"] > theirs["AP50"] + 0.02 and ours["AR100"] > theirs["AR100"] + 0.04, summary
