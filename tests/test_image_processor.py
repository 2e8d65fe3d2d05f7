"""MiniVisionImageProcessor: every input kind, the MNIST protocol, blank / corrupt / huge inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor

import minivision_hf as mv
from minivision_hf.image_processing_minivision import MNIST_MEAN, MNIST_STD

BACKGROUND = (0 - MNIST_MEAN) / MNIST_STD


@pytest.fixture(scope="module")
def processor():
    return mv.MiniVisionImageProcessor()


def unnormalize(pixel_values: torch.Tensor) -> torch.Tensor:
    return pixel_values * MNIST_STD + MNIST_MEAN


def center_of_mass(image: torch.Tensor) -> tuple[float, float]:
    image = image.squeeze()
    total = image.sum()
    ys = (image.sum(1) * torch.arange(image.shape[0])).sum() / total
    xs = (image.sum(0) * torch.arange(image.shape[1])).sum() / total
    return float(ys), float(xs)


def ink_box(image: torch.Tensor, threshold: float = 0.1) -> tuple[int, int]:
    mask = image.squeeze() > threshold
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def draw_seven(size: int, ink, background, mode: str = "RGB", offset=(0, 0), width: int | None = None) -> Image.Image:
    """A '7' drawn with thick strokes, as a person would on a canvas of `size` pixels."""
    image = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(image)
    s, (dx, dy) = size / 10, offset
    width = width or max(2, size // 25)
    draw.line([(3 * s + dx, 2 * s + dy), (7 * s + dx, 2 * s + dy), (4.5 * s + dx, 8 * s + dy)], fill=ink, width=width)
    return image


def assert_mnist_like(pixel_values: torch.Tensor):
    assert pixel_values.shape == (1, 1, 28, 28) and pixel_values.dtype == torch.float32
    image = unnormalize(pixel_values[0, 0])
    assert torch.isfinite(image).all()
    assert image.min() >= -1e-5 and image.max() <= 1 + 1e-5
    assert abs(image.max().item() - 1.0) < 1e-4, "ink is stretched to full white"
    border = torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])
    assert border.median() == 0 and border.mean() < 0.05, "background is black"
    assert (image > 0.5).float().mean() < 0.4, "white ink on black, not the reverse"
    cy, cx = center_of_mass(image)
    assert abs(cy - 14) <= 1.0 and abs(cx - 14) <= 1.0, f"centre of mass {(cy, cx)} not near (14, 14)"
    assert max(ink_box(image)) in (19, 20, 21), "fitted into a 20x20 box"
    return image


def test_mnist_images_pass_through_exactly(processor, tiny_test):
    images = tiny_test[:32]["image"]
    out = processor(images, return_tensors="pt")["pixel_values"]
    raw = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.uint8)) for im in images])[:, None]
    assert torch.equal(out, mv.to_pixel_values(raw))


@pytest.mark.parametrize(
    "name, image",
    [
        ("black ink on transparent RGBA", draw_seven(400, (0, 0, 0, 255), (0, 0, 0, 0), "RGBA")),
        ("black ink on transparent white RGBA", draw_seven(400, (0, 0, 0, 255), (255, 255, 255, 0), "RGBA")),
        ("white ink on transparent RGBA", draw_seven(400, (255, 255, 255, 255), (0, 0, 0, 0), "RGBA")),
        ("black on white RGB", draw_seven(300, (0, 0, 0), (255, 255, 255))),
        ("white on black L", draw_seven(280, 255, 0, "L")),
        ("blue pen on grey paper", draw_seven(300, (20, 30, 160), (200, 200, 190))),
        ("off-centre on 512x512", draw_seven(512, (0, 0, 0), (255, 255, 255), offset=(-150, 120), width=14)),
        ("LA", draw_seven(200, (0, 255), (0, 0), "LA")),
        ("CMYK", draw_seven(200, (0, 0, 0, 255), (0, 0, 0, 0), "CMYK")),
        ("1-bit", draw_seven(200, 0, 1, "1")),
    ],
)
def test_drawings_become_mnist_like(processor, name, image):
    assert_mnist_like(processor(image, return_tensors="pt")["pixel_values"])


def test_palette_with_transparency(processor):
    rgba = draw_seven(200, (0, 0, 0, 255), (0, 0, 0, 0), "RGBA")
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert_mnist_like(processor(palette)["pixel_values"])


def test_sixteen_bit_and_float_modes(processor):
    eight_bit = np.asarray(draw_seven(200, 255, 0, "L"), dtype=np.uint16)
    sixteen = Image.fromarray(eight_bit * 257)  # I;16
    assert sixteen.mode.startswith("I;16")
    a = assert_mnist_like(processor(sixteen)["pixel_values"])
    b = assert_mnist_like(processor(Image.fromarray(eight_bit.astype(np.float32) / 255.0, mode="F"))["pixel_values"])
    assert torch.allclose(a, b, atol=1e-3)


def test_arrays_and_tensors_match_pil(processor):
    pil = draw_seven(300, (0, 0, 0), (255, 255, 255))
    reference = processor(pil)["pixel_values"]
    hwc = np.asarray(pil)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    gray = np.asarray(pil.convert("L"))
    for image in (hwc, chw, chw.float() / 255, gray, torch.from_numpy(gray)):
        assert torch.allclose(processor(image)["pixel_values"], reference, atol=2e-2)


def test_batches(processor, tiny_test):
    digits = [np.asarray(im) for im in tiny_test[:6]["image"]]
    stacked = np.stack(digits)  # (B, 28, 28) with B > 4: a batch of grayscale images
    assert processor(stacked)["pixel_values"].shape == (6, 1, 28, 28)
    as_tensor = torch.from_numpy(stacked)[:, None]  # (B, 1, 28, 28): always a batch
    assert torch.equal(processor(as_tensor)["pixel_values"], processor(stacked)["pixel_values"])
    mixed = [digits[0], Image.fromarray(digits[1]), draw_seven(300, (0, 0, 0), (255, 255, 255))]
    assert processor(mixed)["pixel_values"].shape == (3, 1, 28, 28)


def test_blank_images_give_the_documented_background(processor):
    blanks = [Image.new("RGBA", (400, 400)), Image.new("L", (300, 300), 255), Image.new("RGB", (28, 28)),
              np.zeros((50, 60), dtype=np.uint8), torch.full((1, 64, 64), 0.5)]  # fmt: skip
    out = processor(blanks)["pixel_values"]
    assert out.shape == (5, 1, 28, 28)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, BACKGROUND))
    assert processor.has_ink(blanks) == [False] * 5
    assert processor.has_ink([draw_seven(100, 0, 255, "L")]) == [True]


def test_corrupt_and_huge_inputs_raise_clear_errors(processor, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="could not decode"):
        processor(b"\x89PNG\r\n\x1a\n not really a png")
    path = tmp_path / "broken.png"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not decode"):
        processor(str(path))
    with pytest.raises(ValueError, match="max_pixels"):
        processor(np.zeros((200, 200), dtype=np.uint8), max_pixels=10_000)
    buffer = io.BytesIO()
    Image.new("L", (300, 300)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="max_pixels"):  # refused from the header, before decoding
        mv.MiniVisionImageProcessor(max_pixels=10_000)(buffer.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's own decompression-bomb limit
    with pytest.raises(ValueError, match="refused"):
        processor(buffer.getvalue())
    with pytest.raises(ValueError, match="NaN"):
        processor(np.full((20, 20), np.nan, dtype=np.float32))
    with pytest.raises(TypeError, match="unsupported image type"):
        processor(42)


def test_reads_files_and_bytes(processor, tmp_path):
    image = draw_seven(300, (0, 0, 0), (255, 255, 255))
    path = tmp_path / "seven.png"
    image.save(path)
    reference = processor(image)["pixel_values"]
    assert torch.equal(processor(str(path))["pixel_values"], reference)
    assert torch.equal(processor(path.read_bytes())["pixel_values"], reference)


def test_upscaled_mnist_digit_comes_back(processor, tiny_test):
    """A real MNIST digit drawn big, dark on light, off-centre, comes back close to the original."""
    digit = tiny_test[0]["image"]
    big = Image.new("L", (600, 600), 255)
    big.paste(Image.eval(digit.resize((280, 280), Image.BICUBIC), lambda v: 255 - v), (40, 250))
    recovered = unnormalize(processor(big)["pixel_values"][0, 0])
    original = torch.from_numpy(np.asarray(digit, dtype=np.float32) / 255)
    corr = torch.corrcoef(torch.stack([recovered.flatten(), original.flatten()]))[0, 1]
    assert corr > 0.85, f"correlation {corr:.3f}"


def test_options_are_saved_and_validated(tmp_path):
    processor = mv.MiniVisionImageProcessor(invert="never", fit_size=18, ink_threshold=0.2)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, mv.MiniVisionImageProcessor)
    assert (loaded.invert, loaded.fit_size, loaded.ink_threshold) == ("never", 18, 0.2)
    with pytest.raises(ValueError, match="invert"):
        mv.MiniVisionImageProcessor(invert="sometimes")
    with pytest.raises(ValueError, match="fit_size"):
        mv.MiniVisionImageProcessor(fit_size=40)
