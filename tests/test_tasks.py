"""Detection and panoptic are one task object each (hf_detr/evaluation/tasks.py, extended for training
in hf_detr/training/tasks.py): the dataset, the model, the collators' keyword arguments and the
evaluator come from it, in `setup_run` as in `hf-detr-evaluate`, with no branch on the task's name."""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT
from test_panoptic_training import TINY as PANOPTIC_TINY
from test_training import arguments

from hf_detr.data import DetectionDataset, PanopticDataset
from hf_detr.evaluation import tasks as evaluation_tasks
from hf_detr.evaluation.cli import build_parser as evaluate_parser
from hf_detr.evaluation.cli import main as evaluate_main
from hf_detr.modeling_detr import HfDetrForObjectDetection
from hf_detr.modeling_detr_segmentation import HfDetrForSegmentation
from hf_detr.training import tasks as training_tasks
from hf_detr.training.arguments import TASKS, best_metric
from hf_detr.training.setup import setup_run

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def test_one_task_per_name_the_same_for_training_and_evaluation():
    assert tuple(evaluation_tasks.TASKS) == tuple(training_tasks.TRAINING_TASKS) == TASKS
    choices = next(a.choices for a in evaluate_parser()._actions if a.dest == "task")
    assert tuple(choices) == TASKS  # hf-detr-evaluate --task takes the same names
    for name in TASKS:
        task, trained = evaluation_tasks.task_for(name), training_tasks.task_for(name)
        assert task.name == trained.name == name
        assert isinstance(
            trained, type(task)
        )  # training's task is the evaluation's, plus the model it trains
        for method in ("load_dataset", "collator_kwargs", "evaluator_factory", "evaluate", "flat_stats"):
            assert getattr(type(trained), method) is getattr(type(task), method), method
    detection, panoptic = evaluation_tasks.task_for("detection"), evaluation_tasks.task_for("panoptic")
    assert (detection.model_class, detection.dataset_class) == (HfDetrForObjectDetection, DetectionDataset)
    assert (panoptic.model_class, panoptic.dataset_class) == (HfDetrForSegmentation, PanopticDataset)
    assert detection.streams and not panoptic.streams
    with pytest.raises(ValueError, match="Unknown task 'instance'; expected one of detection, panoptic"):
        evaluation_tasks.task_for("instance")
    with pytest.raises(ValueError, match="Unknown task 'instance'"):
        training_tasks.task_for("instance")


def test_the_collators_keyword_arguments_by_task():
    detection, panoptic = evaluation_tasks.task_for("detection"), evaluation_tasks.task_for("panoptic")
    assert detection.collator_kwargs(train=True) == {"do_resize": False}
    assert detection.collator_kwargs(train=False) == {}
    assert panoptic.collator_kwargs(train=True) == {"do_resize": False, "format": "coco_panoptic"}
    assert panoptic.collator_kwargs(train=False) == {
        "format": "coco_panoptic", "keep_annotations": True, "return_segmentation_masks": False,
    }  # fmt: skip


def test_the_metrics_by_task_pick_the_best_model():
    assert evaluation_tasks.task_for("detection").metric_names[:2] == ("AP", "AP50")
    panoptic = evaluation_tasks.task_for("panoptic")
    assert panoptic.metric_names == ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
    results = {group: {"pq": 0.1 * i, "sq": 0.2 * i, "rq": 0.3 * i, "n": 2}
               for i, group in enumerate(("All", "Things", "Stuff"), start=1)}  # fmt: skip
    flat = panoptic.flat_stats(results)
    assert list(flat) == list(panoptic.metric_names) and flat["PQ_st"] == pytest.approx(0.3)
    assert best_metric(arguments("out", "x")) == "AP"
    assert best_metric(arguments("out", "x", task="panoptic")) == "PQ"


def test_setup_run_and_the_cli_have_no_branch_on_the_task_name():
    for path in ("hf_detr/training/setup.py", "hf_detr/evaluation/cli.py", "hf_detr/training/trainer.py"):
        source = (REPO_ROOT / path).read_text()
        assert not re.search(r"[!=]= \"(panoptic|detection)\"", source), path


@pytest.mark.parametrize("name", TASKS)
def test_training_and_the_evaluation_cli_take_the_same_task_and_build_the_same_collators(
    name, tmp_path, shapes, monkeypatch
):
    """The run's task is `task_for(args.task)`; saved, its model evaluated by `hf-detr-evaluate`, whose
    task builds the evaluation collator with the same keyword arguments as the run's did."""
    built = []  # (who, task name, train, keyword arguments) of every collator a task builds
    real = evaluation_tasks.Task.collator

    def recording(self, processor, train, num_threads=None):
        collator = real(self, processor, train, num_threads)
        built.append((who[0], self.name, train, {"do_resize": collator.do_resize,
                      "keep_annotations": collator.keep_annotations, **collator.processor_kwargs}))  # fmt: skip
        return collator

    monkeypatch.setattr(evaluation_tasks.Task, "collator", recording)
    who = ["training"]
    settings = (
        {} if name == "detection" else {k: v for k, v in PANOPTIC_TINY.items() if k != "config_overrides"}
    )
    run = setup_run(arguments(tmp_path / "run", shapes, **{**settings, "task": name, "max_steps": 1}))
    run.progress.close()
    assert run.task is training_tasks.task_for(name)
    assert type(run.unwrapped) is run.task.model_class
    assert isinstance(run.make_evaluator(), type(evaluation_tasks.task_for(name).evaluator_factory(
        run.unwrapped.config, run.data[run.eval_name])()))  # fmt: skip
    run.unwrapped.save_pretrained(tmp_path / "model")
    run.processor.save_pretrained(tmp_path / "model")

    who[0] = "cli"
    argv = ["--model", str(tmp_path / "model"), "--task", name, "--dataset", str(shapes), "--split", "val",
            "--output", str(tmp_path / "eval.json")]  # fmt: skip
    assert evaluate_main(argv) == 0
    training_eval = [kwargs for who_, task, train, kwargs in built if who_ == "training" and not train]
    cli_eval = [kwargs for who_, task, train, kwargs in built if who_ == "cli"]
    assert {task for _, task, _, _ in built} == {name}
    assert [train for who_, _, train, _ in built if who_ == "training"] == [True, False]
    assert training_eval == cli_eval and len(cli_eval) == 1
