"""Two CPU processes (DDP through `accelerate launch`) train, evaluate and save; a dead worker ends the
other soon after (no hang in a collective) and the run resumes. One launch covers both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_training import TINY, arguments, events

from hf_detr import HfDetrForObjectDetection
from hf_detr.training import train
from hf_detr.training.checkpoints import latest_checkpoint

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def worker_pids(launcher: int) -> dict[int, int]:
    """{local rank: pid} of the launcher's training workers (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        rank = next((v.split(b"=", 1)[1] for v in environ if v.startswith(b"LOCAL_RANK=")), None)
        if rank is not None and parent != 0 and _descends_from(parent, launcher):
            found[int(rank)] = int(entry.name)
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


@pytest.mark.multiprocess
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc (Linux)")
def test_two_cpu_processes_train_evaluate_and_save_and_a_killed_worker_ends_the_run_which_resumes(
    tmp_path, shapes
):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "scripts" / "train.py"), *flags, "--dataset", str(shapes),
               "--output-dir", str(out), "--epochs", "1000", "--save-steps", "2", "--eval-steps", "2"]  # fmt: skip
    launcher = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and latest_checkpoint(out / "checkpoints") is None:
        time.sleep(0.5)
    workers = worker_pids(launcher.pid)
    assert launcher.poll() is None and sorted(workers) == [0, 1], launcher.communicate()[1][-3000:]
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    seconds = time.monotonic() - killed
    print(f"launcher exited {seconds:.1f} s after the worker's SIGKILL (code {launcher.returncode})")
    assert launcher.returncode != 0 and seconds < 30
    # before the kill, both processes trained, evaluated at step 2 and saved their part of the checkpoint
    assert "Saving current state to" in stderr  # one line per checkpoint...
    assert "accelerate.checkpointing" not in stderr  # ...not one per file written
    first = out / "checkpoints" / "step-00000002"
    assert (first / "random_states_0.pkl").is_file() and (first / "random_states_1.pkl").is_file()
    assert [record["step"] for record in events(out, "eval")][:1] == [2]
    assert events(out, "train")[0]["images_per_second"] > 0
    step = int(latest_checkpoint(out / "checkpoints").name[5:])
    resumed = train(arguments(out, shapes, epochs=1000, max_steps=step + 2, resume_from_checkpoint="latest"))
    assert resumed.global_step == step + 2 and events(out, "finished")
    HfDetrForObjectDetection.from_pretrained(out)  # the final model is pipeline-ready
