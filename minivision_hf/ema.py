"""Exponential moving average (EMA) of a model's weights, for training with `transformers.Trainer`.

    ema_t = d * ema_{t-1} + (1 - d) * w_t      after every optimizer step, with d = min(decay, (1 + t) / (10 + t))

The warm-up of d (as in timm's ModelEmaV2 and TensorFlow's ExponentialMovingAverage with num_updates) keeps the first
steps' random initialisation from lingering in the average. Every floating-point entry of the state dict is averaged,
BatchNorm's running statistics included, so the averaged weights and their statistics stay consistent; integer
buffers (num_batches_tracked) are copied.

`EMACallback` updates the average, saves it next to each checkpoint (`ema.safetensors`) and restores it on resume;
`EMATrainer` evaluates both the live weights (`eval_*`) and the average (`eval_ema_*`) at every evaluation.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from .training import MiniVisionTrainer

EMA_FILE = "ema.safetensors"


class WeightEMA:
    """The averaged copy of `model.state_dict()` (fp32, on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().float(), 1.0 - d)  # shadow = d * shadow + (1 - d) * value
            else:
                shadow.copy_(value)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's weights with the average (in place: the optimizer keeps its parameter objects)."""
        for key, value in model.state_dict().items():
            value.copy_(self.shadow[key].to(value.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """The average in the model inside the block, the live weights restored after it."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    value.copy_(backup[key])

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(path),
                  metadata={"decay": str(self.decay), "updates": str(self.updates)})  # fmt: skip

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        for key, value in tensors.items():
            self.shadow[key].copy_(value)
        with safe_open(str(path), "pt") as f:
            self.updates = int(f.metadata().get("updates", 0))


class EMACallback(TrainerCallback):
    """Updates a `WeightEMA` after every optimizer step; saves it into each checkpoint and reloads it on resume."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: WeightEMA | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema = WeightEMA(model, self.decay)
        if state.global_step > 0:  # resumed: Trainer has restored the state; the average lives next to it
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / EMA_FILE
            if path.exists():
                self.ema.load(path)
            else:
                print(f"EMA: no {EMA_FILE} in the resumed checkpoint; the average restarts from the current weights")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if self.ema is not None and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                self.ema.save(folder / EMA_FILE)


class EMATrainer(MiniVisionTrainer):
    """MiniVisionTrainer that also evaluates the EMA weights (metrics prefixed `eval_ema_`) at every evaluation."""

    def __init__(self, *args, ema_decay: float, **kwargs):
        self.ema_callback = EMACallback(ema_decay)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.ema_callback]
        super().__init__(*args, **kwargs)
        self.evaluate_ema = True  # set False once the average has been copied into the model for good

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        ema = self.ema_callback.ema
        if self.evaluate_ema and ema is not None and metric_key_prefix == "eval":
            with ema.swapped_in(self.model):
                metrics.update(super().evaluate(eval_dataset, ignore_keys, "eval_ema"))
        return metrics

    def keep_ema(self) -> None:
        """Make the average the model's weights (before the final evaluation and save_pretrained)."""
        if self.ema_callback.ema is not None:
            self.ema_callback.ema.copy_to(self.model)
        self.evaluate_ema = False


__all__ = ["EMA_FILE", "EMACallback", "EMATrainer", "WeightEMA"]
