"""Training pieces for `scripts/train.py`: recipes, the Trainer subclass (SGD + per-epoch schedules), the per-epoch
recorder, and the run record. Library code only; the script reads top to bottom and calls these."""

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

# ---- recipes ----------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Training hyperparameters (the model config holds the architecture only)."""

    epochs: int = 40
    batch_size: int = 256  # global batch: per-device batch x processes x gradient accumulation
    lr: float = 0.01
    momentum: float = 0.8
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "step"  # "step": StepLR per epoch; "onecycle": linear warm-up then cosine to 0, per step
    step_epochs: int = 3  # StepLR step size, in epochs
    gamma: float = 0.5  # StepLR decay factor
    warmup_epochs: float = 0.0  # onecycle only
    label_smoothing: float = 0.0
    max_shift: int = 2  # RandomCrop(28, padding=max_shift)
    max_degrees: float = 10.0  # RandomRotation(max_degrees)
    scale_min: float = 1.0  # random zoom range (1.0, 1.0 = none, as in the seed)
    scale_max: float = 1.0
    best_model: bool = True  # keep the epoch with the best test accuracy ("Epochs: 40 (Best model)")
    notes: str = field(default="", compare=False)


RECIPES = {
    # The seed card's recipe, value for value.
    "seed": Recipe(notes="Mini-Vision-V2 seed card: SGD m0.8 lr0.01, StepLR(3 epochs, 0.5), batch 256, 40 epochs"),
    # Same architecture, a stronger recipe: Nesterov SGD with a one-cycle schedule (the seed's StepLR has decayed the
    # rate to 0.01 * 0.5**13 ~ 1e-6 by epoch 40, so its last ~15 epochs barely move), weight decay, label smoothing
    # and slightly stronger augmentation (random zoom 0.9-1.1, rotation 12 deg). Final epoch reported, not best.
    "plus": Recipe(
        epochs=30,
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        scheduler="onecycle",
        warmup_epochs=2.0,
        label_smoothing=0.1,
        max_degrees=12.0,
        scale_min=0.9,
        scale_max=1.1,
        best_model=False,
        notes="one-cycle Nesterov SGD, wd 5e-4, label smoothing 0.1, zoom 0.9-1.1, rotation 12",
    ),
}


def lr_factor(step: int, steps_per_epoch: int, recipe: Recipe) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based).

    "step": 0.5 ** (epoch // 3) with epoch = step // steps_per_epoch, i.e. StepLR stepped once per epoch, whatever
    the batch size, gradient accumulation or number of processes (Trainer steps schedulers once per optimizer step).
    """
    if recipe.scheduler == "step":
        return recipe.gamma ** (step // (recipe.step_epochs * steps_per_epoch))
    if recipe.scheduler == "onecycle":
        total = recipe.epochs * steps_per_epoch
        warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {recipe.scheduler!r}; use 'step' or 'onecycle'")


class MiniVisionTrainer(Trainer):
    """Trainer with the recipe's SGD and an epoch-exact schedule."""

    def __init__(self, *args, recipe: Recipe, **kwargs):
        super().__init__(*args, **kwargs)
        self.recipe = recipe

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            decay, no_decay = [], []
            for param in model.parameters():
                if param.requires_grad:
                    (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on biases and BatchNorm
            self.optimizer = torch.optim.SGD(
                [
                    {"params": decay, "weight_decay": self.recipe.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=self.recipe.lr,
                momentum=self.recipe.momentum,
                nesterov=self.recipe.nesterov,
                foreach=True,
            )
        return self.optimizer

    def steps_per_epoch(self) -> int:
        batches = len(self.get_train_dataloader())  # per process, after sharding
        return math.ceil(batches / self.args.gradient_accumulation_steps)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            steps = self.steps_per_epoch()
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda step: lr_factor(step, steps, self.recipe)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler


class EpochRecorder(TrainerCallback):
    """Records, per epoch, the learning rate it trained at and its wall time; and every optimizer step's end time,
    for steady-state throughput (`steady_step_s`)."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.step_ends: list[float] = []
        self._start = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def steady_step_s(self, warmup: int = 5) -> float | None:
        """Median seconds per optimizer step after `warmup` steps, skipping steps that span an evaluation or a
        checkpoint (they are the slowest ones; the median ignores them anyway)."""
        gaps = np.diff(self.step_ends[warmup:])
        return float(np.median(gaps)) if len(gaps) else None

    def on_epoch_begin(self, args, state, control, optimizer=None, **kwargs):
        self._start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.epochs.append({"epoch": len(self.epochs) + 1, "lr": lr})

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.epochs:
            self.epochs[-1]["wall_s"] = round(time.perf_counter() - self._start, 3)


def epoch_table(log_history: list[dict], recorder: EpochRecorder | None = None) -> list[dict]:
    """Per-epoch train loss, test loss and accuracy, lr and wall time from Trainer's log history."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = round(entry["epoch"])
        row = rows.setdefault(epoch, {"epoch": epoch})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        if "eval_loss" in entry:
            row["test_loss"] = entry["eval_loss"]
        if "eval_accuracy" in entry:
            row["test_accuracy"] = entry["eval_accuracy"]
    for extra in recorder.epochs if recorder else []:
        rows.setdefault(extra["epoch"], {"epoch": extra["epoch"]}).update(
            {k: v for k, v in extra.items() if k != "epoch"}
        )
    return [rows[k] for k in sorted(rows) if k > 0]


# ---- speed ------------------------------------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap (no trimming, no mmap for large blocks).

    By default glibc serves blocks over 128 KiB with mmap and returns them on free, so every training step re-faults
    its activation and gradient buffers (pages the kernel must zero again): measured here, ~25% of a fast-path step.
    Returns False where there is no glibc (then nothing changes)."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or not ctypes.util.find_library("c"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter ids from <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def kept_epoch(record: dict) -> dict:
    """The per-epoch row of the model a run kept: its best epoch, or its last one."""
    epochs = record["epochs"]
    if record.get("kept") == "last":
        return epochs[-1]
    return next((e for e in epochs if e["epoch"] == record["best_epoch"]), epochs[-1])


# ---- run record -------------------------------------------------------------------------------------------------


def git_commit(root: Path | None = None) -> dict:
    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True)  # fmt: skip
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    import accelerate
    import datasets
    import evaluate
    import safetensors
    import torchvision
    import transformers

    mods = (torch, torchvision, transformers, datasets, accelerate, evaluate, safetensors, np)
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in mods}}


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


__all__ = [
    "RECIPES",
    "EpochRecorder",
    "MiniVisionTrainer",
    "Recipe",
    "asdict",
    "epoch_table",
    "git_commit",
    "hardware",
    "keep_freed_memory",
    "kept_epoch",
    "lr_factor",
    "versions",
    "write_json",
]
