"""Training pieces for `scripts/train.py`: recipes, argument checks, the data / model / Trainer builders, the Trainer
subclass (SGD + per-epoch schedules, exact resume, a stop on a non-finite loss), the per-epoch recorder, the run
record, and atomic folder replacement for the saved model. Library code only; the script reads top to bottom and
calls these."""

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import (
    SPLIT_NAMES,
    BatchCollator,
    IndexDataset,
    decode_to_uint8,
    load_mnist,
    plain_transform,
    validation_split,
)

# ---- recipes ----------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Training hyperparameters (the model config holds the architecture only)."""

    epochs: int = 40
    batch_size: int = 256  # global batch: per-device batch x processes x gradient accumulation
    lr: float = 0.01
    momentum: float = 0.8
    nesterov: bool = False
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw" (beta1 = momentum, beta2 0.999, decoupled decay)
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
    shear: float = 0.0  # random shear along x, uniform in [-shear, shear] degrees (0 = none)
    interpolation: str = "nearest"  # augmentation resampling: "nearest" (torchvision's default) or "bilinear"
    elastic_alpha: float = 0.0  # elastic distortion strength in pixels (Simard et al. 2003; 0 = none)
    elastic_sigma: float = 4.0  # its smoothing (Gaussian sigma, pixels)
    ema_decay: float = 0.0  # weight EMA per optimizer step (0 = none); the EMA weights are the ones kept
    sam_rho: float = 0.0  # sharpness-aware minimisation radius (Foret et al. 2021; 0 = none): two passes per step
    distill_weight: float = 0.0  # weight of the distillation term (Hinton et al. 2015; teachers: --distill-from)
    distill_temperature: float = 4.0  # its softmax temperature (the term is scaled by T^2)
    clean_epochs: int = 0  # the last N epochs train on the rows without augmentation (0 = augmented throughout)
    poly_epsilon: float = 0.0  # Poly-1 loss (Leng et al. 2022): cross-entropy + epsilon x (1 - p_label); 0 = plain
    val_size: int = 0  # rows held out of the training split as the evaluation (validation) set; 0 = evaluate on test
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
# `plus` + a weight EMA (decay 0.999 per step, the EMA kept), without label smoothing, with 5,000 training rows held
# out for every choice and the temperature fit. Chosen on those rows (records/recipe_search*.json: every variant tried;
# this one, `plus-ema-ls0`, tied 50 and 100 epochs at 99.58% and is the shortest); records/recipes_best.json: its
# seeds on the test split. Shipped as variants/best (Hub branch "best").
RECIPES["best"] = replace(
    RECIPES["plus"],
    ema_decay=0.999,
    val_size=5000,
    label_smoothing=0.0,
    notes="plus + weight EMA 0.999 (kept), no label smoothing, 5,000 training rows held out for validation",
)


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


class NonFiniteLossError(RuntimeError):
    """A training step's loss was NaN or infinite: the run stops there, before that step's weights are saved."""


# Per checkpoint: the augmentation generator's state and the run recorder's, in one file written after everything
# else (the EMA average included), so its presence marks a complete checkpoint. One file per process.
STATE_FILE = "minivision_state.pth"
# Key under which `TracedCollator` hands each batch's augmentation-generator state to the trainer.
AUGMENT_STATE_KEY = "augment_rng_state"


class TracedCollator:
    """Wraps a batch collator whose `generator` draws the augmentation; every batch carries that generator's state
    after it was drawn (under AUGMENT_STATE_KEY).

    Why: accelerate's DataLoaderShard fetches one batch ahead, so at a checkpoint after step k the generator has
    already drawn batch k + 1. The state after batch k (what a resume must restart from) travels with batch k and is
    recorded by `MiniVisionTrainer` when that batch is trained on."""

    def __init__(self, collator):
        self.collator = collator
        self.generator: torch.Generator | None = getattr(collator, "generator", None)

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = self.collator(indices)
        if self.generator is not None:
            batch[AUGMENT_STATE_KEY] = self.generator.get_state()
        return batch


class MiniVisionTrainer(Trainer):
    """Trainer with the recipe's optimizer (SGD, or AdamW) and an epoch-exact schedule, that also:

    - stops on a non-finite loss (`NonFiniteLossError`, naming the step) before anything is saved;
    - saves, in every checkpoint, the augmentation generator's state and the `EpochRecorder`'s (STATE_FILE), and
      restores both on resume, so a resumed run draws the same augmentations and keeps one whole run record
      (Trainer's own rng_state.pth covers python/numpy/torch CPU RNG: dropout; the shuffling is accelerate's
      seedable sampler, a function of the seed and the epoch);
    - writes that file last and only then deletes old checkpoints (it rotates them itself, renaming a checkpoint
      away before deleting it), so `last_complete_checkpoint` never resumes from a half-written or half-deleted one.
    """

    def __init__(self, *args, recipe: Recipe, recorder: "EpochRecorder | None" = None,
                 save_total_limit: int | None = None, run_identity: dict | None = None,
                 teachers: list[torch.nn.Module] = (), **kwargs):  # fmt: skip
        if kwargs.get("args") is not None and kwargs["args"].save_total_limit:
            raise ValueError("pass save_total_limit to MiniVisionTrainer, not TrainingArguments: it rotates itself")
        self.commit = _CheckpointCommit(self)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.commit]  # last: after every other on_save
        super().__init__(*args, **kwargs)
        # Trainer copies its `use_cache` argument into the model's config; ours holds the architecture only.
        if not hasattr(type(self.model.config), "use_cache"):
            self.model.config.__dict__.pop("use_cache", None)
        self.recipe = recipe
        self.recorder = recorder
        self._steps_per_epoch: int | None = None  # steps_per_epoch(), counted once
        self.teachers = list(teachers)  # frozen models in eval mode whose averaged softmax the student is fitted to
        if recipe.distill_weight and not self.teachers:
            raise ValueError("a recipe with distill_weight > 0 needs teachers (--distill-from)")
        self.run_identity = run_identity  # saved in every checkpoint: a resume must match it (resume_mismatches)
        self.save_total_limit = save_total_limit
        collator = self.data_collator
        self.augment_generator: torch.Generator | None = getattr(collator, "generator", None)
        if self.augment_generator is not None and not isinstance(collator, TracedCollator):
            raise ValueError("wrap a collator that draws augmentations in TracedCollator (exact resume needs it)")
        self.augment_state = self.augment_generator.get_state() if self.augment_generator is not None else None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            decay, no_decay = [], []
            for param in model.parameters():
                if param.requires_grad:
                    (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on biases and BatchNorm
            groups = [
                {"params": decay, "weight_decay": self.recipe.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
            # One fused kernel per step where PyTorch has it (CPU, CUDA: ~3x faster than foreach on a CPU, 0.1 ms
            # against 0.3 a step here); the same update to float rounding.
            fused = {p.device.type for p in decay + no_decay} <= {"cpu", "cuda"}
            kind = {"fused": True} if fused else {"foreach": True}
            if self.recipe.optimizer == "adamw":
                self.optimizer = torch.optim.AdamW(groups, lr=self.recipe.lr, betas=(self.recipe.momentum, 0.999),
                                                   **kind)  # fmt: skip
            elif self.recipe.optimizer == "sgd":
                self.optimizer = torch.optim.SGD(groups, lr=self.recipe.lr, momentum=self.recipe.momentum,
                                                 nesterov=self.recipe.nesterov, **kind)  # fmt: skip
            else:
                raise ValueError(f"unknown optimizer {self.recipe.optimizer!r}; use 'sgd' or 'adamw'")
        return self.optimizer

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (per process, after sharding), counted once: it builds a train dataloader."""
        if self._steps_per_epoch is None:
            batches = len(self.get_train_dataloader())
            self._steps_per_epoch = math.ceil(batches / self.args.gradient_accumulation_steps)
        return self._steps_per_epoch

    def _get_grad_norm(self, model, grad_norm=None):
        # Trainer computes the gradient norm after every optimizer step even when nothing is clipped (max_grad_norm 0,
        # the recipes' setting), through clip_grad_norm_(inf), which also multiplies every gradient by 1.0: ~0.4 ms
        # of a ~30 ms fast-path step on a CPU. Logs are written once an epoch (with the norm of the epoch's last
        # step), so it is computed only for an epoch's last step and for the run's last.
        if grad_norm is None and self.args.max_grad_norm <= 0:
            step = self.state.global_step + 1  # this optimizer step's number (global_step counts it after this)
            if step % self.steps_per_epoch() and step < self.state.max_steps:
                return None
        return super()._get_grad_norm(model, grad_norm)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            steps = self.steps_per_epoch()
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda step: lr_factor(step, steps, self.recipe)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None):
        augment_state = inputs.pop(AUGMENT_STATE_KEY, None)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.recipe.sam_rho:
            self.sharpness_aware_step(model, inputs, num_items_in_batch)
        # Trainer already syncs on the loss every step (its NaN filter), so this check costs nothing more. Its filter
        # would hide a NaN in the logged mean and train on; here the run stops, naming the optimizer step.
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss)}) at optimizer step {step} (epoch {self.state.epoch:.2f}); "
                "no model was saved from this run after its last checkpoint"
            )
        if augment_state is not None:
            self.augment_state = augment_state  # the generator state after this batch: where a resume restarts
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss (cross-entropy on the labels); while training, with recipe.poly_epsilon, + epsilon x the
        batch mean of (1 - the label's softmax probability) (Poly-1, Leng et al. 2022); with teachers, (1 - w) x that
        + w x the distillation term (Hinton et al. 2015): T^2 x KL(teachers' mean softmax at T || the student's
        softmax at T), on the same augmented batch."""
        if not (self.teachers or self.recipe.poly_epsilon) or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if self.recipe.poly_epsilon:
            p_label = torch.softmax(outputs.logits.float(), dim=-1).gather(1, labels[:, None])
            loss = loss + self.recipe.poly_epsilon * (1.0 - p_label).mean()
        if not self.teachers:
            return (loss, outputs) if return_outputs else loss
        weight, temperature = self.recipe.distill_weight, self.recipe.distill_temperature
        with torch.no_grad():
            pixels = inputs["pixel_values"]
            target = torch.stack([torch.softmax(t(pixel_values=pixels).logits.float() / temperature, dim=-1)
                                  for t in self.teachers]).mean(0)  # fmt: skip
        student = torch.log_softmax(outputs.logits.float() / temperature, dim=-1)
        distill = torch.nn.functional.kl_div(student, target, reduction="batchmean") * temperature**2
        loss = (1.0 - weight) * loss + weight * distill
        return (loss, outputs) if return_outputs else loss

    def sharpness_aware_step(self, model, inputs, num_items_in_batch=None) -> None:
        """SAM (Foret et al. 2021): replaces the gradient at w, already in .grad, by the gradient at the worst nearby
        weights w + rho * g / ||g|| on the same batch; the optimizer then steps from w. BatchNorm's running statistics
        are restored after the second pass (it sees the batch twice); dropout draws a new mask."""
        params = [p for p in model.parameters() if p.grad is not None]
        buffers = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for b in m.buffers()]  # fmt: skip
        saved = [b.clone() for b in buffers]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            steps = [p.grad * (self.recipe.sam_rho / (norm + 1e-12)) for p in params]
            torch._foreach_add_(params, steps)
        model.zero_grad(set_to_none=False)
        super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            torch._foreach_sub_(params, steps)
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)

    def _run_epoch(self, *args, **kwargs):
        # Resumed at the run's last step inside an epoch (a fractional --epochs, killed before its final save):
        # Trainer would skip the batches done and then train one step past the end.
        if 0 < self.state.max_steps <= self.state.global_step:
            return None
        return super()._run_epoch(*args, **kwargs)

    def get_eval_dataloader(self, eval_dataset=None):
        loader = super().get_eval_dataloader(eval_dataset)
        # A DataLoader draws its workers' base seed from `generator` (the global torch RNG when None) each time it is
        # iterated. Evaluations get their own generator, so they leave the global RNG (dropout's) as training left
        # it: a checkpoint taken after an evaluation inside an epoch (--max-steps) then resumes exactly.
        getattr(loader, "base_dataloader", loader).generator = torch.Generator().manual_seed(0)  # accelerate wraps it
        return loader

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(AUGMENT_STATE_KEY, None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def state_file(self, checkpoint: str | Path) -> Path:
        index = self.args.process_index if self.args.world_size > 1 else None
        return Path(checkpoint) / (STATE_FILE if index is None else f"minivision_state_{index}.pth")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = self.state_file(resume_from_checkpoint)
        if not path.exists():
            print(f"resume: {path} is missing (a checkpoint from older code): augmentations restart, not resume")
            return
        state = torch.load(path, weights_only=True)
        if self.augment_generator is not None and state.get("augment_generator") is not None:
            self.augment_state = state["augment_generator"].cpu()
            self.augment_generator.set_state(self.augment_state)
        if self.recorder is not None and state.get("recorder"):
            self.recorder.load_state_dict(state["recorder"])
            if self.recorder.target is not None and self.recorder.target["target"] != self.recorder.target_accuracy:
                self.recorder.target = None  # resumed with another --target-accuracy (or none): train on towards it
            if self.recorder.target is not None:
                # The run had reached --target-accuracy there and stopped: train no further on resume.
                self.args.max_steps = self.recorder.target["step"]

    def commit_checkpoint(self, folder: Path) -> None:
        """Write STATE_FILE (temp file + rename) into a checkpoint Trainer has finished, then rotate old ones."""
        if self.recorder is not None:
            self.recorder.close_epoch(self.state)
        state = {
            "augment_generator": self.augment_state.cpu() if self.augment_state is not None else None,
            "recorder": self.recorder.state_dict() if self.recorder is not None else None,
            "run": self.run_identity,
        }
        if self.args.should_save:
            follow_umask(folder)  # Trainer's model.safetensors: 0600 (safetensors writes through a private temp file)
        path = self.state_file(folder)
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        if self.args.should_save:
            rotate_checkpoints(folder.parent, self.save_total_limit, self.state.best_model_checkpoint,
                               self.args.world_size)  # fmt: skip


class _CheckpointCommit(TrainerCallback):
    """The trainer's last callback: on_save runs after Trainer and every other callback have written their files."""

    def __init__(self, trainer: MiniVisionTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            self.trainer.commit_checkpoint(folder)


def is_complete_checkpoint(folder: Path, processes: int = 1) -> bool:
    """Whether a checkpoint folder was finished: a readable trainer_state.json and every process's STATE_FILE
    (each written last by its process)."""
    names = [STATE_FILE] if processes == 1 else [f"minivision_state_{i}.pth" for i in range(processes)]
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return all((folder / name).is_file() for name in names)


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders of a run, oldest (smallest N) first."""
    found = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
    return sorted((p for p in found if p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]))


def discard_folder(folder: Path) -> None:
    """Delete a folder so that it is never seen half-deleted: rename it to a hidden name first (atomic), then remove."""
    aside = folder.with_name(f".deleting-{folder.name}-{os.getpid()}")
    os.rename(folder, aside)
    shutil.rmtree(aside)


def last_complete_checkpoint(output_dir: Path, processes: int = 1, remove_incomplete: bool = True) -> Path | None:
    """The newest complete checkpoint in `output_dir`. Newer incomplete ones (a run killed while writing one) are
    skipped, and with `remove_incomplete` (one process only: rank 0) removed, so that Trainer never sees them."""
    for folder in reversed(checkpoints(output_dir)):
        if is_complete_checkpoint(folder, processes):
            return folder
        if remove_incomplete:
            print(f"resume: {folder} was not finished (killed while saving?); removing it")
            discard_folder(folder)
    return None


# What a resumed run must share with the run that wrote its checkpoint, besides the recipe's values (schedule, batch,
# augmentation, held-out rows): the data, the seed and the data path. Speed settings (bf16, kernels) may change.
RESUME_FIELDS = ("dataset", "train_split", "eval_split", "max_train_samples", "max_eval_samples", "val_seed", "seed",
                 "data_path", "grad_accum", "distill_from")  # fmt: skip


def run_identity(args, recipe: Recipe, world: int = 1) -> dict:
    """The values a checkpoint records so that `--resume` continues the same run (see RESUME_FIELDS)."""
    identity = {name: getattr(args, name, None) for name in RESUME_FIELDS}
    identity["dataset"] = _dataset_identity(identity["dataset"])
    return {"recipe": getattr(args, "recipe", None), **identity, **asdict(recipe), "processes": world}


def _dataset_identity(dataset) -> str:
    """A dataset however it is spelt: a local path resolved, a Hub id as given."""
    local = Path(str(dataset)).expanduser()
    return str(local.resolve()) if local.exists() else str(dataset)


def resume_mismatches(output_dir: Path, identity: dict) -> tuple[Path | None, list[str]]:
    """(checkpoint, differences): how the run about to resume in `output_dir` differs from the one that wrote its
    newest checkpoint holding a run record, complete or not, for any number of processes (so that a mismatch is
    refused before `last_complete_checkpoint` removes anything). Checkpoints without a record (older code, or a
    state file killed while written) are passed over; (None, []) when none holds one."""
    for checkpoint in reversed(checkpoints(Path(output_dir))):
        for path in sorted(checkpoint.glob("minivision_state*.pth")):
            try:
                saved = torch.load(path, weights_only=True).get("run") or {}
            except (OSError, RuntimeError, EOFError, AttributeError):
                continue  # unreadable: a checkpoint killed while written, dealt with by last_complete_checkpoint
            if not saved:
                continue
            if "dataset" in saved:  # a record written as given (a relative path) by older code
                saved["dataset"] = _dataset_identity(saved["dataset"])
            differences = [f"{name} {saved[name]!r} there, {value!r} now" for name, value in identity.items()
                           if name != "notes" and name in saved and saved[name] != value]  # fmt: skip
            return checkpoint, differences
    return None, []


def rotate_checkpoints(output_dir: Path, limit: int | None, best: str | None = None, processes: int = 1) -> None:
    """Keep the newest `limit` complete checkpoints and the best one (Trainer's rule), deleting the others."""
    if not limit:
        return
    done = [p for p in checkpoints(output_dir) if is_complete_checkpoint(p, processes)]
    keep = set(done[-1:]) | ({Path(best)} if best else set())  # the newest (to resume) and the best, always
    for folder in reversed(done):
        if len(keep) >= limit:
            break
        keep.add(folder)
    for folder in done:
        if folder not in keep:
            discard_folder(folder)


class CleanFinish(TrainerCallback):
    """recipe.clean_epochs: the fast path's collator stops augmenting for the run's last `clean_epochs` epochs, so the
    weights end fitted to images as the test split has them (the augmentation's shifted, turned and zoomed digits
    before). Set at each epoch's start from the optimizer step reached, so a resumed run agrees."""

    def __init__(self, trainer: MiniVisionTrainer, collator: BatchCollator, recipe: Recipe):
        self.trainer, self.collator = trainer, collator
        self.first_clean_epoch = math.ceil(recipe.epochs) - recipe.clean_epochs

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = state.global_step // self.trainer.steps_per_epoch()
        self.collator.augment = epoch < self.first_clean_epoch


class EpochRecorder(TrainerCallback):
    """The run record's per-epoch rows, kept whole across kills and resumes.

    Each row holds what that epoch measured: its train loss (mean over its optimizer steps), its own evaluation
    (test loss and accuracy; `ema_*` with an EMA), the learning rate it started at and its training wall time
    (evaluation excluded). Also kept: one segment per process that trained (start step, end step, wall seconds,
    evaluations and checkpoints included), the gaps between optimizer steps after each segment's warm-up (for the
    steady-state throughput), and, with `target_accuracy`, the first epoch whose `target_metric` reached it (training
    stops there). `MiniVisionTrainer` saves `state_dict()` in every checkpoint and restores it on resume, so the rows
    of a resumed run are those of the uninterrupted one. Evaluations after training (the kept model's) are not rows.
    """

    def __init__(self, target_accuracy: float | None = None, target_metric: str = "eval_accuracy", warmup: int = 5):
        self.target_accuracy, self.target_metric, self.warmup = target_accuracy, target_metric, warmup
        self.epochs: list[dict] = []  # finished epochs
        self.open: dict | None = None  # the epoch in progress (kept in checkpoints: a resume may continue it)
        self.segments: list[dict] = []
        self.step_gaps: list[float] = []
        self.target: dict | None = None  # set when target_accuracy is reached
        self.steps_per_epoch: int | None = None
        self._training = False
        self._segment_start = self._epoch_start = self._last_step_end = 0.0
        self._segment_steps = self._last_logged_step = 0

    # -- state kept in checkpoints --
    def state_dict(self) -> dict:
        segments = [dict(s) for s in self.segments]
        if self._training and segments:  # the live segment, up to now
            segments[-1]["wall_s"] = round(time.perf_counter() - self._segment_start, 3)
        return {"epochs": self.epochs, "open": self.open, "segments": segments, "step_gaps": self.step_gaps,
                "target": self.target, "target_accuracy": self.target_accuracy}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.open = [dict(e) for e in state["epochs"]], dict(state["open"]) if state["open"] else None
        self.segments, self.step_gaps = [dict(s) for s in state["segments"]], list(state["step_gaps"])
        self.target = dict(state["target"]) if state.get("target") else None

    # -- Trainer events --
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            self.steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        self._training, self._segment_start = True, time.perf_counter()
        self._segment_steps, self._last_logged_step = 0, state.global_step
        self.segments.append({"start_step": state.global_step, "end_step": state.global_step, "wall_s": 0.0})

    def on_epoch_begin(self, args, state, control, optimizer=None, **kwargs):
        index = state.global_step // self.steps_per_epoch + 1
        if self.open is None or self.open["epoch"] != index:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            self.open = {"epoch": index, "lr": lr, "steps": 0, "train_s": 0.0, "loss_sum": 0.0, "loss_steps": 0}
        self._epoch_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._segment_steps > self.warmup:
            self.step_gaps.append(round(now - self._last_step_end, 6))
        self._last_step_end, self._segment_steps = now, self._segment_steps + 1
        self.segments[-1]["end_step"] = state.global_step
        if self.open is not None:
            self.open["steps"] += 1

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.open is not None:
            self.open["train_s"] += time.perf_counter() - self._epoch_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        steps = state.global_step - self._last_logged_step
        if self._training and self.open is not None and logs and "loss" in logs and steps > 0:
            # Trainer logs the mean loss since its last log: weigh it by its steps (a log may cover part of an epoch)
            self.open["loss_sum"] += logs["loss"] * steps
            self.open["loss_steps"] += steps
            self._last_logged_step = state.global_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training or self.open is None or not metrics:
            return
        for key, value in metrics.items():
            name = key.removeprefix("eval_")
            if name.endswith(("loss", "accuracy")):
                self.open[name if name.startswith("ema_") else f"test_{name}"] = value
        reached = self.target_accuracy is not None and metrics.get(self.target_metric, -1.0) >= self.target_accuracy
        run_ends_here = state.max_steps > 0 and state.global_step >= state.max_steps  # a fractional last epoch too
        if reached and self.target is None and (self.epoch_complete(state) or run_ends_here):
            finished = [*self.epochs, self.open]
            self.target = {
                "target": self.target_accuracy, "metric": self.target_metric, "reached": True,
                "epoch": self.open["epoch"], "step": state.global_step, "accuracy": metrics[self.target_metric],
                "train_s": round(sum(e["train_s"] for e in finished), 3),  # training only, evaluations excluded
                "wall_s": round(sum(s["wall_s"] for s in self.segments[:-1]) + time.perf_counter()
                                - self._segment_start, 3),  # since the start: evaluations and checkpoints too
            }  # fmt: skip
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._training:
            self.segments[-1]["wall_s"] = round(time.perf_counter() - self._segment_start, 3)
            self.segments[-1]["end_step"] = state.global_step
            self.close_epoch(state)
        self._training = False

    # -- rows --
    def epoch_complete(self, state) -> bool:
        # Whole epochs only: a run stopped inside one (--max-steps) leaves it open, and a resume continues it.
        return self.open is not None and state.global_step >= self.open["epoch"] * self.steps_per_epoch

    def close_epoch(self, state) -> None:
        """Move the epoch in progress to the rows once all its steps are done (at its checkpoint)."""
        if self.open is not None and self.open["steps"] and self.epoch_complete(state):
            self.epochs.append(self.open)
            self.open = None

    def rows(self) -> list[dict]:
        """The per-epoch rows, and the last one marked `partial` when the run stopped inside an epoch."""

        def row(e: dict, partial: bool = False) -> dict:
            out = {"epoch": e["epoch"], "train_loss": e["loss_sum"] / e["loss_steps"] if e["loss_steps"] else None}
            out.update({k: v for k, v in e.items() if k.startswith(("test_", "ema_"))})
            out.update(lr=e["lr"], wall_s=round(e["train_s"], 3), steps=e["steps"])
            return {**out, "partial": True} if partial else out

        done = [row(e) for e in self.epochs]
        return done + ([row(self.open, partial=True)] if self.open and self.open["steps"] else [])

    def steady_step_s(self) -> float | None:
        """Median seconds per optimizer step after each segment's warm-up steps (steps that span an evaluation or a
        checkpoint are the slowest; the median ignores them)."""
        return float(np.median(self.step_gaps)) if self.step_gaps else None


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
    if record.get("kept") in ("last", "ema"):  # the EMA is the average up to the last step
        return epochs[-1]
    return next((e for e in epochs if e["epoch"] == record["best_epoch"]), epochs[-1])


# ---- run record -------------------------------------------------------------------------------------------------


def git_commit(root: Path | None = None) -> dict:
    root = root or REPO_ROOT
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
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: into a temporary file beside it, then renamed over it, so that a run killed
    while writing leaves the old complete file (or none), never a truncated one. Creates missing parent folders."""
    write_file(path, lambda tmp: tmp.write_text(text))


def write_file(path: Path, write) -> None:
    """Make `path` the file that `write(tmp_path)` writes, atomically (temporary file beside it, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of `write_file` beside `path` whose process no longer runs (SIGKILLed while writing:
    one was left per kill); a live writer's (another process writing the same file) is kept."""
    prefix = f".{path.name}."
    for tmp in path.parent.iterdir():
        pid = tmp.name[len(prefix) : -len(".tmp")] if tmp.name.startswith(prefix) and tmp.name.endswith(".tmp") else ""
        if pid.isdigit() and not process_running(int(pid)):
            tmp.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    """Whether process `pid` runs (Linux, macOS); on Windows always True (os.kill(pid, 0) sends it CTRL_C_EVENT)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


# ---- arguments --------------------------------------------------------------------------------------------------


def positive(kind: type):
    """argparse type of the scripts: a number of `kind` > 0 (0 steps, images or seconds measure nothing), refused as
    a usage error (one line, exit 2) rather than a traceback later."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def model_source(text: str) -> str:
    """argparse type of the scripts' --model: `check_model_source`'s refusal (no such folder, a file) as a usage error
    (one line, exit 2) rather than a traceback."""
    try:
        return check_model_source(text)
    except OSError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def existing_file(text: str) -> str:
    """argparse type of the scripts' input files: one that does not exist (or is a folder) is a usage error."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def output_file(text: str) -> str:
    """argparse type of the scripts' output files: a path that is a folder, or lies under a file or in a folder that
    cannot be written, is a usage error at once, rather than a traceback when the run, maybe an hour later, writes
    its result (missing folders are made)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return output_folder(str(path.parent)) and text


def nearest_existing(path: Path) -> Path | None:
    """`path` if it exists, else the nearest of its parents that does (None: not even its first part)."""
    return next((q for q in (path, *path.parents) if q.exists()), None)


def output_folder(text: str) -> str:
    """argparse type of the scripts' output folders: refused when it, or the nearest part of it that exists, is a file
    or cannot be written (a missing folder is made)."""
    try:
        existing = nearest_existing(Path(text).absolute())
    except FileNotFoundError:  # a relative path, and the working folder was deleted under the shell
        existing = None
    if existing is None:
        raise argparse.ArgumentTypeError(f"{text}: the working folder it is relative to no longer exists")
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder")
    if not writable(existing):  # read-only, another user's: else the result was lost when the run ended
        raise argparse.ArgumentTypeError(f"{existing} is not writable")
    return text


def dataset_source(text: str) -> str:
    """argparse type of the scripts' --dataset: an empty one is a usage error (datasets would read the working folder
    as a dataset, and say it could not infer its format)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a local folder, a .parquet file or a Hub id")
    return text


REPO_ROOT = Path(__file__).resolve().parents[1]  # the repository (the release) when the package is installed editable


def replaced_folder_problem(text: str) -> str | None:
    """Why `text` cannot be an output folder that `replace_folder` swaps in whole (None if it can): empty, the working
    folder or a folder above it (the shell would be left in the deleted old folder, and '.' has no name to stage
    beside), or the repository of this code or a folder above it (a run would replace the release's files)."""
    if not text.strip():
        return "is empty: give a folder of its own, such as outputs/run"
    try:
        folder, here = Path(text).expanduser().resolve(), Path.cwd().resolve()
    except FileNotFoundError:  # a relative path, and the working folder was deleted under the shell
        return "is relative to a working folder that no longer exists"
    if folder == here or folder in here.parents:
        return "is the working folder or holds it: the output is swapped in as a whole folder; give one of its own"
    if folder == REPO_ROOT or folder in REPO_ROOT.parents:
        return f"is the repository ({REPO_ROOT}) or holds it: its release files would be replaced; give a folder of " \
               "its own, such as outputs/run"  # fmt: skip
    return None


def replaced_folder(text: str) -> str:
    """argparse type of the output folders that `replace_folder` swaps in whole: `output_folder`'s refusals and
    `replaced_folder_problem`'s."""
    problem = replaced_folder_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text} {problem}")
    return output_folder(text)


def check_arguments(args, world: int = 1) -> list[str]:
    """Every reason why resolved `scripts/train.py` arguments cannot train, one message per flag ([] if they can).

    Called after `recover_folder` has finished a folder swap that a kill interrupted, and before anything else is read
    or written, so a refused run leaves --output-dir as it was."""

    def number(name: str, low: float | None = None, high: float | None = None, low_open=False, high_open=False):
        value = getattr(args, name.replace("-", "_"), None)
        if value is None:
            return
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
                 f"{high if high is not None else 'inf'}{')' if high_open else ']'}"  # fmt: skip
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and (value >= high if high_open else value > high))
        if bad:
            problems.append(f"--{name} {value}: must be a finite number in {bounds}")

    problems: list[str] = []
    number("epochs", 0, low_open=True)
    number("lr", 0, low_open=True)
    number("batch-size", 1)
    number("grad-accum", 1)
    number("momentum", 0, 1, high_open=True)
    number("weight-decay", 0)
    number("step-epochs", 1)
    number("gamma", 0, 1, low_open=True)
    number("warmup-epochs", 0)
    number("label-smoothing", 0, 1, high_open=True)
    number("max-shift", 0)
    number("max-degrees", 0, 180)
    number("scale-min", 0, low_open=True)
    number("scale-max", 0, low_open=True)
    number("max-train-samples", 1)
    number("max-eval-samples", 1)
    number("save-total-limit", 1)
    number("target-accuracy", 0, 1, low_open=True)
    number("ema-decay", 0, 1, high_open=True)
    number("sam-rho", 0)
    number("distill-weight", 0, 1)
    number("distill-temperature", 0, low_open=True)
    number("clean-epochs", 0)
    number("poly-epsilon", 0)
    number("seed", 0, 2**32 - 1)  # numpy's seed range (transformers.set_seed seeds numpy too)
    teachers = getattr(args, "distill_from", None) or []
    if (getattr(args, "distill_weight", 0) or 0) > 0 and not teachers:
        problems.append(f"--distill-weight {args.distill_weight} needs teacher models: --distill-from FOLDER ...")
    for teacher in teachers:
        try:
            check_model_source(teacher)
        except OSError as err:
            problems.append(f"--distill-from {err}")
    number("val-size", 0)
    number("shear", 0, 90, high_open=True)
    number("elastic-alpha", 0)
    number("elastic-sigma", 0, low_open=True)
    clean, epochs = getattr(args, "clean_epochs", 0) or 0, getattr(args, "epochs", 1)
    if clean > 0 and math.isfinite(epochs) and epochs > 0 and clean > math.ceil(epochs):
        problems.append(f"--clean-epochs {clean} is more than the run's {math.ceil(epochs)} epochs (--epochs {epochs})")
    if getattr(args, "scale_min", 1.0) > getattr(args, "scale_max", 1.0):
        problems.append(f"--scale-min {args.scale_min} is above --scale-max {args.scale_max}")
    max_steps = getattr(args, "max_steps", -1)
    if max_steps != -1 and max_steps < 1:
        problems.append(f"--max-steps {max_steps}: give a positive number of optimizer steps, or -1 for --epochs")
    batch, accum = getattr(args, "batch_size", 1), getattr(args, "grad_accum", 1)
    if batch >= 1 and accum >= 1 and batch % (world * accum):
        problems.append(f"--batch-size {batch} must be divisible by processes x --grad-accum = {world * accum}")
    if (getattr(args, "sam_rho", 0) or 0) > 0 and accum > 1:
        problems.append(f"--sam-rho {args.sam_rho} needs a whole batch's gradient per step: drop --grad-accum {accum}")
    val_size, max_train = getattr(args, "val_size", 0) or 0, getattr(args, "max_train_samples", None)
    if val_size > 0 and max_train and val_size >= max_train:
        problems.append(f"--val-size {val_size} leaves no training rows of --max-train-samples {max_train}")
    if getattr(args, "data_path", "fast") == "plain":
        extra = beyond_plain_augmentation(args)
        if extra:
            problems.append(f"--data-path plain implements the seed's augmentation only (shift and rotation, "
                            f"nearest); this recipe also sets {', '.join(extra)}: use --data-path fast")  # fmt: skip
    dataset = Path(str(getattr(args, "dataset", ""))).expanduser()
    if dataset.is_file() and not val_size:
        problems.append(f"--dataset {dataset} is one file, one split: evaluating on it would test on training rows; "
                        "pass the folder holding both splits, or hold rows out with --val-size")  # fmt: skip
    train_split, eval_split = getattr(args, "train_split", "train"), getattr(args, "eval_split", "test")
    if not val_size and SPLIT_NAMES.get(train_split, train_split) == SPLIT_NAMES.get(eval_split, eval_split):
        problems.append(f"--train-split {train_split} and --eval-split {eval_split} are one split: evaluating "
                        "on it would test on training rows; use another, or hold rows out with --val-size")  # fmt: skip
    problems += unwritable_caches()
    output_dir = getattr(args, "output_dir", None)
    earlier = checkpoints(Path(output_dir)) if output_dir is not None and Path(output_dir).is_dir() else []
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        problems.append(f"--output-dir {output_dir} is a file, not a folder")
    elif output_dir is not None and not (writable(Path(output_dir)) and writable(Path(output_dir).absolute().parent)):
        problems.append(f"--output-dir {output_dir}: it or its parent folder is not writable (the kept model is "
                        "written beside it, then swapped in)")  # fmt: skip
    elif earlier and not getattr(args, "resume", False):
        found = ", ".join(c.name for c in earlier[-3:])
        problems.append(f"--output-dir {output_dir} holds an earlier run's checkpoints ({found}): pass --resume to "
                        "continue that run, or give a new or empty --output-dir (nothing was deleted)")  # fmt: skip
    elif not earlier and output_dir is not None and (Path(output_dir) / "config.json").is_file():
        problems.append(f"--output-dir {output_dir} holds a saved model (config.json; a release, a variant) and no "
                        "checkpoint to resume: this run would replace it; give a new or empty --output-dir (nothing "
                        "was deleted)")  # fmt: skip
    return problems


def writable(path: Path) -> bool:
    """Whether `path` can be written: it, or where missing, the nearest folder above it that exists (it is made)."""
    existing = nearest_existing(path.absolute())
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK)


def unwritable_caches() -> list[str]:
    """The caches a run writes into (`datasets`' Arrow files and locks, even for a local folder; `evaluate`'s copy of
    the accuracy module), where not writable: one message each ([] if all are)."""
    import datasets.config
    from evaluate import config as evaluate_config

    caches = (("HF_DATASETS_CACHE", datasets.config.HF_DATASETS_CACHE),
              ("HF_MODULES_CACHE", evaluate_config.HF_MODULES_CACHE))  # fmt: skip
    return [f"{folder} is not writable: datasets and evaluate cache there; point HF_HOME (or {name}) at a writable "
            "folder" for name, folder in caches if not writable(Path(folder))]  # fmt: skip


# The plain path's per-sample transforms: the seed's shift and rotation only; other recipe values need the fast path.
PLAIN_AUGMENTATION = {"scale_min": 1.0, "scale_max": 1.0, "shear": 0.0, "elastic_alpha": 0.0,
                      "interpolation": "nearest", "clean_epochs": 0}  # fmt: skip


def beyond_plain_augmentation(values) -> list[str]:
    """The augmentation settings of `values` (parsed arguments or a Recipe) that the plain path cannot apply, as
    flags ("--shear 10.0"); [] when it can."""
    return [f"--{name.replace('_', '-')} {getattr(values, name)}" for name, plain in PLAIN_AUGMENTATION.items()
            if hasattr(values, name) and getattr(values, name) != plain]  # fmt: skip


def recipe_from_args(args) -> Recipe:
    """The --recipe's values with every flag that names a recipe field applied."""
    base = RECIPES[args.recipe]
    recipe = replace(base, **{f.name: getattr(args, f.name) for f in fields(base) if hasattr(args, f.name)})
    return replace(recipe, nesterov=False) if recipe.optimizer == "adamw" else recipe  # Nesterov is SGD's


def process_counts() -> tuple[int, int]:
    """(processes, this process's rank) as torchrun / accelerate set them (1, 0 for a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def bf16_supported() -> bool:
    """Whether bf16 autocast runs natively: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16."""
    from .fast import detect_capabilities  # the one place that reads the machine's capabilities

    return detect_capabilities().bf16_native(training_device())


# ---- data, model, trainer ---------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """What the trainer reads: datasets, the collator (fast path) and a name for the evaluation set."""

    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    collator: object | None
    eval_name: str


def build_data(args, recipe: Recipe, rank: int = 0) -> TrainingData:
    """Load the splits and make the fast path's uint8 tensors + batched augmentation, or the plain path's per-sample
    PIL transforms. With recipe.val_size, the evaluation set is rows held out of the training split."""
    train_ds = load_mnist(args.dataset, args.train_split, args.max_train_samples)
    digits = sorted(set(np.unique(np.asarray(train_ds["label"])).tolist()))
    if len(digits) < 10 and rank == 0:  # a run can still be meant so (a handful of rows): said, not refused
        print(f"warning: the training rows of {args.dataset} hold only the digits {digits}: the model will not learn "
              "the others")  # fmt: skip
    eval_name = args.eval_split
    if recipe.val_size:
        # Model choices are made on rows held out of the training split; the test split is left for the end.
        train_rows, val_rows = validation_split(len(train_ds), recipe.val_size, args.val_seed)
        eval_ds = train_ds.select(val_rows.tolist())
        train_ds = train_ds.select(train_rows.tolist())
        eval_name = f"validation ({recipe.val_size} rows of {args.train_split}, seed {args.val_seed})"
    else:
        eval_ds = load_mnist(args.dataset, args.eval_split, args.max_eval_samples)
    if args.data_path == "plain":
        if beyond_plain_augmentation(recipe):
            raise ValueError("--data-path plain implements the seed's augmentation only (no zoom, shear, elastic, "
                             "interpolation or clean epochs)")  # fmt: skip
        train = train_ds.with_transform(plain_transform(True, recipe.max_shift, recipe.max_degrees))
        return TrainingData(train, eval_ds.with_transform(plain_transform(False)), None, eval_name)
    train_x, train_y = decode_to_uint8(train_ds)
    eval_x, eval_y = decode_to_uint8(eval_ds)
    collator = BatchCollator(
        torch.cat([train_x, eval_x]),
        torch.cat([train_y, eval_y]),
        augment_below=len(train_x),
        max_shift=recipe.max_shift,
        max_degrees=recipe.max_degrees,
        scale=(recipe.scale_min, recipe.scale_max),
        channels_last=args.channels_last,
        seed=args.seed + 1000 * rank,  # each process draws its own augmentations
        shear=recipe.shear,
        interpolation=recipe.interpolation,
        elastic=(recipe.elastic_alpha, recipe.elastic_sigma),
    )
    # TracedCollator: each batch carries the generator state a resume restarts from (MiniVisionTrainer saves it).
    return TrainingData(IndexDataset(len(train_x)), IndexDataset(len(eval_x), start=len(train_x)),
                        TracedCollator(collator), eval_name)  # fmt: skip


def build_model(args, use_bf16: bool | None = None) -> tuple[torch.nn.Module, dict | None]:
    """A freshly initialised MiniVision model, channels_last and with the fused kernels when the flags ask; the
    kernels' report (None without them)."""
    from . import MiniVisionConfig, MiniVisionForImageClassification

    model, report = prepare_model(MiniVisionForImageClassification(MiniVisionConfig()), args, use_bf16)
    if report is None:
        return model, None
    if not report["kernels_built"]:
        print(f"--fast-kernels: {report['build_error']}; the blocks use PyTorch's conv, max_pool2d and ReLU")
    elif report["build_attempts_failed"]:  # built, but not for the first target (e.g. without OpenMP: one thread)
        failed = " | ".join(report["build_attempts_failed"])
        print(f"--fast-kernels: built with {report['build_flags']!r} after these failed: {failed}")
    return model, report


def training_device() -> str:
    """The device Trainer trains on: CUDA where there is one, else the CPU (training_arguments' use_cpu)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_model(model: torch.nn.Module, args, use_bf16: bool | None = None) -> tuple[torch.nn.Module, dict | None]:
    """`model` channels_last and with the fused kernels as the flags ask; the kernels' report (None without them).

    Fused conv/max-pool/ReLU C kernels (the second conv as Winograd) and a cheaper dropout: same parameters and saved
    files; outputs equal to bf16 rounding. Each block's kernel path is chosen here, once, for the device Trainer will
    use and the run's precision."""
    from .fast import apply_fast_kernels

    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not args.fast_kernels:
        return model, None
    return model, apply_fast_kernels(model, winograd=args.winograd, device=training_device(), bf16=use_bf16)


def load_teachers(args, recipe: Recipe, use_bf16: bool | None = None) -> list[torch.nn.Module]:
    """The --distill-from models, frozen in eval mode on the training device, channels_last and with the fused
    kernels as the student has them ([] without distillation)."""
    if not recipe.distill_weight:
        return []
    from transformers import AutoModelForImageClassification

    teachers = []
    for source in args.distill_from:
        teacher = AutoModelForImageClassification.from_pretrained(source).to(training_device())
        teachers.append(prepare_model(teacher.eval().requires_grad_(False), args, use_bf16)[0].eval())
    return teachers


def training_arguments(args, recipe: Recipe, world: int, use_bf16: bool) -> TrainingArguments:
    """Trainer's settings for a run: epoch-wise evaluation, checkpoints and logs; the recipe's batch and smoothing."""
    return TrainingArguments(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size // (world * args.grad_accum),
        per_device_eval_batch_size=1024,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=recipe.lr,  # the optimizer and schedule are the recipe's (MiniVisionTrainer)
        label_smoothing_factor=recipe.label_smoothing,
        max_grad_norm=0.0,  # the seed clips no gradients (Trainer's default would clip at 1.0)
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=None,  # MiniVisionTrainer rotates checkpoints itself, after a checkpoint is complete
        load_best_model_at_end=recipe.best_model,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        torch_compile=args.compile,
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=args.data_path != "fast",  # the fast path's batches are already on the device
        remove_unused_columns=False,
        report_to="none",  # TensorBoard is attached explicitly, writing into output_dir/tensorboard
        disable_tqdm=args.no_progress,
        save_only_model=False,
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
    )


def build_trainer(args, recipe: Recipe, model, processor, data: TrainingData, world: int,
                  use_bf16: bool) -> MiniVisionTrainer:  # fmt: skip
    """The Trainer of a run: MiniVisionTrainer (EMATrainer with recipe.ema_decay), an EpochRecorder (with
    --target-accuracy) and TensorBoard events in output_dir/tensorboard."""
    from .metrics import load_accuracy

    accuracy = load_accuracy()

    def compute_metrics(eval_pred):
        return accuracy.compute(predictions=eval_pred.predictions.argmax(-1), references=eval_pred.label_ids)

    target_metric = "eval_ema_accuracy" if recipe.ema_decay else "eval_accuracy"  # the weights the run keeps
    recorder = EpochRecorder(target_accuracy=getattr(args, "target_accuracy", None), target_metric=target_metric)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(args.output_dir) / "tensorboard")
    kwargs = dict(
        model=model,
        args=training_arguments(args, recipe, world, use_bf16),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=processor,  # saved into every checkpoint, so each one loads on its own
        compute_metrics=compute_metrics,
        callbacks=[recorder, resumable_tensorboard_callback()],
        recipe=recipe,
        recorder=recorder,
        save_total_limit=args.save_total_limit,
        run_identity=run_identity(args, recipe, world),
        teachers=load_teachers(args, recipe, use_bf16),
    )
    if recipe.ema_decay:
        # EMATrainer evaluates the live and the averaged weights every epoch and keeps the average.
        from .ema import EMATrainer

        trainer = EMATrainer(ema_decay=recipe.ema_decay, **kwargs)
    else:
        trainer = MiniVisionTrainer(**kwargs)
    # The fast path's uint8 dataset goes where Trainer put the model (a GPU: images gathered and augmented there).
    batches = getattr(data.collator, "collator", None)
    if isinstance(batches, BatchCollator):
        batches.to(trainer.args.device)
        if recipe.clean_epochs:
            trainer.add_callback(CleanFinish(trainer, batches, recipe))
    return trainer


def resumable_tensorboard_callback():
    """Trainer's TensorBoardCallback whose writer, in a resumed run, starts with `purge_step` = the step after the
    checkpoint it resumed from: TensorBoard then hides what a killed segment logged past that checkpoint (its event
    file stays beside the resumed run's), so the curves show one run, not the killed segment's points beside the
    resumed ones. (What was logged at the checkpoint's own step came before it was saved, and stays.)"""
    from transformers.integrations import TensorBoardCallback

    class ResumableTensorBoardCallback(TensorBoardCallback):
        purge_step = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.purge_step = state.global_step + 1 if state.global_step else None  # the checkpoint's state
            if self.purge_step and self.logging_dir:
                wait_for_a_later_event_file_name(Path(self.logging_dir))
            super().on_train_begin(args, state, control, **kwargs)

        def _init_summary_writer(self, args):
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)

    return ResumableTensorBoardCallback()


def wait_for_a_later_event_file_name(folder: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a purge only hides what files read before it hold.
    Event files are named events.out.tfevents.<unix second>.<host>.<pid>...: a resume within the same second as the
    killed segment's file (a fast test) could sort before it. Wait (at most ~1 s) until this second is past theirs."""
    seconds = [int(second) for p in folder.glob("events.out.tfevents.*") if (second := p.name.split(".")[3]).isdigit()]
    wait = max(seconds, default=0) + 1 - time.time()
    if 0 < wait <= 2:
        time.sleep(wait)


def evaluate_kept_model(trainer: MiniVisionTrainer) -> dict:
    """The evaluation of the model the run keeps (best, last or EMA), recorded on its own: not an epoch row, and not
    in TensorBoard (where it would sit at the last epoch's step)."""
    from transformers.integrations import TensorBoardCallback

    if hasattr(trainer, "keep_ema"):
        trainer.keep_ema()
    trainer.remove_callback(TensorBoardCallback)
    metrics = trainer.evaluate()
    return {"accuracy": metrics.get("eval_accuracy"), "loss": metrics.get("eval_loss")}


# ---- run record -------------------------------------------------------------------------------------------------


def run_record(args, recipe: Recipe, trainer: MiniVisionTrainer, data: TrainingData, final_eval: dict, *,
               world: int, use_bf16: bool, memory_kept: bool, fast_kernels: dict | None) -> dict:  # fmt: skip
    """The run's record: resolved arguments, seed, versions, git commit, hardware, per-epoch rows, the kept model's
    own evaluation, and time: one segment per process that trained (a resumed run has several), the wall time summed
    over them, and images/s over the epochs' training time."""
    recorder = trainer.recorder
    epochs = recorder.rows()
    # Trainer keeps the best of every evaluation, a partial last epoch's included (fractional --epochs, --max-steps)
    evaluated = [e for e in epochs if "test_accuracy" in e]
    best = max(evaluated, key=lambda r: r["test_accuracy"]) if evaluated else {}
    train_s = sum(e["wall_s"] for e in epochs)
    n_train = len(data.train)
    images = sum(n_train if not e.get("partial") else min(e["steps"] * args.batch_size, n_train) for e in epochs)
    steady = recorder.steady_step_s()
    segments = recorder.segments
    wanted = getattr(args, "target_accuracy", None)
    target = recorder.target or ({"target": wanted, "reached": False} if wanted else None)
    return {
        "recipe": args.recipe,
        "recipe_values": asdict(recipe),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed": args.seed,
        "processes": world,
        "per_device_batch": args.batch_size // (world * args.grad_accum),
        "steps_per_epoch": recorder.steps_per_epoch,
        "bf16": use_bf16,
        "malloc_keeps_freed_memory": memory_kept,
        "fast_kernels": fast_kernels,
        "dataset": {
            "source": str(args.dataset),
            "train": n_train,
            "eval": len(data.eval),
            "eval_split": data.eval_name,
        },
        "epochs": epochs,
        "best_epoch": best.get("epoch"),
        "kept": "ema" if recipe.ema_decay else "best" if recipe.best_model else "last",
        "final_eval": final_eval,  # the kept model, evaluated after training (its epoch row keeps its own figures)
        "target_accuracy": target,
        "global_step": trainer.state.global_step,
        "resumed": len(segments) > 1,
        "segments": segments,
        "train_wall_s": round(sum(s["wall_s"] for s in segments), 2),
        "train_epochs_s": round(train_s, 2),
        "steady_images_per_s": round(args.batch_size / steady, 1) if steady else None,
        "train_images_per_s": round(images / train_s, 1) if train_s > 0 else None,
        "versions": versions(),
        "git": git_commit(),
        "hardware": hardware(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- model folders ------------------------------------------------------------------------------------------------


def check_model_source(source: str | Path) -> str:
    """`source` for `from_pretrained`, checked: a local folder that holds config.json, or something that can only be a
    Hub id ("name" or "namespace/name"). A path that does not exist raises FileNotFoundError("no such folder: ...")
    instead of huggingface_hub's "Repo id must be in the form ..."; a folder without config.json (the scripts' default
    "." run from outside the repo) FileNotFoundError instead of transformers' traceback; a file NotADirectoryError."""
    text = str(source)
    if not text.strip():  # Path("") is the working folder
        raise FileNotFoundError("empty: give the folder that save_pretrained wrote, or a Hub id")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {text} ({path.resolve()}): give the folder that "
                                    "save_pretrained wrote (the repo root is the release), or a Hub id")  # fmt: skip
        return text
    if path.exists():
        raise NotADirectoryError(f"not a folder: {text} (give the folder that holds config.json, or a Hub id)")
    is_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None and not text.startswith(".")
    if not is_hub_id or ("/" in text and Path(text.split("/")[0]).is_dir()):  # "outputs/seed" with outputs/ here
        raise FileNotFoundError(f"no such folder: {text}")
    return text


def revision_problem(model: str, revision: str | None) -> str | None:
    """Why `--revision` cannot apply to `--model`: from_pretrained ignores it for a local folder, so a run would record
    a provenance (folder@revision) that is not true. None when it applies (a Hub id) or is not given."""
    if revision and Path(str(model)).expanduser().is_dir():
        return f"--revision {revision}: {model} is a local folder (a revision applies to a Hub id)"
    return None


# ---- atomic folders ---------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    import ctypes

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd = -100
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
    except (OSError, AttributeError):
        return False


def staging_names(target: Path) -> tuple[Path, Path]:
    """The hidden folders beside `target` that `replace_folder` stages in and moves the old folder aside to."""
    return target.with_name(f".{target.name}.staging"), target.with_name(f".{target.name}.previous")


def recover_folder(target: Path) -> None:
    """Finish or undo a `replace_folder` that a kill interrupted (call before using `target`):

    - `target` missing, `.previous` present: killed between the two renames of the fallback swap; the staged folder
      was complete by then, so it is moved into place;
    - `target` present: leftovers (an unfinished `.staging`, an old `.previous`) are deleted."""
    staging, previous = staging_names(Path(target))
    if not Path(target).exists() and previous.exists() and staging.exists():
        os.rename(staging, target)
    for leftover in (staging, previous):
        if leftover.exists() and Path(target).exists():
            shutil.rmtree(leftover)


def replace_folder(target: Path, write, keep: tuple[str, ...] = ()) -> None:
    """Make `target` the folder that `write(folder)` fills, atomically: a kill at any moment leaves either the old
    complete folder or the new complete one, never a mix or a half-written file.

    `write` fills a staging folder beside `target` (same file system); entries of the old folder named in `keep`
    ("*" for all that `write` did not produce) are hard-linked into it (copied where links fail); then
    `move_folder_into_place` swaps the two. When `write` raises, the staging folder is removed and `target` is left
    as it was."""
    target = Path(target)
    recover_folder(target)
    staging, _ = staging_names(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        follow_umask(staging)
    except BaseException:  # failed or interrupted (Ctrl-C, SIGTERM in the scripts): no staging folder is left
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        produced = {p.name for p in staging.iterdir()}
        for entry in target.iterdir():
            if entry.name in produced or not ("*" in keep or entry.name in keep):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, staging / entry.name)
    move_folder_into_place(staging, target)


def follow_umask(folder: Path) -> None:
    """Give the files in `folder` the modes that the umask asks for (0644 under 022, 0664 under 002): safetensors
    writes through a private temporary file, so model.safetensors came out 0600 under any umask, unreadable to the
    group or to another user serving the folder (the app from a shared checkout), beside 0644 files."""
    umask = current_umask()
    for file in folder.rglob("*"):
        if file.is_file() and not file.is_symlink():
            file.chmod((0o777 if file.stat().st_mode & 0o100 else 0o666) & ~umask)


def current_umask() -> int:
    """The process's umask: read from /proc/self/status where Linux gives it, else by setting it and back (which for an
    instant gives files other threads create the modes of umask 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def move_folder_into_place(staged: Path, target: Path) -> None:
    """Replace `target` (a folder, or nothing) by the complete folder `staged`, atomically where the system allows.

    The two are exchanged in one renameat2(RENAME_EXCHANGE) and the old one deleted. Where that call is missing, the
    old folder is renamed to `.<name>.previous` and the staged one into place: between those two renames `target`
    does not exist, and `recover_folder` (which the scripts run before they use a folder) completes the swap."""
    staged, target = Path(staged), Path(target)
    _, previous = staging_names(target)
    _fsync_tree(staged)
    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)  # now the old folder
    else:
        os.rename(target, previous)
        os.rename(staged, target)
    shutil.rmtree(previous, ignore_errors=True)


def _link_or_copy(src, dst) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files to disk before the rename publishes them (a crash of the machine, not only of the
    process, must not leave renamed but empty files)."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_final_model(model: torch.nn.Module, processor, record: dict, output_dir: Path) -> None:
    """Write the kept model (save_pretrained: weights, config.json with auto_map, code files), the image processor and
    run_record.json into `output_dir` atomically (`replace_folder`); checkpoints, TensorBoard events and anything
    else already there are kept."""
    model = model.to(memory_format=torch.contiguous_format)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        write_json(folder / "run_record.json", record)

    replace_folder(Path(output_dir), write, keep=("*",))


__all__ = [
    "AUGMENT_STATE_KEY",
    "RECIPES",
    "STATE_FILE",
    "EpochRecorder",
    "MiniVisionTrainer",
    "NonFiniteLossError",
    "Recipe",
    "TracedCollator",
    "TrainingData",
    "asdict",
    "bf16_supported",
    "build_data",
    "build_model",
    "build_trainer",
    "check_arguments",
    "check_model_source",
    "checkpoints",
    "dataset_source",
    "discard_folder",
    "evaluate_kept_model",
    "existing_file",
    "git_commit",
    "hardware",
    "is_complete_checkpoint",
    "keep_freed_memory",
    "kept_epoch",
    "last_complete_checkpoint",
    "move_folder_into_place",
    "lr_factor",
    "model_source",
    "nearest_existing",
    "output_file",
    "output_folder",
    "process_counts",
    "recipe_from_args",
    "recover_folder",
    "replace_folder",
    "replaced_folder",
    "replaced_folder_problem",
    "rotate_checkpoints",
    "run_record",
    "save_final_model",
    "training_arguments",
    "versions",
    "write_file",
    "write_json",
    "write_text",
]
