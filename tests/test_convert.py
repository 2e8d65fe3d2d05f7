"""scripts/convert_seed_checkpoint.py: seed-style modules written from the card's layer table under several naming
schemes convert to a model with the same logits; other architectures are refused with what differs; the written
folder is complete (loads in-package and as remote code) and written atomically."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf as mv
from scripts import convert_seed_checkpoint as convert
from tests.conftest import REPO_ROOT, run_fresh

EXAMPLE = REPO_ROOT / "spaces_app" / "examples" / "drawn_test0001_label2_black_on_white_offcentre.png"

# ---- the seed's model.py, as its card's layer table describes it, written three ways -------------------------------
# Conv Block: Conv2d(3, s1, p1) -> ReLU -> MaxPool(2) -> BatchNorm; Flatten (3136); Linear(3136, 256) -> ReLU ->
# Dropout(0.3) -> Linear(256, 10).


def seed_sequential(conv2_out: int = 64, hidden: int = 256) -> nn.Module:
    """One flat nn.Sequential: keys "0.weight", "3.running_mean", "9.weight", ..."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(32),
        nn.Conv2d(32, conv2_out, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(conv2_out),
        nn.Flatten(), nn.Linear(conv2_out * 49, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 10),
    )  # fmt: skip


class SeedNamed(nn.Module):
    """Named attributes, registered in an order that is not the forward order (BatchNorms and fc2 first)."""

    def __init__(self):
        super().__init__()
        self.bn2 = nn.BatchNorm2d(64)
        self.bn1 = nn.BatchNorm2d(32)
        self.fc2 = nn.Linear(256, 10)
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(3136, 256)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2))
        x = self.bn2(nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2))
        x = x.view(x.size(0), -1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class SeedBlocks(nn.Module):
    """Blocks as nn.Sequential attributes and a classifier Sequential: keys "layer1.0.weight", "fc.1.weight", ..."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(32))
        self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(64))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3136, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(x)))


def trained_like(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics far from their defaults (as after training), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(9400)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return module.eval()


def seed_inputs() -> torch.Tensor:
    """Raw normalised pixel values, as the seed fed its network (MNIST-like: mostly background, some ink)."""
    generator = torch.Generator().manual_seed(1)
    ink = (torch.rand(6, 1, 28, 28, generator=generator) > 0.8).float()
    return (ink - mv.MNIST_MEAN) / mv.MNIST_STD


SCHEMES = {
    "sequential_indices": lambda: seed_sequential(),
    "named_attributes": SeedNamed,
    "dataparallel_prefix": lambda: nn.DataParallel(SeedBlocks()),  # keys "module.layer1.0.weight", ...
}


def write_checkpoint(module: nn.Module, path, fmt: str) -> None:
    state = module.state_dict()
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_converted_model_gives_the_seed_modules_logits(tmp_path, scheme, fmt):
    seed = trained_like(SCHEMES[scheme]())
    checkpoint = tmp_path / f"Mini-Vision-V2.{fmt}"
    write_checkpoint(seed, checkpoint, fmt)
    out = convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert isinstance(model, mv.MiniVisionForImageClassification)
    pixel_values = seed_inputs()
    original = getattr(seed, "module", seed)  # DataParallel only names the keys (its forward wants GPU parameters)
    with torch.inference_mode():
        expected = original(pixel_values)
        torch.testing.assert_close(model(pixel_values=pixel_values).logits, expected, rtol=1e-5, atol=1e-5)
    # the BatchNorm statistics came along too (the logits would differ otherwise, but say it directly)
    assert model.minivision.blocks[1].norm.num_batches_tracked.item() == 9400


def test_folder_is_complete_and_says_where_it_came_from(tmp_path):
    checkpoint = tmp_path / "Mini-Vision-V2.pth"
    write_checkpoint(trained_like(SeedNamed()), checkpoint, "pth")
    out = convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "configuration_minivision.py",
            "modeling_minivision.py", "image_processing_minivision.py"} <= names  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    card = (out / "README.md").read_text()
    assert convert.sha256(checkpoint) in card and "Mini-Vision-V2.pth" in card
    assert "| `minivision.blocks.0.conv.weight` | `conv1.weight` |" in card
    assert "library_name: transformers" in card
    processor = AutoImageProcessor.from_pretrained(out)
    assert isinstance(processor, mv.MiniVisionImageProcessor)
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"]


@pytest.mark.slow
def test_written_folder_loads_as_remote_code(tmp_path):
    seed = trained_like(seed_sequential())
    checkpoint = tmp_path / "seed.pth"
    write_checkpoint(seed, checkpoint, "pth")
    out = convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])
    pixel_values = seed_inputs()
    with torch.inference_mode():
        torch.save({"pixel_values": pixel_values, "logits": seed(pixel_values)}, tmp_path / "expected.pt")
    result = run_fresh(f"""
        import json, torch
        from transformers import AutoModelForImageClassification, pipeline
        from PIL import Image
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForImageClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        with torch.inference_mode():
            diff = (model(pixel_values=expected["pixel_values"]).logits - expected["logits"]).abs().max().item()
        clf = pipeline("image-classification", model={str(out)!r}, trust_remote_code=True)
        top = clf(Image.open({str(EXAMPLE)!r}), top_k=3)
        print(json.dumps({{"module": type(model).__module__, "diff": diff, "top": len(top)}}))
    """, cwd=tmp_path)  # fmt: skip
    assert result["module"].startswith("transformers_modules"), "loaded the installed package, not the remote code"
    assert result["diff"] < 1e-5
    assert result["top"] >= 1


def refusal(tmp_path, module_or_state, name: str = "bad.pth") -> str:
    checkpoint = tmp_path / name
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit) as excinfo:
        convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])
    assert not (tmp_path / "converted").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    return str(excinfo.value)


def test_wrong_width_is_refused_naming_the_layer_and_shapes(tmp_path):
    message = refusal(tmp_path, seed_sequential(conv2_out=128))
    assert "conv layer 2: checkpoint `4` (weight (128, 32, 3, 3), bias (128)), expected" in message
    assert "weight (64, 32, 3, 3)" in message
    assert "batchnorm layer 2" in message and "linear layer 1" in message  # every difference is listed


def test_wrong_hidden_size_is_refused(tmp_path):
    message = refusal(tmp_path, seed_sequential(hidden=128))
    assert "linear layer 1: checkpoint `9` (weight (128, 3136), bias (128))" in message
    assert "expected `classifier.0` (weight (256, 3136), bias (256))" in message


def test_extra_layer_and_unknown_tensors_are_refused(tmp_path):
    state = seed_sequential().state_dict()
    state["extra.weight"] = torch.zeros(10, 10)
    state["0.scale"] = torch.ones(1)
    message = refusal(tmp_path, state)
    assert "3 linear layer(s) in the checkpoint, the seed's table has 2" in message
    assert "`0.scale` (1): not a" in message


def test_missing_bias_and_other_layer_kinds_are_refused(tmp_path):
    model = seed_sequential()
    model[0] = nn.Conv2d(1, 32, 3, 1, 1, bias=False)
    model[3] = nn.LayerNorm([32, 14, 14])
    message = refusal(tmp_path, model)
    assert "conv layer 1: checkpoint `0` (weight (32, 1, 3, 3)), expected" in message
    assert "`3` (weight (32, 14, 14), bias (32, 14, 14)): not a conv, BatchNorm or linear layer" in message


def test_pickled_module_is_refused_without_running_it(tmp_path):
    checkpoint = tmp_path / "whole_model.pth"
    torch.save(SeedBlocks(), checkpoint)  # a whole pickled module: weights_only=True must not unpickle it
    with pytest.raises(SystemExit, match="not a plain state_dict: torch.load\\(weights_only=True\\) refused it"):
        convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path):
    seed = trained_like(SeedBlocks())
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"epoch": 40, "model_state_dict": seed.state_dict(), "optimizer": {"lr": 0.01}}, checkpoint)
    model = AutoModelForImageClassification.from_pretrained(
        convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])
    ).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values=seed_inputs()).logits, seed(seed_inputs()))


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    first, second = trained_like(SeedBlocks(), seed=0), trained_like(SeedBlocks(), seed=1)
    write_checkpoint(first, tmp_path / "a.pth", "pth")
    write_checkpoint(second, tmp_path / "b.pth", "pth")
    out = tmp_path / "converted"
    convert.main([str(tmp_path / "a.pth"), "--output", str(out)])
    with pytest.raises(SystemExit, match="already exists"):
        convert.main([str(tmp_path / "b.pth"), "--output", str(out)])
    convert.main([str(tmp_path / "b.pth"), "--output", str(out), "--overwrite"])
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values=seed_inputs()).logits, second(seed_inputs()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth", "converted"]


def test_dataset_evaluates_the_converted_model(tmp_path, tiny_dir):
    write_checkpoint(trained_like(SeedNamed()), tmp_path / "seed.pth", "pth")
    out = convert.main([str(tmp_path / "seed.pth"), "--output", str(tmp_path / "converted"),
                        "--dataset", str(tiny_dir), "--max-samples", "64"])  # fmt: skip
    assert "Evaluated on" in (out / "README.md").read_text() and "64 images" in (out / "README.md").read_text()


@pytest.mark.slow
def test_command_line_refusal_exits_nonzero_with_the_differences(tmp_path):
    torch.save(seed_sequential(conv2_out=128).state_dict(), tmp_path / "bad.pth")
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.convert_seed_checkpoint", str(tmp_path / "bad.pth"), "--output",
         str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot convert" in proc.stderr and "conv layer 2" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint at all", b"\x10" + b"\x00" * 7 + b"{not json"])
def test_empty_or_corrupted_file_is_refused_in_one_line(tmp_path, content):
    """An empty or corrupted .pth (EOFError, KeyError from the unpickler) or .safetensors file ended in a traceback."""
    checkpoint = tmp_path / ("seed.safetensors" if content.startswith(b"\x10") else "seed.pth")
    checkpoint.write_bytes(content)
    with pytest.raises(SystemExit, match="cannot convert .*\n  - not a (torch.save file|readable safetensors file)"):
        convert.main([str(checkpoint), "--output", str(tmp_path / "converted")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]


def test_output_that_would_replace_the_checkpoint_or_a_file_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """--overwrite replaced whatever --output named: the checkpoint itself, the folder holding it (both deleted with
    the old contents), the working folder, a plain file."""
    (tmp_path / "in").mkdir()
    checkpoint = tmp_path / "in" / "seed.pth"
    write_checkpoint(trained_like(SeedBlocks()), checkpoint, "pth")
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    for output, message in ((checkpoint, "is the checkpoint"), (tmp_path / "in", "is the checkpoint or holds it"),
                            (tmp_path, "or holds it"), (".", "or holds it"),
                            (REPO_ROOT, "is the repository"), (tmp_path / "notes.txt", "is a file, not a folder"),
                            (tmp_path / "notes.txt" / "out", "lies under")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            convert.main([str(checkpoint), "--output", str(output), "--overwrite"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, output
    assert checkpoint.is_file() and (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt"]
