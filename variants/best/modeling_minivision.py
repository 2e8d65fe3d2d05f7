"""Mini-Vision-V2: the seed's 0.82M-parameter MNIST CNN as a transformers model.

    per block:  Conv2d(3x3, s1, p1) -> ReLU -> MaxPool(2) -> BatchNorm      (1->32, 32->64 channels)
    head:       Flatten (3136) -> Linear(3136, 256) -> ReLU -> Dropout(0.3) -> Linear(256, 10)

The forward pass applies MaxPool before ReLU: the two commute exactly (max is monotone, ReLU is a monotone
max(x, 0)), so outputs are identical, and ReLU then touches 4x fewer elements (this memory-bound network spends
more time in pooling/ReLU than in its convolutions on a CPU).
"""

import re
import shutil
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from torch import nn

# As Hub remote code, this file runs in the user's transformers, which pip never checked: the code needs 5.4's API
# (transformers.image_processing_backends, new in 5.4; transformers.initialization, 5.0), so an older install is told
# the version needed instead of failing on a missing name.
if Version(transformers.__version__).release < (5, 4):
    raise ImportError(
        f"Mini-Vision-V2 needs transformers>=5.4, found {transformers.__version__}: "
        'pip install -U "transformers>=5.4,<6"'
    )

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_minivision import MiniVisionConfig


class MiniVisionConvBlock(nn.Module):
    """Conv -> ReLU -> MaxPool -> BatchNorm (computed as Conv -> MaxPool -> ReLU -> BatchNorm, same outputs)."""

    def __init__(self, in_channels: int, out_channels: int, config: MiniVisionConfig):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, config.kernel_size, config.stride, config.padding)
        self.pool = nn.MaxPool2d(config.pool_size)
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.pool(self.conv(hidden_states))))


def _channels_last_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


class MiniVisionPreTrainedModel(PreTrainedModel):
    config_class = MiniVisionConfig
    base_model_prefix = "minivision"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a per-batch mean, not a sum over `num_items_in_batch`: Trainer must average over gradient
    # accumulation and processes itself (else it scales the loss by the world size and skips the accumulation mean).
    accepts_loss_kwargs = False

    # save_pretrained only records the class being saved; the Hub repo should answer all four Auto classes.
    _auto_map = {
        "AutoConfig": "configuration_minivision.MiniVisionConfig",
        "AutoModel": "modeling_minivision.MiniVisionModel",
        "AutoModelForImageClassification": "modeling_minivision.MiniVisionForImageClassification",
        "AutoImageProcessor": "image_processing_minivision.MiniVisionImageProcessor",
    }

    # The image-classification pipeline that reads drawings with their transparency (pipeline_minivision.py), declared
    # the way transformers' `pipeline(..., trust_remote_code=True)` looks it up.
    _custom_pipelines = {
        "image-classification": {
            "impl": "pipeline_minivision.MiniVisionImageClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }
    # Code files the model's own module does not import, copied beside it so the folder is complete remote code.
    _extra_code_files = ("image_processing_minivision.py", "pipeline_minivision.py")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus a complete `auto_map`, the `custom_pipelines` entry and the image
        processor's and pipeline's code files. Loaded as remote code, this module's folder holds only what transformers
        copied (the modeling and configuration files): the other two come from the folder the model was loaded from
        when it is at hand, and an entry whose file cannot be shipped is left out, so the saved folder never names a
        file it lacks."""
        code_files = {name: self._code_file(name) for name in self._extra_code_files}
        auto_map = {**self._auto_map, **(getattr(self.config, "auto_map", None) or {})}
        if code_files["image_processing_minivision.py"] is None:
            auto_map.pop("AutoImageProcessor", None)
        self.config.auto_map = auto_map
        custom = {task: entry for task, entry in (getattr(self.config, "custom_pipelines", None) or {}).items()
                  if not str(entry.get("impl", "")).startswith("pipeline_minivision.")}  # fmt: skip
        if code_files["pipeline_minivision.py"] is not None:
            custom.update(self._custom_pipelines)
        if custom:
            self.config.custom_pipelines = custom
        elif hasattr(self.config, "custom_pipelines"):
            del self.config.custom_pipelines
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for name, source in code_files.items():
                target = Path(save_directory) / name
                if source is not None and not (target.exists() and target.samefile(source)):
                    shutil.copyfile(source, target)

    def _code_file(self, name: str) -> Path | None:
        """Where to copy code file `name` from: beside this module, else in the local folder the model was loaded
        from, else in the Hub repo it was loaded from, at the commit loaded (transformers' cache, fetched if missing);
        None when none has it."""
        here = Path(__file__).with_name(name)
        if here.is_file():
            return here
        loaded_from = str(getattr(self.config, "_name_or_path", "") or "")
        if loaded_from and Path(loaded_from, name).is_file():
            return Path(loaded_from, name)
        # Remote code from a Hub repo runs from transformers_modules/<repo>/<commit>/: only then is `loaded_from` a
        # repo id (not a relative folder deleted since, or one of another working folder) and the commit known.
        commit = Path(__file__).parent.name
        if not loaded_from or not re.fullmatch(r"[0-9a-f]{40}", commit) or Path(loaded_from).expanduser().exists():
            return None
        from transformers.utils import cached_file

        try:  # a Hub id: remote code's module folder holds only the modeling and configuration files
            found = cached_file(loaded_from, name, revision=commit,
                                _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)  # fmt: skip
        except (OSError, ValueError):  # not a repo id, no such repo or revision
            return None
        return Path(found) if found else None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own defaults, as the seed used (kaiming-uniform convs/linears, BatchNorm at identity). Only through
        # init functions, which transformers guards so that a tensor loaded from the checkpoint is never re-initialised:
        # BatchNorm's reset_parameters() zeroes its running statistics with plain tensor ops, which would wipe loaded
        # ones whenever one buffer of the module is missing (a checkpoint without num_batches_tracked) or offloaded.
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()  # torch.nn.init calls only: guarded
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class MiniVisionModel(MiniVisionPreTrainedModel):
    """The conv feature extractor: returns the last feature map and its flattened form as `pooler_output`."""

    def __init__(self, config: MiniVisionConfig):
        super().__init__(config)
        channels = [config.num_channels, *config.conv_channels]
        self.blocks = nn.ModuleList(
            MiniVisionConvBlock(c_in, c_out, config) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__} - run images through "
                "MiniVisionImageProcessor first (return_tensors='pt')"
            )
        if not pixel_values.is_floating_point():
            # uint8 pixels (0..255) or a bool mask are not normalised inputs: casting them would answer silently wrong
            raise ValueError(
                f"pixel_values must be floating point (normalised images), got dtype {pixel_values.dtype} - run images "
                "through MiniVisionImageProcessor first"
            )
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(pixel_values.shape)}"
                " - run images through MiniVisionImageProcessor first"
            )

        weight = self.blocks[0].conv.weight
        if pixel_values.dtype != weight.dtype and not torch.is_autocast_enabled(pixel_values.device.type):
            pixel_values = pixel_values.to(weight.dtype)  # float64 inputs to a float32 model, float32 to a bf16 one
        hidden_states = pixel_values
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for block in self.blocks:
            hidden_states = block(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        if hidden_states.requires_grad and not hidden_states.is_contiguous():
            # A channels_last map flattens in (C, H, W) order through a copy, whose gradient comes back in NCHW
            # order: BatchNorm's backward then takes a slow mixed-layout path (~8x slower here).
            hidden_states.register_hook(_channels_last_grad)
        pooled = hidden_states.flatten(1)

        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, pooler_output=pooled, hidden_states=all_hidden_states
        )


class MiniVisionForImageClassification(MiniVisionPreTrainedModel):
    """Feature extractor + classifier head; cross-entropy loss when `labels` are given."""

    def __init__(self, config: MiniVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.minivision = MiniVisionModel(config)
        self.classifier = nn.Sequential(
            nn.Linear(config.flat_features, config.hidden_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.num_labels),
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.minivision(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)

        loss = None
        if labels is not None:
            loss = _loss(labels, logits, self.config.problem_type)

        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def _loss(labels: torch.Tensor, logits: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """Cross-entropy over class indices, unless `config.problem_type` asks, as for transformers' image classifiers,
    for "multi_label_classification" (binary cross-entropy with logits over multi-hot labels) or "regression" (mean
    squared error): labels of the logits' shape, (batch, num_labels). Float labels are never guessed to be multi-hot
    (the stock classifiers do so when problem_type is unset): they are refused, as a likely mistake."""
    if problem_type in ("multi_label_classification", "regression"):
        targets = torch.as_tensor(labels)
        if targets.is_complex() or targets.shape != logits.shape:
            raise ValueError(
                f"with problem_type={problem_type!r}, labels must be real numbers of shape {tuple(logits.shape)} "
                f"(batch, num_labels), got dtype {targets.dtype}, shape {tuple(targets.shape)}"
            )
        targets = targets.to(logits.device, torch.float32)
        if problem_type == "regression":
            return nn.functional.mse_loss(logits.float(), targets)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
    return nn.functional.cross_entropy(logits.float(), _class_indices(labels, logits).to(logits.device))


def _class_indices(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Labels as int64 class indices, refused with a clear error when they are not integers: a float label (0.7)
    would otherwise be truncated to a class silently, and an index outside 0..num_labels-1 (other than -100, "ignore")
    would fail deep in cross_entropy (a device-side assert on CUDA)."""
    labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be integer class indices (0..{logits.shape[-1] - 1}), got dtype {labels.dtype}: "
            "pass a torch.long tensor (for multi-hot or real-valued labels, set config.problem_type to "
            "'multi_label_classification' or 'regression')"
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (one per image), got {tuple(labels.shape)}"
        )
    labels = labels.long()
    num_labels = logits.shape[-1]
    outside = (labels != -100) & ((labels < 0) | (labels >= num_labels))
    if bool(outside.any()):
        raise ValueError(
            f"labels must be class indices 0..{num_labels - 1} (or -100 to ignore a row), got "
            f"{labels[outside].unique()[:5].tolist()}"
        )
    return labels


__all__ = ["MiniVisionPreTrainedModel", "MiniVisionModel", "MiniVisionForImageClassification"]
