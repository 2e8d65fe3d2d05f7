"""Convert the original Mini-Vision-V2 checkpoint (`Mini-Vision-V2.pth`, a state_dict of the seed's own `model.py`)
into a save_pretrained folder of this package: weights, config, image processor, code files and a generated card.

    python -m scripts.convert_seed_checkpoint Mini-Vision-V2.pth --output converted/
    python -m scripts.convert_seed_checkpoint Mini-Vision-V2.pth --output converted/ --dataset ../shared/data/mnist
    python -m scripts.convert_seed_checkpoint weights.safetensors --output converted/ --overwrite

The file is read safely: `torch.load(weights_only=True)` (tensors and plain containers only, no code runs) or a plain
safetensors file. Key names do not matter: the tensors are grouped into layers by their standard suffixes
(weight, bias, running_mean, running_var, num_batches_tracked), each layer is recognised as a conv, BatchNorm or
linear layer, and the layers of each kind are paired in module order with the seed card's layer table (by shape when
the file's order differs, as in safetensors files, which store keys sorted). Anything else is refused with a list of
what differs. The folder is written beside the target under a temporary name and renamed when complete, then loads
with `from_pretrained` (in-package, or as remote code with `trust_remote_code=True`). `--dataset` evaluates it with
scripts/eval_model.py's `evaluate_model` (needs the `train` extra); the conversion itself needs only the core install.
"""

import argparse
import datetime
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import torch
import transformers
from huggingface_hub import ModelCardData
from safetensors import SafetensorError
from safetensors.torch import load_file

import minivision_hf as mv
from minivision_hf.extras import explain_missing_extra

SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Tensors each kind of layer must have; num_batches_tracked is optional (state_dicts older than PyTorch 0.4.1 lack it,
# and eval-mode outputs do not depend on it: the converted model keeps 0 then).
REQUIRED = {
    "conv": ("weight", "bias"),
    "batchnorm": ("weight", "bias", "running_mean", "running_var"),
    "linear": ("weight", "bias"),
}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")  # training checkpoints nest the state_dict here


class ConversionError(ValueError):
    """The checkpoint is not a state_dict of the seed's layer table; `differences` lists every mismatch found."""

    def __init__(self, source: str, differences: list[str]):
        self.differences = differences
        super().__init__(f"cannot convert {source}:\n" + "\n".join(f"  - {d}" for d in differences))


@dataclass
class Layer:
    """One module's tensors in a state_dict: `prefix` is its key without the suffix, `kind` conv/batchnorm/linear."""

    prefix: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if "running_mean" in self.tensors or "running_var" in self.tensors:
            return "batchnorm"
        weight = self.tensors.get("weight")
        dims = None if weight is None else weight.dim()
        return {4: "conv", 2: "linear"}.get(dims, f"unknown ({dims}-d weight)" if dims else "unknown (no weight)")

    def signature(self) -> tuple:
        """The (suffix, shape) pairs a layer of its kind must match; an optional num_batches_tracked is left out."""
        return tuple((s, tuple(t.shape)) for s, t in self.tensors.items() if s != "num_batches_tracked")

    def describe(self) -> str:
        shapes = ", ".join(f"{s} {_shape(t)}" for s, t in self.tensors.items() if s != "num_batches_tracked")
        return f"`{self.prefix}` ({shapes})"


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"


def _natural_key(key: str) -> list:
    """Sort key putting "features.10.weight" after "features.4.weight" (module order for Sequential indices)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a .pth/.pt file (read with `weights_only=True`) or a safetensors file, in module order."""
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        try:
            tensors = load_file(path)
        except SafetensorError as error:  # truncated or corrupted
            raise ConversionError(str(path), [f"not a readable safetensors file ({error})"]) from error
        # safetensors stores keys sorted by name; numbered names (Sequential indices) still sort into module order
        return {k: tensors[k] for k in sorted(tensors, key=_natural_key)}
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, KeyError, ValueError) as error:  # what the unpickler makes of an empty or corrupted file
        raise ConversionError(str(path), [
            f"not a torch.save file: empty, truncated or corrupted ({type(error).__name__}: {error})",
        ]) from error  # fmt: skip
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConversionError(str(path), [
            f"not a plain state_dict: torch.load(weights_only=True) refused it ({reason}). If it is a whole pickled "
            "model, load it with the seed's code and save `model.state_dict()` instead",
        ]) from error  # fmt: skip
    if isinstance(loaded, dict) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        nested = [k for k in WRAPPER_KEYS if isinstance(loaded.get(k), dict)]
        if nested:
            loaded = loaded[nested[0]]
    if not isinstance(loaded, dict) or not loaded:
        raise ConversionError(str(path), [f"expected a state_dict (a dict of tensors), found {type(loaded).__name__}"])
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(str(path), [f"entries that are not tensors: {', '.join(map(str, not_tensors[:10]))}"])
    return dict(loaded)


def group_layers(state_dict: dict[str, torch.Tensor], differences: list[str]) -> list[Layer]:
    """Group tensors into layers by key prefix, in the state_dict's order; keys without a standard suffix are noted
    in `differences`."""
    layers: dict[str, Layer] = {}
    for key, tensor in state_dict.items():
        prefix, _, suffix = key.rpartition(".")
        if suffix not in SUFFIXES:
            differences.append(f"`{key}` {_shape(tensor)}: not a {'/'.join(SUFFIXES)} tensor of a known layer")
            continue
        layers.setdefault(prefix, Layer(prefix)).tensors[suffix] = tensor
    for layer in layers.values():  # one suffix order for all (safetensors files list "bias" before "weight")
        layer.tensors = {s: layer.tensors[s] for s in SUFFIXES if s in layer.tensors}
    return list(layers.values())


def match_layers(source: list[Layer], target: list[Layer], differences: list[str]) -> list[tuple[Layer, Layer]]:
    """Pair the checkpoint's layers with the model's, kind by kind: in module order, or by shape when the order
    differs but the shapes still pair up one to one. Every mismatch goes to `differences`."""
    pairs: list[tuple[Layer, Layer]] = []
    kinds = dict.fromkeys([layer.kind for layer in target] + [layer.kind for layer in source])
    for kind in kinds:
        src = [layer for layer in source if layer.kind == kind]
        tgt = [layer for layer in target if layer.kind == kind]
        if kind not in REQUIRED:
            differences.extend(f"{layer.describe()}: not a conv, BatchNorm or linear layer" for layer in src)
            continue
        if len(src) != len(tgt):
            found, expected = "; ".join(s.describe() for s in src), "; ".join(t.describe() for t in tgt)
            differences.append(
                f"{len(src)} {kind} layer(s) in the checkpoint, the seed's table has {len(tgt)}: "
                f"checkpoint [{found}], expected [{expected}]"
            )
            continue
        ordered = list(zip(src, tgt))
        if any(s.signature() != t.signature() for s, t in ordered):
            by_shape = _pair_by_signature(src, tgt)
            if by_shape is None:
                for number, (s, t) in enumerate(ordered, 1):
                    if s.signature() != t.signature():
                        differences.append(f"{kind} layer {number}: checkpoint {s.describe()}, expected {t.describe()}")
                continue
            ordered = by_shape
        for s, _ in ordered:
            for suffix, tensor in s.tensors.items():
                if suffix != "num_batches_tracked" and not tensor.is_floating_point():
                    differences.append(f"`{s.prefix}.{suffix}` has dtype {tensor.dtype}, expected a float tensor")
        pairs.extend(ordered)
    return pairs


def _pair_by_signature(src: list[Layer], tgt: list[Layer]) -> list[tuple[Layer, Layer]] | None:
    """Each target layer with the first unused source layer of the same shapes, or None if one has no match."""
    unused = list(src)
    pairs = []
    for t in tgt:
        match = next((s for s in unused if s.signature() == t.signature()), None)
        if match is None:
            return None
        unused.remove(match)
        pairs.append((match, t))
    return pairs


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[mv.MiniVisionForImageClassification, dict[str, str]]:
    """The seed's state_dict as a MiniVisionForImageClassification (eval mode) and the key mapping {ours: theirs}.

    Raises ConversionError listing every difference from the seed card's layer table."""
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())  # the config's defaults are the card's table
    differences: list[str] = []
    source_layers = group_layers(state_dict, differences)
    target_layers = group_layers(model.state_dict(), [])
    pairs = match_layers(source_layers, target_layers, differences)
    if differences:
        raise ConversionError(source, differences)
    new_state, mapping = model.state_dict(), {}
    for s, t in pairs:
        for suffix, tensor in s.tensors.items():
            key = f"{t.prefix}.{suffix}"
            new_state[key] = tensor.to(new_state[key].dtype).clone()
            mapping[key] = f"{s.prefix}.{suffix}" if s.prefix else suffix
    model.load_state_dict(new_state, strict=True)
    return model.eval(), {key: mapping[key] for key in new_state if key in mapping}  # in the model's order


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_head() -> str | None:
    """This checkout's HEAD commit, or None. (minivision_hf.training.git_commit needs the `train` extra; this
    script needs only the core install.)"""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return head.stdout.strip() or None


def render_card(
    command: str,
    checkpoint: Path,
    digest: str,
    mapping: dict[str, str],
    output: Path,
    parameters: int,
    evaluation: dict | None,
) -> str:
    """The converted folder's README.md: where the weights came from, how they were mapped, and how to load them."""
    data = ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "mnist", "custom_code", "converted"],
        datasets=["ylecun/mnist"],
    )
    commit = git_head()
    rows = "\n".join(f"| `{ours}` | `{theirs}` |" for ours, theirs in mapping.items())
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        "# Mini-Vision-V2, converted from the original checkpoint",
        "",
        f"Converted from `{checkpoint.name}` (sha256 `{digest}`) by "
        f"`{command}` of minivision-hf "
        f"{mv.__version__} (commit {commit[:10] if commit else 'unknown'}) on "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"with torch {torch.__version__} and transformers {transformers.__version__}.",
        "",
        "The architecture is the layer table of the original Mini-Vision-V2 card: two Conv(3x3) -> ReLU -> MaxPool(2) "
        "-> BatchNorm blocks (1 -> 32 -> 64 channels), then Linear(3136, 256) -> ReLU -> Dropout(0.3) -> "
        f"Linear(256, 10), {parameters:,} parameters. Inputs are 28x28 grayscale digits normalised with MNIST's mean "
        "0.1307 and std 0.3081; the image processor saved here brings any image to that form.",
        "",
    ]
    if evaluation:
        lines += [
            f"Evaluated on `{evaluation['dataset']}` ({evaluation['split']}, {evaluation['num_samples']:,} images): "
            f"accuracy **{evaluation['accuracy']:.2%}**, loss {evaluation['loss']:.4f}.",
            "",
        ]
    lines += [
        "```python",
        "from transformers import AutoModelForImageClassification, pipeline",
        "",
        f'model = AutoModelForImageClassification.from_pretrained("{output}", trust_remote_code=True)',
        f'clf = pipeline("image-classification", model="{output}", trust_remote_code=True)',
        "```",
        "",
        "## Key mapping (this model <- original state_dict)",
        "",
        "| this model | original |",
        "|---|---|",
        rows,
        "",
    ]
    return "\n".join(lines)


def write_atomically(output: Path, fill, overwrite: bool) -> None:
    """Write a folder with `fill(folder)` into a temporary folder beside `output`, then rename it into place, so that
    `output` is never seen half-written; an existing `output` is replaced only with `overwrite`."""
    output = output.resolve()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a model folder is an ordinary folder
        fill(tmp)
        for file in tmp.rglob("*"):  # some writers (safetensors via a temp file) leave 0600 files
            if file.is_file():
                file.chmod(0o666 & ~umask)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.rename(output, old / output.name)
            os.rename(tmp, output)
            shutil.rmtree(old)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def evaluate_folder(folder: Path, dataset: str, split: str, max_samples: int | None, batch_size: int) -> dict:
    """scripts/eval_model.py's evaluation of the written folder (needs the `train` extra: datasets, evaluate)."""
    with explain_missing_extra():
        from minivision_hf.data import load_mnist
        from scripts.eval_model import evaluate_model

    model = mv.MiniVisionForImageClassification.from_pretrained(folder)
    processor = mv.MiniVisionImageProcessor.from_pretrained(folder)
    result = evaluate_model(model, processor, load_mnist(dataset, split, max_samples), batch_size, progress=False)
    return {**result, "dataset": str(dataset), "split": split}


def output_problem(output: Path, checkpoint: Path) -> str | None:
    """Why `output` cannot be the folder written (and with --overwrite replaced whole, old contents deleted), or None.
    (minivision_hf.training.replaced_folder refuses the same, but needs the `train` extra.)"""
    folder, repo = output.expanduser().resolve(), Path(__file__).resolve().parents[1]
    inputs = {"the checkpoint": checkpoint.resolve(), "the working folder": Path.cwd().resolve()}
    for what, path in {**inputs, "the repository": repo}.items():
        if folder == path or folder in path.parents:
            return f"is {what} or holds it ({path}): it would be replaced; give a folder of its own"
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    existing = next(q for q in folder.parents if q.exists())  # where the temporary folder is made
    if not existing.is_dir():
        return f"lies under {existing}, a file"
    if not os.access(existing, os.W_OK):
        return f"cannot be written: {existing} is not writable"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the seed's state_dict: .pth/.pt (torch.save) or .safetensors")
    p.add_argument("--output", type=Path, required=True, help="folder to write (must not exist, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    p.add_argument("--dataset", default=None, help="evaluate the converted model on this MNIST (Hub id or folder)")
    p.add_argument("--split", default="test", help="split for --dataset")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate on the first N rows only")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    args = p.parse_args(argv)  # checked here, not with minivision_hf.training's types: this script needs only the core
    if not args.checkpoint.is_file():
        p.error(f"no such file: {args.checkpoint}")
    problem = output_problem(args.output, args.checkpoint)
    if problem:
        p.error(f"argument --output: {args.output} {problem}")
    for flag, value in (("--max-samples", args.max_samples), ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            p.error(f"argument {flag}: must be a positive int, got {value}")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        model, mapping = convert_state_dict(load_checkpoint(args.checkpoint), str(args.checkpoint))
    except ConversionError as error:
        raise SystemExit(str(error)) from None
    digest = sha256(args.checkpoint)
    probe = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(pixel_values=probe).logits

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        mv.MiniVisionImageProcessor().save_pretrained(folder)
        # What was written is what was converted: reload it and compare outputs before the folder goes in place.
        reloaded = mv.MiniVisionForImageClassification.from_pretrained(folder).eval()
        with torch.inference_mode():
            torch.testing.assert_close(reloaded(pixel_values=probe).logits, expected, rtol=0, atol=0)
        evaluation = None
        if args.dataset:
            evaluation = evaluate_folder(folder, args.dataset, args.split, args.max_samples, args.batch_size)
            print(f"{args.dataset} {args.split}: accuracy {evaluation['accuracy']:.4%}, loss {evaluation['loss']:.4f}")
        command = f"python -m scripts.convert_seed_checkpoint {args.checkpoint} --output {args.output}"
        if args.dataset:
            command += f" --dataset {args.dataset} --split {args.split}"
            command += f" --max-samples {args.max_samples}" if args.max_samples else ""
        card = render_card(command, args.checkpoint, digest, mapping, args.output, model.num_parameters(), evaluation)
        (folder / "README.md").write_text(card)

    try:
        write_atomically(args.output, fill, args.overwrite)
    except FileExistsError as error:
        raise SystemExit(str(error)) from None
    print(f"converted {args.checkpoint} ({len(mapping)} tensors) -> {args.output}")
    return args.output


if __name__ == "__main__":
    main()
