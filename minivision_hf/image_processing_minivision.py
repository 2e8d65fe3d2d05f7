"""Mini-Vision-V2 image processor: any image a user may hand it -> MNIST-style `pixel_values` (B, 1, 28, 28).

MNIST digits are white ink on black, size-normalised into a 20x20 box (aspect kept, anti-aliased) and centred
in 28x28 by their centre of mass. Drawings, photos and scans are brought to the same form (the "MNIST protocol"):

1. decode: PIL in any mode (L, RGB, RGBA, LA, P, I;16, CMYK, ...), numpy arrays, torch tensors, file paths, bytes
2. `flatten_alpha`: transparent areas become background (a black-ink drawing on a transparent layer stays a digit)
3. grayscale, then `invert` ("auto": invert when the border is light, i.e. dark ink on a light background)
4. subtract the background level and stretch the ink to full white
5. `crop_to_ink`: crop to the pixels brighter than `ink_threshold`
6. `fit_size`: resize the crop so its longer side is 20 px (aspect kept, anti-aliased)
7. `center_of_mass`: paste into 28x28 with the centre of mass at pixel (14, 14), MNIST's own mean
8. normalise with MNIST's mean 0.1307 / std 0.3081

Images that are already MNIST-normalised (28x28, opaque, black background, full contrast, ink fitted to the 20x20 box
and centred by its centre of mass) skip steps 4-7 when `mnist_passthrough` is on, so MNIST's own images come out
exactly as they went in; any other 28x28 image (a small, faint, stretched or off-centre digit) goes through them all.
A blank image (no ink: nothing differs from the paper by at least `MIN_CONTRAST`, or only a speck does) becomes an
all-background image: every value equals (0 - mean) / std; `has_ink()` tells such images apart.

Array and tensor shapes follow transformers' `input_data_format` convention ("channels_first" / "channels_last"),
with 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels: (H, W) and (H, W, C) are one image, (N, C, H, W) and
(N, H, W, C) a batch, and a list holds one image (or batch) per entry. A shape that reads two ways is refused with a
`ValueError` naming what to pass, never guessed: (C, H, W) with C in 2-4 may be one image or a stack of C grayscale
digits (pass `input_data_format="channels_first"` for the image, or give the stack as (N, 1, H, W) or a list), and
(N, H, W) with neither end axis a channel count is a stack without a channel axis. An empty batch is a `ValueError`.

Every option is validated (`ValueError` naming the field) when the processor is built, so a bad
preprocessor_config.json fails on `from_pretrained`, and again when it is overridden in a call.
"""

import io
import math
import numbers
import os

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version
from PIL import Image, ImageOps

# As Hub remote code, this file runs in the user's transformers, which pip never checked: the code needs 5.4's API
# (transformers.image_processing_backends, new in 5.4; transformers.initialization, 5.0), so an older install is told
# the version needed instead of failing on a missing name.
if Version(transformers.__version__).release < (5, 4):
    raise ImportError(
        f"Mini-Vision-V2 needs transformers>=5.4, found {transformers.__version__}: "
        'pip install -U "transformers>=5.4,<6"'
    )

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension
from transformers.processing_utils import ImagesKwargs

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# MNIST's mean centre of mass, in pixel-index coordinates, measured over the training set (13.99, 14.00).
MNIST_CENTER = 14.0
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL's convert("L") uses
CHANNEL_COUNTS = (1, 2, 3, 4)  # L, LA, RGB, RGBA: what a channel axis may hold
_EXIF_ORIENTATION = 0x0112
# What counts as ink, in [0, 1] units after background removal: a difference from the paper of at least MIN_CONTRAST
# (paper grain, JPEG noise and grey shades stay below it), spanning at least MIN_INK_EXTENT_PX pixels and MIN_INK_EXTENT
# of the image's shorter side, with at least one ink pixel per two of that span, as a stroke has (a stray speck, or two
# far apart, is not a digit; a 60-px digit in a 3000x4000 photo is). A layer whose highest opacity is under MIN_ALPHA
# shows nothing. Its visible pixels hold paper as well as ink (a sheet) when more than PAPER_AND_INK of them differ
# from their median by over 0.3, or when they fill at least SHEET_FILL of their bounding box and any of them (more
# than STRAY) differ so.
MIN_CONTRAST = 0.1
MIN_INK_EXTENT_PX = 2
MIN_INK_EXTENT = 0.005
MIN_ALPHA = 0.05
PAPER_AND_INK = 0.02
SHEET_FILL = 0.5
STRAY = 0.001
FRAMED_SHEET_FILL = 0.8  # a visible layer filling this much of its bounding box is a sheet, even with a dark edge
RANGE_OVERSHOOT = 1.5  # float pixels up to 1.5 read as 0..1 (an 8-bit image that dark shows nothing anyway)
# Values below -RANGE_UNDERSHOOT x the peak are no resampling undershoot but shifted data (normalised with a mean, as
# MNIST's (x - 0.1307) / 0.3081, or in -1..1): their lowest value is black and their highest white.
RANGE_UNDERSHOOT = 0.1


def to_pixel_values(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """(B, 1, H, W) uint8 in [0, 255] or float in [0, 1] -> normalised float32. Training and inference share it."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return (images.float() - mean) / std


class MiniVisionImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of the MNIST protocol, each saved in preprocessor_config.json."""

    mnist_passthrough: bool | None
    flatten_alpha: bool | None
    invert: str | None
    crop_to_ink: bool | None
    fit_size: int | None
    center_of_mass: bool | None
    ink_threshold: float | None
    max_pixels: int | None


class MiniVisionImageProcessor(TorchvisionBackend):
    r"""
    Image processor for Mini-Vision-V2 (see the module docstring for the MNIST protocol it applies).

    Args:
        size (`dict`, *optional*, defaults to `{"height": 28, "width": 28}`): output size.
        do_normalize (`bool`, *optional*, defaults to `True`): normalise with `image_mean` / `image_std`.
        image_mean (`float`, *optional*, defaults to 0.1307), image_std (`float`, *optional*, defaults to 0.3081):
            one finite number each (or a one-element list: the model reads one channel); `image_std` > 0.
        mnist_passthrough (`bool`, *optional*, defaults to `True`): leave 28x28 images that are already
            MNIST-normalised (opaque, black background, full contrast, ink fitted and centred: MNIST's own images) as
            they are, only rescaling them to [0, 1].
        flatten_alpha (`bool`, *optional*, defaults to `True`): composite transparent pixels onto the paper's shade
            (strokes on a transparent layer: the shade opposite to the ink's), so transparency never reads as ink.
        invert (`str`, *optional*, defaults to `"auto"`): `"auto"` inverts when the border is light, `"always"`,
            or `"never"`.
        crop_to_ink (`bool`, *optional*, defaults to `True`): crop to the ink's bounding box.
        fit_size (`int`, *optional*, defaults to 20): longer side of the digit after fitting (0 disables fitting).
        center_of_mass (`bool`, *optional*, defaults to `True`): centre by centre of mass (else by bounding box).
        ink_threshold (`float`, *optional*, defaults to 0.1): brightness in [0, 1], after background removal, above
            which a pixel counts as ink; an image with none is blank.
        max_pixels (`int`, *optional*, defaults to Pillow's `Image.MAX_IMAGE_PIXELS`): a positive integer; larger
            inputs are refused with a `ValueError` (decompression-bomb guard: files are refused from their header,
            before decoding; also applied to arrays and tensors).

    Call arguments: `input_data_format` ("channels_first" / "channels_last") for arrays and tensors, `return_tensors`,
    and any option above, checked like the saved ones.

    Example:

    ```python
    >>> from PIL import Image, ImageOps
    >>> from minivision_hf import MiniVisionImageProcessor
    >>> processor = MiniVisionImageProcessor()
    >>> canvas = Image.new("RGBA", (400, 400))  # transparent, as a sketchpad layer
    >>> processor(canvas)["pixel_values"].shape
    torch.Size([1, 1, 28, 28])
    ```
    """

    valid_kwargs = MiniVisionImageProcessorKwargs
    model_input_names = ["pixel_values"]

    size = {"height": 28, "width": 28}
    do_normalize = True
    image_mean = MNIST_MEAN
    image_std = MNIST_STD
    mnist_passthrough = True
    flatten_alpha = True
    invert = "auto"
    crop_to_ink = True
    fit_size = 20
    center_of_mass = True
    ink_threshold = 0.1
    max_pixels = Image.MAX_IMAGE_PIXELS or 89_478_485

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _validate_options({name: getattr(self, name, None) for name in _VALIDATED})

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        """Call-time overrides get the same checks as the saved options."""
        super()._validate_preprocess_kwargs(**kwargs)
        _validate_options({name: kwargs[name] for name in _VALIDATED if kwargs.get(name) is not None})

    # ---- input structure -------------------------------------------------------------------------------------

    def fetch_images(self, images):
        """Opens file paths and encoded bytes with Pillow, refusing them from the header when over `max_pixels`."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(x) for x in images]
        if isinstance(images, str) and images.startswith(("http://", "https://")) and not os.path.isfile(images):
            raise ValueError(
                f"{images[:80]!r}: the image processor does not download URLs; use the pipeline (it fetches them, "
                "with a timeout) or download the file and pass its path or bytes"
            )
        if isinstance(images, (str, os.PathLike, bytes, bytearray)):
            return _open_image(images, self.max_pixels)
        return images

    def check_image_file(self, source: str | os.PathLike | bytes) -> tuple[int, int]:
        """Read only the header of an encoded image (path or bytes) and return its (width, height); raise
        `ValueError` when it cannot be identified or holds more than `max_pixels` pixels. Nothing is decoded, so a
        caller can refuse a decompression bomb before any library (Gradio, say) decodes it."""
        with _open_header(source, self.max_pixels) as image:
            return image.size

    def _prepare_images_structure(self, images, expected_ndims: int = 3, input_data_format=None) -> list:
        """Flat list of single images: PIL images, and arrays/tensors as (C, H, W) tensors (see the module docstring
        for the shapes accepted). Raises `ValueError` on an ambiguous shape or an empty batch."""
        flat = self._split_images(images, input_data_format)
        if not flat:
            raise ValueError("empty batch: no images given (pass at least one image)")
        return flat

    def _split_images(self, images, input_data_format) -> list:
        images = self.fetch_images(images)
        if isinstance(images, (list, tuple)):
            return [single for image in images for single in self._split_images(image, input_data_format)]
        if isinstance(images, Image.Image):
            return [images]
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return split_image_array(images, input_data_format)
        raise TypeError(
            f"unsupported image type {type(images).__name__}: give PIL images, numpy arrays, tensors, file paths or "
            "encoded bytes"
        )

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, input_data_format=None, **kwargs):
        """The base class's, with `input_data_format` resolving each array's shape once, for the whole batch."""
        flat = self._prepare_images_structure(images, input_data_format=input_data_format)
        return [self._process_one(image, **kwargs) for image in flat]

    # ---- one image -------------------------------------------------------------------------------------------

    def process_image(self, image, input_data_format=None, **kwargs) -> torch.Tensor:
        """One raw image -> (1, 28, 28) float32 in [0, 1], white ink on black."""
        images = self._prepare_images_structure(image, input_data_format=input_data_format)
        if len(images) != 1:
            raise ValueError(f"process_image takes one image, got a batch of {len(images)}")
        return self._process_one(images[0], **kwargs)

    def _process_one(self, image, **kwargs) -> torch.Tensor:
        opts = {k: kwargs.get(k) if kwargs.get(k) is not None else getattr(self, k) for k in self._protocol_keys}
        size = kwargs.get("size") or self.size
        ink, _ = self._to_mnist(image, (size.height, size.width), **opts)
        return ink[None]

    _protocol_keys = (
        "mnist_passthrough", "flatten_alpha", "invert", "crop_to_ink", "fit_size", "center_of_mass",
        "ink_threshold", "max_pixels",
    )  # fmt: skip

    def has_ink(self, images, input_data_format=None) -> list[bool]:
        """For each image, whether it holds any ink (False for a blank canvas)."""
        opts = {k: getattr(self, k) for k in self._protocol_keys}
        size = (self.size.height, self.size.width)
        flat = self._prepare_images_structure(images, input_data_format=input_data_format)
        return [self._to_mnist(image, size, **opts)[1] for image in flat]

    def _to_mnist(self, image, size, *, mnist_passthrough, flatten_alpha, invert, crop_to_ink, fit_size,
                  center_of_mass, ink_threshold, max_pixels) -> tuple[torch.Tensor, bool]:  # fmt: skip
        gray, alpha = _gray_and_alpha(image, max_pixels)
        if alpha is not None and float(alpha.min()) >= 1.0:
            alpha = None  # fully opaque: the same image as without the channel (an RGBA copy of an MNIST digit)
        if alpha is not None and flatten_alpha:
            if float(alpha.max()) < MIN_ALPHA:
                return torch.zeros(size), False  # a fully (or all but invisibly) transparent layer
            background = _alpha_background(gray, alpha)
            gray = gray.mul_(alpha).add_((1.0 - alpha).mul_(background))
            alpha = None
        light_background = _border_level(gray) > 0.5
        if invert == "always" or (invert == "auto" and light_background):
            gray = gray.neg_().add_(1.0)  # 1 - gray, in place (gray is always this call's own copy)

        if mnist_passthrough and tuple(gray.shape) == tuple(size) and alpha is None and not light_background \
                and _is_mnist_normalised(gray, ink_threshold, fit_size):  # fmt: skip
            return gray, True

        # Background removal and contrast stretch: a grey paper or a faint pen still gives white-on-black.
        background_level = _border_level(gray)  # after any inversion: the paper's level, now dark
        gray = gray.sub_(background_level).clamp_(min=0.0)
        peak = float(gray.max())
        if peak < MIN_CONTRAST:  # paper grain, JPEG noise or a shade of grey: nothing drawn
            return torch.zeros(size), False
        gray = gray.div_(peak)
        mask = gray > ink_threshold
        extent, count = _ink_extent(mask), int(torch.count_nonzero(mask))  # not mask.sum(): an int64 copy of it
        if extent < max(MIN_INK_EXTENT_PX, MIN_INK_EXTENT * min(mask.shape)) or count < extent / 2:
            return torch.zeros(size), False  # no ink, a stray speck, or a few specks far apart: not a stroke

        if crop_to_ink:
            top, bottom, left, right = _bounding_box(mask)
            gray = gray[top : bottom + 1, left : right + 1]
        if fit_size:
            h, w = gray.shape
            scale = fit_size / max(h, w)
            new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
            gray = F.interpolate(gray[None, None], size=(new_h, new_w), mode="bilinear", antialias=True)[0, 0]
            gray = (gray / gray.max().clamp(min=1e-6)).clamp_(0.0, 1.0)
        return _paste_centered(gray, size, center_of_mass), True

    # ---- batch -----------------------------------------------------------------------------------------------

    def _preprocess(
        self, images, do_normalize, image_mean, image_std, return_tensors=None, device=None, **kwargs
    ) -> BatchFeature:
        pixel_values = torch.stack(images)
        if do_normalize:
            pixel_values = to_pixel_values(pixel_values, _scalar(image_mean), _scalar(image_std))
        if device is not None:  # the protocol runs on the CPU; `device` says where the output goes, as in transformers
            pixel_values = pixel_values.to(device)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


def _alpha_background(gray: torch.Tensor, alpha: torch.Tensor) -> float:
    """The shade that transparent pixels take: the paper's, where the visible layer holds paper and ink (an opaque
    sheet with a transparent margin: its most common shade), else the opposite of the ink's (strokes on a transparent
    layer: the visible pixels are all ink, of one shade). Visible means at least half the layer's highest opacity,
    so a stroke drawn with a semi-transparent brush still counts."""
    shown = alpha >= 0.5 * float(alpha.max())
    visible = gray[shown]
    level = float(visible.median())
    contrasting = float(((visible - level).abs() > 0.3).float().mean())
    top, bottom, left, right = _bounding_box(shown)  # not empty: the most opaque pixel is shown
    fill = len(visible) / ((bottom - top + 1) * (right - left + 1))
    # A sheet's outline is its paper, and strokes alone are outlined by their ink; strokes anti-aliased against a matte
    # (a GIF, a PNG with one transparent colour) are outlined by their fringe, which contrasts with the ink as paper
    # does: the transparent pixels take the fringe's side, the matte's. A layer that nearly fills its bounding box is a
    # sheet whatever its edge (a dark frame, a window's border, a shadow): the rule below decides, and its outline is
    # not looked at
    if fill < FRAMED_SHEET_FILL:
        padded = F.pad(shown[None, None].float(), (1, 1, 1, 1))[0, 0].bool()
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        outline = float(gray[shown & ~inner].median())
        if abs(outline - level) > 0.3:
            return 1.0 if outline > level else 0.0
    if contrasting > PAPER_AND_INK or (fill >= SHEET_FILL and contrasting > STRAY):
        return level  # paper and ink (a sheet, however little is written on it): the margin continues the paper
    return 1.0 if level < 0.5 else 0.0  # ink alone: the background is its opposite


def _bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), inclusive, of the True pixels of a 2-D mask; None when there are none."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _ink_extent(mask: torch.Tensor) -> int:
    """The longer side of the ink's bounding box, in pixels (0 without ink)."""
    box = _bounding_box(mask)
    return 0 if box is None else max(box[1] - box[0], box[3] - box[2]) + 1


def _centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(row, column) of a 2-D image's centre of mass, in pixel-index coordinates."""
    h, w = image.shape
    total = image.sum()
    return float((image.sum(1) * torch.arange(h)).sum() / total), float((image.sum(0) * torch.arange(w)).sum() / total)


def _is_mnist_normalised(gray: torch.Tensor, ink_threshold: float, fit_size: int) -> bool:
    """Whether a white-on-black image of the output size is already what the protocol would make of it: black
    background, full contrast, ink fitted to the `fit_size` box and centred by its centre of mass. Every one of
    MNIST's 70,000 images is (peak >= 0.996, longer ink side 18-20 px, centre of mass within 0.52 px of (14, 14));
    a small, faint, stretched or off-centre digit is not, and goes through the whole protocol."""
    h, w = gray.shape
    if _border_level(gray) > 0.05 or float(gray.max()) < 0.9:
        return False
    longer = _ink_extent(gray > ink_threshold)
    if longer == 0 or (fit_size and abs(longer - fit_size * max(h, w) / 28) > 3):
        return False
    cy, cx = _centre_of_mass(gray)
    return abs(cy - MNIST_CENTER * h / 28) <= 1.0 and abs(cx - MNIST_CENTER * w / 28) <= 1.0


def _border_level(gray: torch.Tensor) -> float:
    """Median of the outermost rows and columns: the background's brightness."""
    return float(torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]]).median())


def _scalar(value) -> float:
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


def _open_header(source, max_pixels: int) -> Image.Image:
    """Open a path or encoded bytes lazily (Pillow reads the header only) and check its size before any decoding."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except Image.DecompressionBombError as err:
        raise ValueError(f"image refused: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"could not decode the image ({err}); give a PNG, JPEG, WebP, BMP or similar file") from err
    try:
        _check_pixels(image.height, image.width, max_pixels)
    except ValueError:
        image.close()
        raise
    return image


def _open_image(source, max_pixels: int) -> Image.Image:
    """Open and decode a path or encoded bytes; the size is checked from the header, before any pixel is decoded."""
    image = _open_header(source, max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise ValueError(f"image refused: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"could not decode the image ({err}); give a PNG, JPEG, WebP, BMP or similar file") from err
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    """Honour the EXIF orientation of phone photos, as transformers' `load_image` does (no copy when upright)."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image is empty ({height}x{width})")
    if max_pixels and height * width > max_pixels:
        raise ValueError(
            f"image of {width}x{height} = {height * width:,} pixels exceeds max_pixels={max_pixels:,} "
            "(decompression-bomb guard); downscale it first"
        )


def _gray_and_alpha(image, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Any single image -> (gray HxW float32 in [0, 1], alpha HxW in [0, 1] or None)."""
    if isinstance(image, Image.Image):
        _check_pixels(image.height, image.width, max_pixels)
        if getattr(image, "tile", None) and getattr(image, "fp", False) is None:  # Pillow fails on an assert there
            raise ValueError(
                "the image's file was closed before its pixels were read (a `with Image.open(...)` block ended): "
                "call image.load() inside the block, or pass the path"
            )
        try:  # an image opened by the caller is decoded here: a truncated or corrupt file fails now
            image.load()
        except (OSError, SyntaxError) as err:
            raise ValueError(f"could not decode the image ({err}); give a PNG, JPEG, WebP, BMP or similar file") \
                from err  # fmt: skip
        image = _upright(image)
        if image.mode == "P":  # transparency in the info (GIF, PNG tRNS) or in an RGBA palette (`quantize()`)
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        elif image.mode in ("RGBa", "La"):  # premultiplied alpha: its band is "a", not "A"
            image = image.convert(image.mode.upper())
        elif image.mode == "LAB":  # Pillow converts LAB to nothing else; its L band is the lightness
            image = image.getchannel("L")
        if image.mode in ("RGBA", "LA", "PA"):
            alpha = torch.from_numpy(np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0)
            gray = np.asarray(image.convert("RGBA").convert("L") if image.mode != "LA" else image.getchannel("L"))
            return torch.from_numpy(gray.astype(np.float32) / 255.0), alpha
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return _float_gray(torch.from_numpy(np.asarray(image).astype(np.float32))).clamp(0.0, 1.0), None
        if image.mode != "L":
            image = image.convert("L")
        gray = np.array(image, dtype=np.float32)  # our own copy: divided in place (a photo's float copies add up)
        return torch.from_numpy(np.divide(gray, 255.0, out=gray)), None

    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise TypeError(f"expected a PIL image or a (C, H, W) tensor, got {type(image).__name__}")
    tensor = image
    _check_pixels(tensor.shape[1], tensor.shape[2], max_pixels)
    channels = tensor.shape[0]
    alpha = tensor[-1] if channels in (2, 4) else None
    tensor = tensor[:-1] if alpha is not None else tensor
    # 8-bit and boolean channels are converted to float one at a time, as the luma uses them: a float copy of all of
    # them at once is 4x an 8-bit photo. Every channel(i) is this call's own tensor (never the caller's): in place.
    if tensor.dtype in (torch.uint8, torch.bool):
        scale = 255.0 if tensor.dtype == torch.uint8 else 1.0
        alpha = alpha.float() / scale if alpha is not None else None
    elif tensor.dtype in (torch.uint16, torch.int16, torch.int32, torch.int64) or tensor.is_floating_point():
        # colour and alpha each on their own range: one overshooting colour value must not rescale the alpha
        tensor, scale = _float_gray(tensor.float()), None
        alpha = _float_gray(alpha.float()).clamp(0.0, 1.0) if alpha is not None else None
    else:
        raise ValueError(f"unsupported image dtype {tensor.dtype}")

    def channel(i: int) -> torch.Tensor:
        return tensor[i] if scale is None else tensor[i].float().div_(scale)

    gray = channel(0)
    if channels >= 3:
        gray.mul_(_LUMA[0])
        for i in (1, 2):
            gray += _LUMA[i] * channel(i)
    return gray.clamp_(0.0, 1.0), alpha


def split_image_array(array: np.ndarray | torch.Tensor, input_data_format: str | None = None) -> list[torch.Tensor]:
    """An image array or tensor -> its images as (C, H, W) tensors, following transformers' `input_data_format`.

    (H, W) is one grayscale image; (C, H, W) / (H, W, C) one image; (N, C, H, W) / (N, H, W, C) a batch. Without
    `input_data_format` the channel axis is the end axis holding 1-4 channels; a shape where that reads two ways, or
    no way, is a `ValueError` that says what to pass (see the module docstring).
    """
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "biuf":  # bool, int, uint, float
            raise TypeError(f"unsupported image array dtype {array.dtype}")
        # a read-only array (np.asarray of a PIL image) is copied: torch warns about tensors over read-only memory
        array = torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else array.copy())
    if array.is_meta:
        raise ValueError("a meta tensor holds no pixels: give a tensor on a real device (cpu, cuda, ...)")
    array = array.detach().cpu()
    if array.layout != torch.strided:  # sparse
        array = array.to_dense()
    shape = tuple(array.shape)
    if array.ndim == 2:
        return [array[None]]
    if array.ndim not in (3, 4):
        raise ValueError(f"an image array must have 2, 3 or 4 dimensions, got shape {shape}")
    if array.ndim == 4 and shape[0] == 0:
        raise ValueError(f"empty batch: the image array of shape {shape} holds no images")
    if _channel_axis(shape, input_data_format) == ChannelDimension.LAST:
        array = array.movedim(-1, -3)
    return [array] if array.ndim == 3 else list(array)


def _channel_axis(shape: tuple[int, ...], input_data_format) -> ChannelDimension:
    """Which end of a 3-D image or 4-D batch shape holds the channels (see `split_image_array`)."""
    first, last = shape[-3], shape[-1]
    if input_data_format is not None:
        try:
            fmt = ChannelDimension(input_data_format)
        except ValueError:
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            ) from None
        channels = first if fmt == ChannelDimension.FIRST else last
        if channels not in CHANNEL_COUNTS:
            raise ValueError(
                f"image array of shape {shape} with input_data_format={fmt.value!r} has {channels} channels; "
                "give 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)"
            )
        return fmt
    one_image = len(shape) == 3
    if one_image and first == 1 and last not in CHANNEL_COUNTS:
        return ChannelDimension.FIRST  # (1, H, W): one grayscale image, the same as a stack of one
    if first in CHANNEL_COUNTS and last in CHANNEL_COUNTS:
        raise ValueError(
            f"image array of shape {shape} is ambiguous: channels could be first or last; pass "
            "input_data_format='channels_first' or 'channels_last'"
        )
    if one_image and first in CHANNEL_COUNTS:
        raise ValueError(
            f"image array of shape {shape} is ambiguous: one {first}-channel image or a stack of {first} grayscale "
            f"images. Pass input_data_format='channels_first' for one image; give a stack of grayscale images with a "
            f"channel axis, shape ({first}, 1, {shape[1]}, {shape[2]}) (e.g. `images[:, None]`), or as a list"
        )
    if last in CHANNEL_COUNTS:
        return ChannelDimension.LAST
    if first in CHANNEL_COUNTS:
        return ChannelDimension.FIRST
    hint = (
        f"a stack of {shape[0]} grayscale images needs a channel axis: shape ({shape[0]}, 1, {shape[1]}, {shape[2]}) "
        "(e.g. `images[:, None]`), or a list of 2-D arrays"
        if one_image
        else "give (N, C, H, W) or (N, H, W, C)"
    )
    raise ValueError(
        f"image array of shape {shape} has no channel axis: neither end holds 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) "
        f"channels; {hint}"
    )


def _float_gray(values: torch.Tensor) -> torch.Tensor:
    """Float or wide-integer pixels -> [0, 1] units, guessing the range from the data: 0..1 or 0..255, with up to
    RANGE_OVERSHOOT above either still read as it (resampling overshoots: 1.02 is not an 8-bit value), else the
    smallest power of two above the peak (10-, 12- and 16-bit data: 0..1023, 0..4095, 0..65535); values past the
    range are left for the caller's clamp. Data well below zero (see RANGE_UNDERSHOOT) is read from its lowest to its
    highest value."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError("image contains NaN or infinite values")
    peak = float(values.max()) if values.numel() else 0.0
    low = float(values.min()) if values.numel() else 0.0
    if low < 0 and low < -RANGE_UNDERSHOOT * peak:
        return (values - low) / (peak - low) if peak > low else torch.zeros_like(values)
    for limit in (1.0, 255.0):
        if peak <= limit * RANGE_OVERSHOOT:
            return values / limit
    return values / 2.0 ** math.ceil(math.log2(peak + 1))


def _paste_centered(digit: torch.Tensor, size: tuple[int, int], center_of_mass: bool) -> torch.Tensor:
    """Paste `digit` into a black canvas of `size`, its centre of mass (or box centre) at MNIST's centre."""
    out_h, out_w = size
    h, w = digit.shape
    if center_of_mass:
        cy, cx = _centre_of_mass(digit)
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top = round(MNIST_CENTER * out_h / 28 - cy)
    left = round(MNIST_CENTER * out_w / 28 - cx)
    canvas = torch.zeros(out_h, out_w)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, out_h), min(left + w, out_w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = digit[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


_BOOLEAN_OPTIONS = ("do_normalize", "mnist_passthrough", "flatten_alpha", "crop_to_ink", "center_of_mass")
_VALIDATED = (*_BOOLEAN_OPTIONS, "size", "image_mean", "image_std", "invert", "ink_threshold", "fit_size",
              "max_pixels")  # fmt: skip


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_options(options: dict) -> None:
    """Raise `ValueError` naming the first option (of those given) that would break or silently change inference."""
    for name in _BOOLEAN_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be true or false, got {options[name]!r}")
    size = options.get("size")
    if "size" in options:
        height, width = getattr(size, "height", None), getattr(size, "width", None)
        if not (_is_int(height) and _is_int(width) and height >= 1 and width >= 1):
            raise ValueError(f"size must be {{'height': int >= 1, 'width': int >= 1}}, got {size!r}")
    for name in ("image_mean", "image_std"):
        if name not in options:
            continue
        value = options[name]
        # One channel in, one out: a list may hold one number (transformers writes per-channel lists).
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ValueError(f"{name} must be one number (the model reads 1 channel), got {len(value)}: {value!r}")
            value = value[0]
        if not _is_real(value):
            raise ValueError(f"{name} must be a finite number, got {options[name]!r}")
        if name == "image_std" and not value > 0:
            raise ValueError(f"image_std must be > 0 (it divides the pixels), got {options[name]!r}")
    if "invert" in options and options["invert"] not in ("auto", "always", "never"):
        raise ValueError(f"invert must be 'auto', 'always' or 'never', got {options['invert']!r}")
    if "ink_threshold" in options:
        value = options["ink_threshold"]
        if not (_is_real(value) and 0.0 <= value < 1.0):
            raise ValueError(f"ink_threshold must be a number in [0, 1), got {value!r}")
    if "fit_size" in options:
        value, limit = options["fit_size"], min(size.height, size.width) if size is not None else None
        if not (_is_int(value) and 0 <= value and (limit is None or value <= limit)):
            raise ValueError(f"fit_size must be an integer between 0 and the output size ({limit}), got {value!r}")
    if "max_pixels" in options:
        value = options["max_pixels"]
        if not (_is_int(value) and value >= 1):
            raise ValueError(
                f"max_pixels must be a positive integer (the decompression-bomb guard's limit), got {value!r}"
            )


__all__ = ["MiniVisionImageProcessor", "to_pixel_values", "split_image_array", "MNIST_MEAN", "MNIST_STD"]
