"""Mini-Vision-V2 configuration: the architecture of the 0.82M-parameter MNIST CNN, and nothing else.

Training settings live in `scripts/train.py`; preprocessing settings live in the image processor.
"""

import math
import numbers

import transformers
from packaging.version import Version

# As Hub remote code, this file runs in the user's transformers, which pip never checked: the code needs 5.4's API
# (transformers.image_processing_backends, new in 5.4; transformers.initialization, 5.0), so an older install is told
# the version needed instead of failing on a missing name.
if Version(transformers.__version__).release < (5, 4):
    raise ImportError(
        f"Mini-Vision-V2 needs transformers>=5.4, found {transformers.__version__}: "
        'pip install -U "transformers>=5.4,<6"'
    )

from transformers import PretrainedConfig


class MiniVisionConfig(PretrainedConfig):
    r"""
    Configuration of a Mini-Vision-V2 model: two conv blocks and a two-layer classifier.

    Per block: Conv2d(kernel, stride, padding) -> ReLU -> MaxPool(pool) -> BatchNorm, as in the seed's table.

    Args:
        num_channels (`int`, *optional*, defaults to 1):
            Channels of the input image (MNIST is grayscale).
        image_size (`int`, *optional*, defaults to 28):
            Height and width of the (square) input image in pixels.
        conv_channels (`list[int]`, *optional*, defaults to `[32, 64]`):
            Output channels of each conv block; one block per entry.
        kernel_size (`int`, *optional*, defaults to 3):
            Conv kernel size.
        stride (`int`, *optional*, defaults to 1):
            Conv stride.
        padding (`int`, *optional*, defaults to 1):
            Conv zero padding.
        pool_size (`int`, *optional*, defaults to 2):
            Max-pooling window and stride after each conv.
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the hidden linear layer.
        dropout (`float`, *optional*, defaults to 0.3):
            Dropout probability after the hidden linear layer.
        batch_norm_eps (`float`, *optional*, defaults to 1e-5):
            BatchNorm epsilon (PyTorch's default, as in the seed).
        num_labels (`int`, *optional*, defaults to 10):
            Number of classes; labels default to the digits "0".."9".

    Example:

    ```python
    >>> from minivision_hf import MiniVisionConfig, MiniVisionForImageClassification
    >>> config = MiniVisionConfig()
    >>> model = MiniVisionForImageClassification(config)
    >>> model.num_parameters()
    824650
    ```
    """

    model_type = "minivision"

    def __init__(
        self,
        num_channels: int = 1,
        image_size: int = 28,
        conv_channels: list[int] | tuple[int, ...] = (32, 64),
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        pool_size: int = 2,
        hidden_size: int = 256,
        dropout: float = 0.3,
        batch_norm_eps: float = 1e-5,
        **kwargs,
    ):
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["id2label"] = {i: str(i) for i in range(10)}
            kwargs["label2id"] = {str(i): i for i in range(10)}
        self.num_channels = num_channels
        self.image_size = image_size
        self.conv_channels = list(conv_channels)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.pool_size = pool_size
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.batch_norm_eps = batch_norm_eps
        super().__init__(**kwargs)
        self._validate()

    @property
    def feature_map_size(self) -> int:
        """Height (= width) of the last block's feature map: 28 -> 14 -> 7 with the defaults."""
        size = self.image_size
        for _ in self.conv_channels:
            size = (size + 2 * self.padding - self.kernel_size) // self.stride + 1
            size = size // self.pool_size
        return size

    @property
    def flat_features(self) -> int:
        """Width of the flattened feature vector fed to the classifier (3136 with the defaults)."""
        return self.conv_channels[-1] * self.feature_map_size**2

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' `from_dict`, checked: it sets `from_pretrained(..., conv_channels=[-32, 64])`'s overrides as
        attributes after construction, which `__init__`'s checks never see (torch then failed on a negative size)."""
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result)._validate()
        return result

    def validate(self) -> None:
        """transformers' checks, then ours: `save_pretrained` runs this, so a value changed after construction
        (`config.dropout = 1.5`) is refused before it is written, not only when the saved folder is loaded."""
        super().validate()
        self._validate()

    def _validate(self) -> None:
        """Raise `ValueError` naming the field when a value would fail (or silently misbehave) inside torch: every
        number must be a number of the right kind, not a string or a bool that happens to convert."""
        positive = {
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "pool_size": self.pool_size,
            "hidden_size": self.hidden_size,
        }
        for name, value in positive.items():
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.padding) or self.padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {self.padding!r}")
        if not self.conv_channels or any(not _is_int(c) or c < 1 for c in self.conv_channels):
            raise ValueError(f"conv_channels must be a non-empty list of positive integers, got {self.conv_channels!r}")
        if not (_is_real(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not (_is_real(self.batch_norm_eps) and self.batch_norm_eps > 0):
            raise ValueError(f"batch_norm_eps must be a number > 0, got {self.batch_norm_eps!r}")
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be at least 2 for classification, got {self.num_labels}")
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"id2label must map every class index 0..{self.num_labels - 1}, got {self.id2label!r}")
        if self.feature_map_size < 1:
            raise ValueError(
                f"image_size={self.image_size} is too small for {len(self.conv_channels)} blocks of "
                f"kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}, pool {self.pool_size}: "
                "the feature map would vanish"
            )


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["MiniVisionConfig"]
