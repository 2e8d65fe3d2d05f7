"""Several processes (torchrun, gloo on CPU) and gradient accumulation keep the recipe's semantics: the same global
batch, the same optimizer steps per epoch, StepLR per epoch, and the same gradient scale as one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from minivision_hf.training import checkpoints, is_complete_checkpoint
from scripts import train

COMMON = ["--epochs", "4", "--batch-size", "64", "--max-eval-samples", "128", "--no-progress"]


@pytest.fixture(scope="module")
def single(tiny_dir, tmp_path_factory):
    return train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path_factory.mktemp("single")), *COMMON])


@pytest.mark.slow
def test_two_processes_match_one(tiny_dir, tmp_path, single):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "scripts.train", "--dataset", str(tiny_dir),
           "--output-dir", str(tmp_path), *COMMON]  # fmt: skip
    proc = subprocess.run(cmd, cwd=train.__file__.rsplit("/scripts/", 1)[0], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((tmp_path / "run_record.json").read_text())
    assert record["processes"] == 2 and record["per_device_batch"] == 32
    assert record["steps_per_epoch"] == single["steps_per_epoch"] == 8  # 512 images / global batch 64
    assert record["global_step"] == 32
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([0.01, 0.01, 0.01, 0.005])
    # Same gradient scale as one process (Trainer must average, not sum, over processes): epoch-1 loss agrees.
    first, reference = record["epochs"][0]["train_loss"], single["epochs"][0]["train_loss"]
    assert first == pytest.approx(reference, rel=0.05)
    # Each process saves its own augmentation state; a checkpoint is complete (resumable) only with all of them.
    last = checkpoints(tmp_path)[-1]
    assert last.name == "checkpoint-32" and is_complete_checkpoint(last, processes=2)
    assert not is_complete_checkpoint(last, processes=1)


def test_gradient_accumulation_matches_one_step(tiny_dir, tmp_path, single):
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--grad-accum", "2", *COMMON])
    assert record["steps_per_epoch"] == 8 and record["per_device_batch"] == 32
    assert record["epochs"][0]["train_loss"] == pytest.approx(single["epochs"][0]["train_loss"], rel=0.05)
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([0.01, 0.01, 0.01, 0.005])
