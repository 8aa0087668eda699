"""The run they keep: --ema, early stopping and the best model, each exact across a resume."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import arguments, events
from torch import nn

from hf_detr.evaluation import tasks as detection_loop
from hf_detr.training import train
from hf_detr.training import trainer as trainer_module
from hf_detr.training.ema import EMA_FILE, ModelEma

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def checkpoint(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:08d}"


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].double() - b[key].double()).abs().max().item() for key in a)


def ramp(decay: float, tau: float, update: int) -> float:
    return decay * (1 - math.exp(-update / tau))


# ---------------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------------
def test_model_ema_is_the_ramped_moving_average_of_parameters_and_buffers(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ema = ModelEma(model, decay=0.9, tau=2.0)
    expected = {key: value.double() for key, value in model.state_dict().items()}  # EMA_0 = W_0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for update in (1, 2, 3):
        model(torch.randn(8, 3)).tanh().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        d = ramp(0.9, 2.0, update)
        for key, value in model.state_dict().items():
            average = d * expected[key] + (1 - d) * value.double()
            expected[key] = average if value.is_floating_point() else value.double()  # counts: copied
    averaged = ema.module.state_dict()
    assert largest_difference(averaged, expected) < 1e-6
    raw = model.state_dict()
    assert largest_difference(averaged, raw) > 1e-2  # the average lags the weights
    assert averaged["1.num_batches_tracked"].item() == 3  # a count is copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training

    ema.save(tmp_path)
    restored = ModelEma(model, decay=0.9, tau=2.0)  # starts from the current weights...
    restored.load(tmp_path)  # ...and reads back the average and its update count
    assert restored.updates == 3 and largest_difference(restored.module.state_dict(), averaged) == 0
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, decay=1.0, tau=2.0)


def test_an_ema_run_evaluates_and_saves_the_average_updated_after_each_step(tmp_path, shapes, monkeypatch):
    real_evaluate = detection_loop.evaluate_model  # the detection task's evaluation loop
    evaluated = []

    def spy(model, *rest):
        evaluated.append({key: value.clone() for key, value in model.state_dict().items()})
        return real_evaluate(model, *rest)

    monkeypatch.setattr(detection_loop, "evaluate_model", spy)
    out = tmp_path / "ema"
    result = train(arguments(out, shapes, max_steps=3, save_steps=1, ema=True, ema_decay=0.9, ema_tau=1.0))
    assert result.global_step == 3 and result.stop_reason == "completed"
    raw_3 = load_file(checkpoint(out, 3) / "model.safetensors")
    ema_2 = load_file(checkpoint(out, 2) / EMA_FILE)
    ema_3 = load_file(checkpoint(out, 3) / EMA_FILE)
    d = ramp(0.9, 1.0, 3)
    floats = [key for key in ema_3 if ema_3[key].is_floating_point()]
    by_hand = {key: d * ema_2[key].double() + (1 - d) * raw_3[key].double() for key in floats}
    assert largest_difference({key: ema_3[key] for key in floats}, by_hand) < 1e-6
    assert largest_difference({key: ema_3[key] for key in floats}, {key: raw_3[key] for key in floats}) > 1e-4
    final = load_file(out / "model.safetensors")
    assert largest_difference(final, ema_3) == 0  # the saved model is the average...
    assert (
        len(evaluated) == 1 and largest_difference(evaluated[0], ema_3) == 0
    )  # ...and so is the evaluated one
    assert "exponential moving average" in (out / "README.md").read_text()


def test_a_resumed_ema_run_ends_with_the_average_of_an_uninterrupted_one(tmp_path, shapes):
    common = {"epochs": 1, "ema": True, "ema_decay": 0.9, "ema_tau": 1.0}
    full = train(arguments(tmp_path / "full", shapes, **common))
    train(arguments(tmp_path / "resumed", shapes, stop_after_steps=2, **common))
    assert (checkpoint(tmp_path / "resumed", 2) / EMA_FILE).is_file()
    resumed = train(arguments(tmp_path / "resumed", shapes, resume_from_checkpoint="latest", **common))
    assert full.global_step == resumed.global_step == 4
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert largest_difference(a, b) <= 1e-6
    assert full.stats == pytest.approx(resumed.stats, abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# Early stopping and the best model
# ---------------------------------------------------------------------------------------------------
SCRIPTED_AP = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.3, 5: 0.9, 6: 0.9}  # best at 2; 3 and 4 do not improve


def scripted_evaluation(run):
    """The real evaluation replaced by an AP that depends on the step only."""
    ap = SCRIPTED_AP[run.state.global_step]
    run.log.write({"event": "eval", "step": run.state.global_step, "AP": ap})
    return {"AP": ap, "AP50": ap}


@pytest.mark.parametrize("interrupted", [False, True], ids=["uninterrupted", "resumed"])
def test_early_stopping_ends_the_run_and_the_best_checkpoint_is_the_final_model(
    tmp_path, shapes, monkeypatch, caplog, interrupted
):
    monkeypatch.setattr(trainer_module, "run_evaluation", scripted_evaluation)
    out = tmp_path / "run"
    settings = {"max_steps": 6, "eval_steps": 1, "eval_epochs": None, "early_stopping_patience": 2,
                "save_total_limit": 1}  # fmt: skip
    if interrupted:  # stopped at step 3 before its evaluation; the resumed run evaluates it first
        assert train(arguments(out, shapes, stop_after_steps=3, **settings)).stop_reason == "stop_after_steps"
        settings["resume_from_checkpoint"] = "latest"
    with caplog.at_level(logging.INFO, logger="hf_detr.training"):
        result = train(arguments(out, shapes, **settings))
    assert (result.stop_reason, result.global_step, result.best_step, result.best_metric) == (
        "early_stopping", 4, 2, 0.3,
    )  # fmt: skip
    assert "Stopped early at step 4: AP has not improved for 2 evaluations" in caplog.text
    finished = events(out, "finished")[-1]
    assert finished["reason"] == "early_stopping" and finished["model_step"] == 2
    assert finished["best"] == {"step": 2, "metric": "AP", "value": 0.3} and finished["stats"]["AP"] == 0.3
    assert [e["step"] for e in events(out, "eval")] == [1, 2, 3, 4]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004"]  # the best survives save_total_limit 1
    final = load_file(out / "model.safetensors")
    assert largest_difference(final, load_file(checkpoint(out, 2) / "model.safetensors")) == 0
    assert largest_difference(final, load_file(checkpoint(out, 4) / "model.safetensors")) > 0
    card = (out / "README.md").read_text()
    assert "stopped early at step 4" in card and "step 2's, the best AP (0.3000)" in card
    assert events(out, "best_model")[-1]["step"] == 2


def test_without_load_best_model_at_end_the_last_weights_are_saved(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(trainer_module, "run_evaluation", scripted_evaluation)
    out = tmp_path / "run"
    result = train(
        arguments(out, shapes, max_steps=3, eval_steps=1, eval_epochs=None, load_best_model_at_end=False)
    )
    assert result.best_step == 2 and result.stats["AP"] == 0.2  # the last evaluation, not the best
    assert largest_difference(
        load_file(out / "model.safetensors"), load_file(checkpoint(out, 3) / "model.safetensors")
    ) == 0  # fmt: skip
    assert checkpoint(out, 2).is_dir()  # the best checkpoint is kept all the same


def test_a_real_tiny_run_stops_after_patience_evaluations_without_improvement(tmp_path, shapes):
    out = tmp_path / "real"
    result = train(
        arguments(
            out,
            shapes,
            max_steps=12,
            eval_steps=1,
            eval_epochs=None,
            early_stopping_patience=1,
            metric_for_best_model="AR100",
        )
    )
    recalls = [record["AR100"] for record in events(out, "eval")]
    assert result.stop_reason == "early_stopping", recalls  # 12 strictly better recalls in a row: unlikely
    assert all(b > a for a, b in itertools.pairwise(recalls[:-1]))  # each evaluation but the last improved
    assert recalls[-1] <= recalls[-2] and result.global_step == len(recalls)
    assert result.best_step == len(recalls) - 1 and result.best_metric == recalls[-2]
    final = load_file(out / "model.safetensors")
    assert largest_difference(final, load_file(checkpoint(out, result.best_step) / "model.safetensors")) == 0
    assert largest_difference(final, load_file(checkpoint(out, result.global_step) / "model.safetensors")) > 0


def test_settings_of_the_kept_run_are_checked():
    from hf_detr.training import parse_args, resolve_arguments
    from hf_detr.training.arguments import best_metric

    assert best_metric(resolve_arguments({"dataset": "x"})) == "AP"
    assert best_metric(resolve_arguments({"dataset": "x", "task": "panoptic"})) == "PQ"
    args = parse_args(["--ema", "--early-stopping-patience", "3", "--metric-for-best-model", "AP50"])
    assert (args.ema, args.ema_decay, args.ema_tau, args.early_stopping_patience) == (True, 0.9999, 2000.0, 3)
    with pytest.raises(ValueError, match="metric_for_best_model must be one of AP, AP50"):
        parse_args(["--metric-for-best-model", "PQ"])
    with pytest.raises(ValueError, match="early_stopping_patience needs evaluations during training"):
        parse_args(["--dataset", "x", "--early-stopping-patience", "2", "--eval-epochs", "none"])
    with pytest.raises(ValueError, match="ema_decay must be in"):
        parse_args(["--ema-decay", "1.5"])
