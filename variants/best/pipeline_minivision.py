"""Mini-Vision-V2's `image-classification` pipeline: transformers' own, with every image reaching the image processor
as it is.

It ships as remote code next to the model (config.json declares it in `custom_pipelines["image-classification"]`,
written by the model's `save_pretrained`), so a Hub user's one line builds it:

    pipeline("image-classification", model="minivision/mini-vision-v2", revision=sha, trust_remote_code=True)

With the package installed, no remote code runs and the answers are the same:

    pipeline("image-classification", model=..., trust_remote_code=False,
             pipeline_class=MiniVisionImageClassificationPipeline)

What differs from the stock `ImageClassificationPipeline`, and why (everything else is inherited):
- PIL images, paths, bytes, base64 strings and URLs reach the image processor in their own mode: the stock pipeline
  opens them with `load_image(...).convert("RGB")`, which drops the alpha channel and turns black ink on a
  transparent layer into black on black. The processor honours EXIF orientation and refuses oversized files from
  their header.
- A 4-D array or tensor, (N, C, H, W) or (N, H, W, C), gives one result per image (the stock pipeline keeps only the
  first); `input_data_format` resolves shapes that read two ways, as in the image processor.
- An image without ink gives `[{"label": BLANK_LABEL, "score": 1.0}]` ("blank") instead of a confident-looking digit;
  the other images of the same call are read as usual.
- An empty batch is a `ValueError`; so is a `top_k` that is not a positive integer (the stock pipeline slices with
  it: 0 gives [], -1 all labels but one), and a URL that cannot be fetched (within `timeout`, default URL_TIMEOUT).
Outputs keep the stock format: a list of `{"label", "score"}`, best first, `top_k` (default 5, at most the number of
labels) and `function_to_apply` as in the stock pipeline; a list of such lists for a batch.
"""

import base64
import binascii
import numbers
import os

import numpy as np
import torch
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

from transformers import ImageClassificationPipeline

from .image_processing_minivision import split_image_array

BLANK_LABEL = "blank"  # the answer for an image without ink; not one of the model's labels
URL_TIMEOUT = 10.0  # seconds, for URLs fetched without a `timeout` (none at all would wait forever on a dead server)


class MiniVisionImageClassificationPipeline(ImageClassificationPipeline):
    """`ImageClassificationPipeline` for Mini-Vision-V2 (see the module docstring for what it changes).

    Example:

    ```python
    >>> from PIL import Image
    >>> from transformers import pipeline
    >>> clf = pipeline("image-classification", model=".", trust_remote_code=True)
    >>> clf(Image.new("RGBA", (400, 400)))  # an empty transparent canvas
    [{'label': 'blank', 'score': 1.0}]
    ```
    """

    blank_label = BLANK_LABEL

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, input_data_format=None):
        positive = isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) and top_k >= 1
        if top_k is not None and not positive:
            # the stock pipeline slices with it: 0 gives [], -1 all labels but the last, 2.5 a TypeError deep inside
            raise ValueError(f"top_k must be a positive integer (how many labels to return), got {top_k!r}")
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, timeout=timeout
        )
        if input_data_format is not None:
            preprocess_params["input_data_format"] = input_data_format
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs=None, **kwargs):
        """Classify one image (a list of `{"label", "score"}`) or a batch: a list, or a 4-D array/tensor (a list of
        such lists, one per image). Keyword arguments: `top_k`, `function_to_apply`, `timeout` (for URLs),
        `input_data_format` ("channels_first" / "channels_last", for arrays), and the base class's `batch_size`."""
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
            # One pipeline item per image, each (C, H, W): the channel axis is resolved once, for the whole batch.
            inputs = split_image_array(inputs, kwargs.get("input_data_format"))
            kwargs["input_data_format"] = "channels_first"
        elif isinstance(inputs, tuple):
            inputs = list(inputs)  # the base class treats only lists as batches
        if isinstance(inputs, list) and not inputs:
            raise ValueError("empty batch: no images given (pass at least one image)")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image, timeout=None, input_data_format=None):
        image = _fetch(image, timeout)
        model_inputs = self.image_processor(images=image, return_tensors="pt", input_data_format=input_data_format)
        count = model_inputs["pixel_values"].shape[0]
        if count != 1:
            raise ValueError(
                f"one input held {count} images: give a batch as a list with one image per entry, or as one 4-D array"
            )
        return model_inputs.to(self.dtype)

    def _forward(self, model_inputs):
        # The image processor turns an image without ink into a uniform background (its documented blank output).
        flat = model_inputs["pixel_values"].flatten(1)
        is_blank = flat.amax(1) <= flat.amin(1)
        return {"logits": self.model(**model_inputs).logits, "is_blank": is_blank}

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5):
        if bool(model_outputs["is_blank"][0]):
            return [{"label": self.blank_label, "score": 1.0}][:top_k]
        return super().postprocess(model_outputs, function_to_apply=function_to_apply, top_k=top_k)


def _fetch(image, timeout: float | None):
    """URLs and base64 strings -> encoded bytes (as transformers' `load_image` reads them, minus its RGB conversion);
    paths, bytes, PIL images and arrays as given: the image processor opens and checks them."""
    if not isinstance(image, str):
        return image
    if image.startswith(("http://", "https://")):
        # transformers' own HTTP client (httpx2 under huggingface_hub 2.x); a plain `import httpx` would make remote
        # code demand the httpx package, which the core install (transformers + huggingface_hub) does not have
        from huggingface_hub.utils import httpx

        try:
            response = httpx.get(image, timeout=URL_TIMEOUT if timeout is None else timeout, follow_redirects=True)
            response.raise_for_status()
        except (httpx.HTTPError, httpx.InvalidURL) as err:  # offline, refused, timed out, 404, malformed URL
            raise ValueError(f"could not fetch the image at {image[:200]!r}: {err}") from err
        return response.content
    if os.path.isfile(image) or os.path.isdir(image):  # a folder: the processor names it (as base64 it read as junk);
        # not a device or pipe (/dev/stdin, a FIFO): reading one would wait for ever
        return image
    data = image.split(",", 1)[-1] if image.startswith("data:image/") else image
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{image[:80]!r} is not an image file, an http(s) URL or base64 image data") from None


__all__ = ["BLANK_LABEL", "MiniVisionImageClassificationPipeline"]
