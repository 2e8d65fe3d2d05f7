"""MNIST data for training and evaluation: loading (Hub id or local copy), schema checks, decoding once to uint8
tensors, and the seed's augmentation (RandomCrop(28, padding=2) + RandomRotation(10)) in two forms:

- plain: torchvision transforms on PIL images, one sample at a time (the obvious way, `plain_transform`);
- fast: the same distributions computed on whole batches with one `grid_sample` (`random_shift_rotate`).

Both end in `to_pixel_values`, the image processor's normalisation.
"""

import io
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .extras import explain_missing_extra
from .image_processing_minivision import to_pixel_values

with explain_missing_extra():  # `datasets` (and its pyarrow) come with the `train` extra: say so when missing
    import datasets
    import pyarrow.compute as pc

DEFAULT_DATASET = "ylecun/mnist"  # the `mnist` entry of datasets; a local copy with the same layout works too
# Hub ids that name DEFAULT_DATASET (the Hub redirects them). Offline, datasets would otherwise take a one-word id from
# its cache under that name, which is also where it caches any local folder so named (the latest one wins).
HUB_ALIASES = {"mnist": DEFAULT_DATASET}
IMAGE_SIZE = 28
DIGITS = [str(d) for d in range(10)]


def load_mnist(source: str = DEFAULT_DATASET, split: str = "train", max_samples: int | None = None) -> datasets.Dataset:
    """Load one split of MNIST from a Hub id, a local folder (parquet layout of `ylecun/mnist`) or parquet file(s),
    check its schema, and optionally keep only the first `max_samples` rows."""
    source = str(source)
    path = Path(source).expanduser()
    # A Hub id is "name" or "namespace/name"; anything else that does not exist is a mistyped local path.
    is_path_like = source.startswith((".", "/", "~")) or source.endswith(".parquet") or source.count("/") > 1
    if not path.exists() and is_path_like:
        raise FileNotFoundError(f"dataset path {source!r} does not exist (give a folder, a .parquet file or a Hub id)")
    named = split_named_by(path) if path.is_file() else None
    if named is not None and named != SPLIT_NAMES.get(split, split):  # a train-*.parquet file is not the test split
        raise ValueError(f"{source!r} holds the {named!r} split (by its file name), not {split!r}: pass the folder "
                         f"holding both splits, or the {split!r} file")  # fmt: skip
    try:
        if path.is_file():
            splits = datasets.load_dataset("parquet", data_files={split: str(path)})
        else:
            splits = datasets.load_dataset(str(path) if path.exists() else HUB_ALIASES.get(source, source))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"could not load dataset {source!r}: {err}") from err
    except (ConnectionError, OSError) as err:
        if path.exists():  # a local copy: nothing was fetched (unreadable files, a full disk)
            raise ValueError(f"could not read dataset {source!r}: {err}") from err
        raise ConnectionError(
            f"could not fetch dataset {source!r} from the Hub ({err}); offline, pass a local copy, "
            "e.g. --dataset ../shared/data/mnist (HF_HUB_OFFLINE=1 fails at once, without retries)"
        ) from err
    except Exception as err:  # pyarrow / datasets errors for files that are not a dataset
        raise ValueError(f"could not read {source!r} as an MNIST dataset: {err}") from err
    if split not in splits:
        raise ValueError(f"dataset {source!r} has no split {split!r}; it has {sorted(splits)}")
    ds = digit_labels(splits[split], source)
    check_schema(ds, source)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


SPLIT_NAMES = {"train": "train", "test": "test", "validation": "validation", "valid": "validation", "val": "validation"}


def split_named_by(path: Path) -> str | None:
    """The split a single data file's name gives it, datasets' way (`train-00000-of-00001.parquet`, `test.parquet`,
    `mnist_val.parquet`): a word of the name that is a split's name; None when no word is, or several are."""
    words = {SPLIT_NAMES[w] for w in re.split(r"[^a-z]+", path.name.lower()) if w in SPLIT_NAMES}
    return words.pop() if len(words) == 1 else None


def digit_labels(ds: datasets.Dataset, name: str = "dataset") -> datasets.Dataset:
    """`ds` with its labels as the digits' values: a 10-class ClassLabel whose names are the digits in another order
    (index i means names[i]) re-indexed by name, a column of digit strings cast to a ClassLabel; else unchanged."""
    label = ds.features.get("label")
    if isinstance(label, datasets.ClassLabel) and label.names != DIGITS and sorted(label.names) == DIGITS:
        return ds.align_labels_with_mapping({d: i for i, d in enumerate(DIGITS)}, "label")
    if isinstance(label, datasets.Value) and label.dtype in ("string", "large_string"):
        try:
            return ds.cast_column("label", datasets.ClassLabel(names=DIGITS))
        except ValueError as err:
            raise ValueError(f"{name}: 'label' strings must be the digits '0'..'9' ({err})") from None
    return ds


def check_schema(ds: datasets.Dataset, name: str = "dataset") -> None:
    """An `image` column of datasets.Image, an integer or 10-class `label` column whose every row is a digit 0-9, and
    at least one row; else a one-line ValueError."""
    features = ds.features
    if "image" not in features or not isinstance(features["image"], datasets.Image):
        found = {k: type(v).__name__ for k, v in list(features.items())[:8]}
        more = f" and {len(features) - 8} more" if len(features) > 8 else ""  # a CSV of pixels has 785
        raise ValueError(f"{name}: expected an 'image' column of type datasets.Image, found columns {found}{more}")
    if "label" not in features:
        raise ValueError(f"{name}: expected a 'label' column (digits 0-9), found columns {list(features)}")
    label = features["label"]
    if isinstance(label, datasets.ClassLabel):
        if label.num_classes != 10:
            raise ValueError(f"{name}: 'label' must have 10 classes, it has {label.num_classes}: {label.names}")
    elif not (isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint"))):
        raise ValueError(f"{name}: 'label' must be a ClassLabel or an integer column, it is {label}")
    if len(ds) == 0:
        raise ValueError(f"{name}: the split is empty")
    labels = ds.data.column("label")  # the Arrow column: no decoding
    if labels.null_count:
        raise ValueError(f"{name}: {labels.null_count} rows have no label")
    low, high = pc.min(labels).as_py(), pc.max(labels).as_py()
    if low is None or low < 0 or high > 9:
        raise ValueError(f"{name}: labels must be digits 0-9, found range {low}..{high}")


def decode_to_uint8(ds: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once: (N, 1, 28, 28) uint8 and (N,) int64 labels (~3 s for MNIST's 60k images)."""
    # Decoding the PNG bytes straight with Pillow is ~20x faster than with_format("torch") on 2 cores.
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    arrays = []
    for item in raw:
        with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
            arrays.append(np.asarray(image.convert("L") if image.mode != "L" else image))
    shapes = {a.shape for a in arrays}
    if shapes != {(IMAGE_SIZE, IMAGE_SIZE)}:
        raise ValueError(f"expected 28x28 grayscale images, found sizes {sorted(shapes)[:5]}")
    images = torch.from_numpy(np.stack(arrays))[:, None]
    labels = torch.as_tensor(np.asarray(ds["label"])).long()
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"labels must be digits 0-9, found range {int(labels.min())}..{int(labels.max())}")
    return images.contiguous(), labels


def random_shift_rotate(
    images: torch.Tensor,
    max_shift: int = 2,
    max_degrees: float = 10.0,
    scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
    mode: str = "nearest",
    shear: float = 0.0,
    elastic: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Batched RandomCrop(28, padding=max_shift) then RandomRotation(max_degrees), fresh per sample.

    RandomCrop with zero padding p is an integer shift uniform in [-p, p] on each axis with zero fill; rotation is
    about the image centre with zero fill and nearest interpolation (torchvision's defaults). Both are folded into one
    affine sampling grid: source = R^-1 (out - c) + c - shift. `scale` optionally zooms too (1.0 = the seed's recipe);
    `shear` (degrees) optionally shears along x by an angle uniform in [-shear, shear] (0 = none); `mode` is
    grid_sample's interpolation ("nearest" as torchvision's default, or "bilinear"); `elastic` = (alpha, sigma) adds
    an elastic distortion (Simard et al. 2003) to the grid (`elastic_displacement`; alpha 0 = none). The random draws
    for zoom, shear and elastic are made only when they are on, so the seed's and `plus`'s augmentation streams are
    unchanged.
    """
    b, _, h, w = images.shape
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()
    zoom = torch.empty(b).uniform_(scale[0], scale[1], generator=generator) if scale != (1.0, 1.0) else torch.ones(b)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    if shear:
        # source = (rotation/zoom) @ [[1, tan s], [0, 1]] @ out: x moves in proportion to y (a handwriting slant)
        tan = torch.tan((torch.rand(b, generator=generator) * 2 - 1) * math.radians(shear))
        theta[:, 0, 1] = theta[:, 0, 1] + theta[:, 0, 0] * tan
        theta[:, 1, 1] = theta[:, 1, 1] + theta[:, 1, 0] * tan
    theta[:, 0, 2] = -shift[:, 0] * 2 / w  # normalised coordinates span 2 over the width (align_corners=False)
    theta[:, 1, 2] = -shift[:, 1] * 2 / h
    grid = affine_grid(theta.to(images.device), h, w)
    if elastic[0]:
        grid = grid + elastic_displacement(b, h, w, *elastic, generator=generator).to(grid.device)
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=False)


def elastic_displacement(
    b: int, h: int, w: int, alpha: float, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Simard et al. 2003's elastic distortion as a (b, h, w, 2) offset to add to a sampling grid (normalised units):
    per pixel and axis a uniform draw in [-1, 1], smoothed by a Gaussian of `sigma` pixels (separable, zero
    padded), scaled by `alpha` pixels. alpha 34, sigma 4 (Simard's) moves pixels by ~1.3 px RMS, smoothly."""
    noise = torch.rand(b * 2, h, w, generator=generator) * 2 - 1

    def blur(n: int) -> torch.Tensor:  # the Gaussian as an (n, n) matrix: zero padding is its cut-off rows
        offsets = torch.arange(n, dtype=torch.float32)
        taps = torch.exp(-0.5 * ((offsets[:, None] - offsets[None]) / sigma) ** 2)
        return taps / taps.sum(1, keepdim=True).max()  # an interior row sums to 1

    smooth = blur(h) @ noise @ blur(w).T  # separable: columns, then rows (~20x faster than two conv2d on a CPU)
    pixels_to_grid = torch.tensor([2.0 / w, 2.0 / h])  # normalised coordinates span 2 over the width and height
    return smooth.view(b, 2, h, w).permute(0, 2, 3, 1) * alpha * pixels_to_grid


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, (b, c, h, w), align_corners=False)` as one (h*w, 3) x (3, 2b) product: the same grid
    (to float rounding), ~15x faster on a CPU than its b small batched matmuls."""
    xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones_like(xs).expand(h, w)], -1)
    return torch.einsum("pk,bjk->bpj", base.view(h * w, 3), theta).reshape(-1, h, w, 2)


class IndexDataset(torch.utils.data.Dataset):
    """Items are row indices `start .. start + length - 1` into a `BatchCollator`'s tensors, which gathers and
    augments whole batches at once (train and test rows live in one tensor, so one collator serves both)."""

    def __init__(self, length: int, start: int = 0):
        self.length, self.start = length, start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.start + index

    def __getitems__(self, indices: list[int]) -> list[int]:
        """The DataLoader's batched fetch: one call per batch instead of one per image."""
        if indices and not (0 <= min(indices) and max(indices) < self.length):
            raise IndexError(f"indices outside 0..{self.length - 1}")
        return [self.start + i for i in indices]


class BatchCollator:
    """Index batch -> {"pixel_values", "labels"}: gather from the uint8 tensor, augment rows below `augment_below`
    (the training rows), normalise. After `.to(device)` (e.g. "cuda"), the uint8 dataset lives there (MNIST's 70,000
    images are 55 MB) and batches are gathered and augmented there: no image crosses to the device per batch, only
    the indices and the augmentation parameters (a few floats an image). The random draws stay on the CPU generator,
    so a device changes no augmentation stream."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment_below: int = 0,
        max_shift: int = 2,
        max_degrees: float = 10.0,
        scale: tuple[float, float] = (1.0, 1.0),
        channels_last: bool = False,
        seed: int | None = None,
        shear: float = 0.0,
        interpolation: str = "nearest",
        elastic: tuple[float, float] = (0.0, 0.0),
    ):
        self.images, self.labels = images, labels
        self.augment_below, self.max_shift, self.max_degrees, self.scale = augment_below, max_shift, max_degrees, scale
        self.shear, self.interpolation, self.elastic = shear, interpolation, elastic
        self.channels_last = channels_last
        self.augment = True  # False: the training rows pass unaugmented too (a recipe's clean last epochs)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def to(self, device: str | torch.device) -> "BatchCollator":
        """Keep the dataset on `device` (batches are then made there); returns self."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        pixels = self.images[index].float().div_(255.0)
        if self.augment and int(indices[0]) < self.augment_below:
            pixels = random_shift_rotate(pixels, self.max_shift, self.max_degrees, self.scale, self.generator,
                                         mode=self.interpolation, shear=self.shear, elastic=self.elastic)  # fmt: skip
        pixels = to_pixel_values(pixels)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return {"pixel_values": pixels, "labels": self.labels[index]}


def validation_split(num_rows: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, validation) of a split held out of the training split: `val_size` rows drawn by a seeded
    permutation, both index lists sorted. The same (num_rows, val_size, seed) always gives the same split, so the
    evaluation and temperature-fitting scripts rebuild exactly the validation set a run held out."""
    if not 0 < val_size < num_rows:
        raise ValueError(f"held-out rows (--val-size) must be 1..{num_rows - 1} of the training split's {num_rows}, "
                         f"got {val_size}")  # fmt: skip
    perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def plain_transform(augment: bool, max_shift: int = 2, max_degrees: float = 10.0):
    """Per-sample PIL transforms for `Dataset.with_transform`: the seed's augmentation written the obvious way."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(IMAGE_SIZE, padding=max_shift), transforms.RandomRotation(max_degrees)]
    pipeline = transforms.Compose([*(steps if augment else []), transforms.PILToTensor()])

    def apply(batch: dict) -> dict:
        pixels = [to_pixel_values(pipeline(image.convert("L"))[None])[0] for image in batch["image"]]
        return {"pixel_values": pixels, "labels": list(batch["label"])}

    return apply


__all__ = [
    "DEFAULT_DATASET",
    "BatchCollator",
    "IndexDataset",
    "affine_grid",
    "check_schema",
    "decode_to_uint8",
    "digit_labels",
    "elastic_displacement",
    "load_mnist",
    "plain_transform",
    "random_shift_rotate",
    "validation_split",
]
