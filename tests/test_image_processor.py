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
    opaque = [im.convert(mode) for im in images[:8] for mode in ("RGBA", "LA")]  # a fully opaque alpha changes nothing
    assert torch.equal(processor(opaque)["pixel_values"], mv.to_pixel_values(raw[:8].repeat_interleave(2, 0)))


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
    quantized = rgba.quantize()  # the alpha lives in the RGBA palette, not in the info
    assert quantized.mode == "P" and "transparency" not in quantized.info
    assert_mnist_like(processor(quantized)["pixel_values"])


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
    for image in (hwc, gray, torch.from_numpy(gray), gray[None], torch.from_numpy(hwc)):
        assert torch.allclose(processor(image)["pixel_values"], reference, atol=2e-2)
    for image in (chw, chw.float() / 255, chw.numpy()):  # (3, H, W) also reads as 3 grayscale images: say which
        out = processor(image, input_data_format="channels_first")["pixel_values"]
        assert torch.allclose(out, reference, atol=2e-2)
    assert torch.allclose(processor(hwc, input_data_format="channels_last")["pixel_values"], reference, atol=2e-2)


def test_batches(processor, tiny_test):
    digits = [np.asarray(im) for im in tiny_test[:6]["image"]]
    one_by_one = torch.cat([processor(d)["pixel_values"] for d in digits])
    nchw = np.stack(digits)[:, None]  # (B, 1, 28, 28): a batch
    assert torch.equal(processor(nchw)["pixel_values"], one_by_one)
    assert torch.equal(processor(torch.from_numpy(nchw))["pixel_values"], one_by_one)
    assert torch.equal(processor(np.stack(digits)[..., None])["pixel_values"], one_by_one)  # (B, 28, 28, 1)
    assert torch.equal(processor(digits)["pixel_values"], one_by_one)  # a list of 2-D arrays
    mixed = [digits[0], Image.fromarray(digits[1]), draw_seven(300, (0, 0, 0), (255, 255, 255))]
    assert processor(mixed)["pixel_values"].shape == (3, 1, 28, 28)
    rgb = [np.asarray(draw_seven(300, (0, 0, 0), (255, 255, 255))), np.asarray(draw_seven(300, 0, 255, "L"))]
    rgb[1] = np.repeat(rgb[1][..., None], 3, axis=-1)
    nhwc = np.stack(rgb)  # (2, 300, 300, 3)
    expected = torch.cat([processor(image)["pixel_values"] for image in rgb])
    assert torch.allclose(processor(nhwc)["pixel_values"], expected)
    assert torch.allclose(processor(torch.from_numpy(nhwc).permute(0, 3, 1, 2))["pixel_values"], expected)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_stack_of_two_to_four_digits_is_not_read_as_one_colour_image(processor, tiny_test, n):
    digits = [np.asarray(im) for im in tiny_test[:n]["image"]]
    stack = np.stack(digits)  # (n, 28, 28): n grayscale digits, or one n-channel image?
    for array in (stack, torch.from_numpy(stack)):
        with pytest.raises(ValueError, match=r"ambiguous.*input_data_format='channels_first'.*images\[:, None\]"):
            processor(array)
        with pytest.raises(ValueError, match="ambiguous"):
            processor.has_ink(array)
    assert processor(stack[:, None])["pixel_values"].shape == (n, 1, 28, 28)  # what the error says to pass
    assert processor(stack, input_data_format="channels_first")["pixel_values"].shape == (1, 1, 28, 28)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((28, 28, 5), "no channel axis"),  # one 5-channel image? not 28 slivers of 28x5
        ((6, 28, 28), r"no channel axis.*\(6, 1, 28, 28\)"),  # a stack without its channel axis
        ((2, 3, 10, 3), "ambiguous: channels could be first or last"),
        ((2, 7, 28, 28), "no channel axis"),
        ((28,), "2, 3 or 4 dimensions"),
    ],
)
def test_shapes_that_read_two_ways_or_none_are_refused(processor, shape, match):
    with pytest.raises(ValueError, match=match):
        processor(np.zeros(shape, dtype=np.uint8))


def test_input_data_format_resolves_and_is_checked(processor):
    image = np.zeros((2, 3, 10, 3), dtype=np.uint8)
    assert processor(image, input_data_format="channels_last")["pixel_values"].shape == (2, 1, 28, 28)
    assert processor(image, input_data_format="channels_first")["pixel_values"].shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="has 5 channels"):
        processor(np.zeros((28, 28, 5), dtype=np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match="input_data_format must be"):
        processor(np.zeros((28, 28, 3), dtype=np.uint8), input_data_format="hwc")


@pytest.mark.parametrize(
    "empty",
    [[], (), [[]], np.zeros((0, 28, 28, 1), dtype=np.uint8), torch.zeros(0, 1, 28, 28)],
    ids=["list", "tuple", "nested", "array", "tensor"],
)
def test_empty_batches_are_a_clear_value_error(processor, empty):
    with pytest.raises(ValueError, match="empty batch"):
        processor(empty)


def test_blank_images_give_the_documented_background(processor):
    blanks = [Image.new("RGBA", (400, 400)), Image.new("L", (300, 300), 255), Image.new("RGB", (28, 28)),
              np.zeros((50, 60), dtype=np.uint8), torch.full((1, 64, 64), 0.5)]  # fmt: skip
    out = processor(blanks)["pixel_values"]
    assert out.shape == (5, 1, 28, 28)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, BACKGROUND))
    assert processor.has_ink(blanks) == [False] * 5
    assert processor.has_ink([draw_seven(100, 0, 255, "L")]) == [True]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


def test_28x28_images_that_mnist_did_not_normalise_go_through_the_protocol(processor, tiny_test):
    """Only MNIST-normalised 28x28 images pass through; a small, faint, off-centre or slightly over-range one is
    cropped, stretched and centred like any other image, and comes back close to the digit it shows."""
    for item in tiny_test.select(range(8)):
        digit = np.asarray(item["image"])
        original = torch.from_numpy(digit / 255.0)
        corner = np.zeros((28, 28), np.uint8)
        corner[:14, :14] = np.asarray(item["image"].resize((14, 14), Image.BILINEAR))
        for name, image in [("small, in a corner", corner), ("faint", (digit * 0.25).astype(np.uint8)),
                            ("float in 0..1.02", digit / 255.0 * 1.02)]:  # fmt: skip
            out = assert_mnist_like(processor(image)["pixel_values"])
            assert correlation(out, original) > 0.7, name  # passed through as given: < 0.2 for the corner one


def test_a_transparent_margin_around_an_opaque_sheet_is_paper(processor, tiny_test):
    """An opaque sheet (paper and ink) inside a transparent margin: the margin continues the paper, whichever shade
    it is, instead of the whole sheet reading as one block of ink."""
    for item in tiny_test.select(range(8)):
        digit = np.asarray(item["image"])
        reference = processor(digit)["pixel_values"]
        for sheet in (255 - digit, digit):  # dark ink on white paper, white ink on black paper
            layer = np.zeros((48, 48, 4), np.uint8)
            layer[10:38, 10:38, :3], layer[10:38, 10:38, 3] = sheet[..., None], 255
            out = processor(Image.fromarray(layer, "RGBA"))["pixel_values"]
            assert correlation(out, reference) > 0.9


def test_strokes_with_a_semi_transparent_brush_are_ink(processor):
    seven = np.asarray(draw_seven(280, 255, 0, "L"))
    layer = np.zeros((280, 280, 4), np.uint8)
    layer[..., 3] = (seven * 0.4).astype(np.uint8)  # black ink at 40% opacity on a transparent layer
    assert processor.has_ink([Image.fromarray(layer, "RGBA")]) == [True]
    reference = processor(Image.fromarray(seven))["pixel_values"]
    assert correlation(processor(Image.fromarray(layer, "RGBA"))["pixel_values"], reference) > 0.95


def test_strokes_anti_aliased_against_a_matte_with_one_transparent_colour_are_ink(processor, tiny_test):
    """A GIF, or a PNG with one transparent colour: dark strokes whose anti-aliased fringe was blended into the white
    matte, which is the transparent colour. The fringe is opaque and contrasts with the ink as paper does, but it
    outlines the strokes: the transparent pixels are the matte's white, not the ink's black (that read an outline)."""
    hi = draw_seven(800, 0, 255, "L", width=64)
    strokes = hi.resize((200, 200), Image.LANCZOS)  # anti-aliased: a grey fringe around black strokes
    digits = [Image.fromarray(255 - np.asarray(item["image"])).resize((112, 112), Image.BICUBIC) for item in
              tiny_test.select(range(4))]  # fmt: skip
    for opaque in [strokes, *digits]:
        reference = processor(opaque)["pixel_values"]
        palette = opaque.convert("P")  # a grey palette: index 255 is white
        palette.info["transparency"] = 255
        rgba = np.asarray(opaque.convert("RGBA")).copy()
        rgba[..., 3] = np.where(rgba[..., 0] > 240, 0, 255)  # one-bit alpha, as a GIF export cuts it
        for layer in (palette, Image.fromarray(rgba, "RGBA")):
            assert correlation(assert_mnist_like(processor(layer)["pixel_values"]), reference) > 0.9


def test_a_sheet_with_a_dark_frame_on_a_transparent_layer_is_still_a_sheet():
    """A white sheet with a black digit and a dark 2-px frame (a border, a window's edge, a shadow), on a transparent
    margin: its outline contrasts with its paper as a matte's fringe does with ink, but a layer that fills its bounding
    box is a sheet, so the margin takes the paper's shade (the fringe rule made it black, the paper's opposite)."""
    from minivision_hf.image_processing_minivision import _alpha_background

    sheet = torch.from_numpy(np.asarray(draw_seven(160, 0, 255, "L"))).float() / 255
    sheet[:2], sheet[-2:], sheet[:, :2], sheet[:, -2:] = 0, 0, 0, 0
    gray, alpha = torch.zeros(240, 240), torch.zeros(240, 240)
    gray[40:200, 40:200], alpha[40:200, 40:200] = sheet, 1.0
    assert _alpha_background(gray, alpha) == 1.0


def test_one_overshooting_float_value_does_not_rescale_the_image_or_its_alpha(processor):
    gray = np.asarray(draw_seven(112, 255, 0, "L"), dtype=np.float32) / 255
    rgba = np.concatenate([np.repeat(gray[..., None], 3, -1), np.ones((112, 112, 1), np.float32)], -1)
    reference = processor(rgba)["pixel_values"]
    rgba[50, 50, 0] = 1.01  # a resampling overshoot
    assert torch.allclose(processor(rgba)["pixel_values"], reference, atol=0.05)
    assert processor.has_ink([rgba]) == [True]


def test_paper_noise_grey_shades_and_a_stray_speck_are_blank(processor):
    noise = np.clip(240 + np.random.default_rng(0).normal(0, 2, (400, 400)), 0, 255).astype(np.uint8)
    shades = np.full((400, 400), 250, np.uint8)
    shades[:200] = 245
    speck = np.full((400, 400), 255, np.uint8)
    speck[123, 77] = 0
    grey = np.full((28, 28), 80, np.uint8)
    dust = np.full((400, 400), 250, np.uint8)
    dust[10, 10] = dust[389, 389] = 0  # two specks far apart span the page, but are no stroke
    pages = [noise, shades, speck, grey, dust]
    assert processor.has_ink(pages) == [False] * 5
    out = processor(pages)["pixel_values"]
    assert torch.allclose(out, torch.full_like(out, BACKGROUND))


def test_small_digits_in_big_photos_and_deep_integer_data_are_ink(processor):
    photo = Image.new("L", (3000, 4000), 235)  # a 60-px "0" drawn with a 4-px pen in a phone photo
    ImageDraw.Draw(photo).ellipse([1480, 1970, 1520, 2030], outline=20, width=4)
    assert processor.has_ink([photo]) == [True]
    for bits in (10, 12, 16):
        deep = np.zeros((64, 64), np.uint16)
        deep[16:48, 28:36] = 2**bits - 1
        out = unnormalize(processor(deep)["pixel_values"][0, 0])
        assert processor.has_ink([deep]) == [True] and out.max() > 0.99, bits


def test_a_sheet_with_little_ink_and_transparent_corners_keeps_its_paper(processor):
    sheet = Image.new("RGBA", (400, 400), (250, 250, 250, 255))  # a thin "0": ink on ~1.4% of the sheet
    ImageDraw.Draw(sheet).ellipse([110, 110, 290, 290], outline=(0, 0, 0, 255), width=5)
    rotated = sheet.rotate(10, expand=True)  # transparent corners
    out = unnormalize(processor(rotated)["pixel_values"][0, 0])
    reference = unnormalize(processor(sheet.convert("L"))["pixel_values"][0, 0])
    assert (out > 0.5).float().mean() < 2 * (reference > 0.5).float().mean()  # a ring, not a white block
    thick = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # strokes alone, thick enough to fill most of their box
    ImageDraw.Draw(thick).line([(40, 30), (160, 30), (90, 180)], fill=(0, 0, 0, 255), width=45)
    assert processor.has_ink([thick]) == [True]
    assert_mnist_like(processor(thick)["pixel_values"])


def test_a_truncated_file_opened_by_the_caller_is_a_clear_value_error(processor, tmp_path):
    path = tmp_path / "seven.png"
    draw_seven(300, (0, 0, 0), (255, 255, 255)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with Image.open(path) as image, pytest.raises(ValueError, match="could not decode"):
        processor(image)


def test_an_image_whose_file_was_closed_before_decoding_is_a_clear_value_error(processor, tmp_path):
    """`with Image.open(path) as image: ...` ended before the pixels were read: Pillow failed on a bare assert."""
    path = tmp_path / "seven.png"
    draw_seven(300, (0, 0, 0), (255, 255, 255)).save(path)
    with Image.open(path) as image:
        pass
    with pytest.raises(ValueError, match="closed before its pixels were read"):
        processor(image)
    with Image.open(path) as image:
        image.load()
    assert_mnist_like(processor(image)["pixel_values"])  # read inside the block: usable after it


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


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_std", 0),  # NaN scores
        ("image_std", -0.3),
        ("image_std", "0.3081"),
        ("image_std", [0.3, 0.3, 0.3]),  # three channels' worth for a one-channel model
        ("image_std", [0.0]),
        ("image_mean", "0.1307"),
        ("image_mean", [0.1, 0.2]),
        ("max_pixels", 0),  # the bomb guard silently off
        ("max_pixels", -1),  # everything refused
        ("max_pixels", 1.5e6),
        ("max_pixels", True),
        ("fit_size", "20"),
        ("fit_size", -1),
        ("ink_threshold", 1.0),
        ("ink_threshold", "0.1"),
        ("do_normalize", "false"),  # a non-empty string is truthy
        ("mnist_passthrough", 1),
        ("flatten_alpha", "yes"),
        ("crop_to_ink", "NoneType"),
        ("center_of_mass", 0),
        ("invert", True),
        ("size", {"height": 0, "width": 28}),
        ("size", {"height": 28.5, "width": 28}),
    ],
)
def test_preprocessor_config_values_that_break_inference_fail_on_load(tmp_path, field, value):
    import json

    mv.MiniVisionImageProcessor().save_pretrained(tmp_path)
    config_file = tmp_path / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config[field] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        AutoImageProcessor.from_pretrained(tmp_path)


def test_call_time_overrides_are_validated_too(processor):
    image = draw_seven(100, 0, 255, "L")
    with pytest.raises(ValueError, match="image_std"):
        processor(image, image_std=0.0)
    with pytest.raises(ValueError, match="max_pixels"):
        processor(image, max_pixels=0)
    assert torch.isfinite(processor(image, image_std=[0.5])["pixel_values"]).all()  # a one-channel list is fine


def test_check_image_file_reads_the_header_only(processor, tmp_path):
    path = tmp_path / "seven.png"
    draw_seven(300, 0, 255, "L").save(path)
    assert processor.check_image_file(str(path)) == (300, 300)
    assert processor.check_image_file(path.read_bytes()) == (300, 300)
    with pytest.raises(ValueError, match="max_pixels"):
        mv.MiniVisionImageProcessor(max_pixels=10_000).check_image_file(str(path))
    with pytest.raises(ValueError, match="could not decode"):
        processor.check_image_file(b"not an image")


def test_exif_orientation_is_honoured_for_pil_images_and_files(processor, tmp_path):
    upright = draw_seven(300, (0, 0, 0), (255, 255, 255))
    reference = processor(upright)["pixel_values"]
    # A phone saves the pixels rotated and records how to turn them back: orientation 6 = rotate 90 degrees clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    stored.save(path, exif=exif, quality=95)
    from_file = processor(str(path))["pixel_values"]
    from_pil = processor(Image.open(path))["pixel_values"]
    assert torch.allclose(from_file, from_pil)
    assert (from_file - reference).abs().mean() < 0.05, "the JPEG comes back upright"


def test_premultiplied_alpha_and_lab_images(processor):
    """Pillow's premultiplied modes name their alpha band "a" (getchannel("A") failed), and LAB converts to no other
    mode (convert("L") failed): both read like the RGBA / RGB image they come from."""
    rgba = draw_seven(200, (0, 0, 0, 255), (0, 0, 0, 0), "RGBA")
    reference = processor(rgba)["pixel_values"]
    for image in (rgba.convert("RGBa"), rgba.convert("LA").convert("La")):
        assert torch.allclose(processor(image)["pixel_values"], reference, atol=1e-3), image.mode
    paper = draw_seven(200, (0, 0, 0), (255, 255, 255))
    assert torch.allclose(processor(paper.convert("LAB"))["pixel_values"], processor(paper)["pixel_values"], atol=0.05)


def test_normalised_and_minus_one_to_one_data_reads_as_the_digit(processor, tiny_test):
    """Data that went through a Normalize (MNIST's (x - 0.1307) / 0.3081: -0.42..2.82) or is in -1..1 is no 8-bit
    image (it read as 0..255, so nearly black: "blank"): its lowest value is black, its highest white."""
    digit = np.asarray(tiny_test[0]["image"])
    reference = processor(digit)["pixel_values"]
    normalised = (digit / 255.0 - MNIST_MEAN) / MNIST_STD
    for image in (normalised, torch.from_numpy(normalised).float()[None], digit / 127.5 - 1):
        assert processor.has_ink([image]) == [True]
        assert torch.allclose(processor(image)["pixel_values"], reference, atol=1e-5)
    paper = np.asarray(draw_seven(300, 0, 255, "L")) / 255.0  # black on white, normalised
    assert_mnist_like(processor((paper - MNIST_MEAN) / MNIST_STD)["pixel_values"])
    blank = np.full((28, 28), -MNIST_MEAN / MNIST_STD)  # a normalised black image
    assert processor.has_ink([blank]) == [False]
    wiggle = np.asarray(draw_seven(112, 255, 0, "L"), dtype=np.float32) / 255  # a resampling undershoot: unchanged
    before = processor(wiggle)["pixel_values"]
    wiggle[0, 0] = -0.02
    assert torch.equal(processor(wiggle)["pixel_values"], before)


def test_read_only_arrays_are_not_handed_to_torch(processor, tiny_test, monkeypatch):
    """`np.asarray(pil_image)` is read-only: torch.from_numpy over it warns (an error under `-W error`), once per
    process, so the check is on what reaches torch.from_numpy."""
    from_numpy = torch.from_numpy

    def checked(array):
        assert array.flags.writeable, "a read-only array reached torch.from_numpy"
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", checked)
    digit = np.asarray(tiny_test[0]["image"])
    assert not digit.flags.writeable
    out = processor([digit, np.broadcast_to(digit, (28, 28))])["pixel_values"]
    assert torch.equal(out, mv.to_pixel_values(from_numpy(digit.copy())[None, None].repeat(2, 1, 1, 1)))


def test_unusual_containers_are_read_or_refused_clearly(processor, tmp_path):
    """A sparse tensor is read (it crashed in torch's clamp); a meta tensor, a URL given to the processor (it said
    "No such file or directory") and a file object are refused saying what to do."""
    image = np.asarray(draw_seven(100, 255, 0, "L"))
    reference = processor(image)["pixel_values"]
    assert torch.equal(processor(torch.from_numpy(image.copy()).to_sparse())["pixel_values"], reference)
    with pytest.raises(ValueError, match="meta tensor"):
        processor(torch.empty(28, 28, device="meta"))
    with pytest.raises(ValueError, match="does not download URLs.*pipeline"):
        processor("https://example.com/seven.png")
    path = tmp_path / "seven.png"
    Image.fromarray(image).save(path)
    with open(path, "rb") as file, pytest.raises(TypeError, match="file paths or encoded bytes"):
        processor(file)


@pytest.mark.slow
def test_all_of_mnist_passes_through_exactly(processor, mnist_dir):
    """All 70,000 MNIST images (the real copy; skipped without it) come out of the processor exactly as they went in."""
    from minivision_hf.data import decode_to_uint8, load_mnist

    for split in ("train", "test"):
        images, _ = decode_to_uint8(load_mnist(str(mnist_dir), split))
        for start in range(0, len(images), 5000):
            chunk = images[start : start + 5000]
            out = processor(chunk, return_tensors="pt")["pixel_values"]
            assert torch.equal(out, mv.to_pixel_values(chunk)), f"{split} images {start}..{start + len(chunk)}"


def test_device_and_return_tensors_are_honoured(processor, tiny_test):
    """As transformers' processors: `device` puts the output there (the model's device, e.g. "cuda"; "meta" here,
    which needs no accelerator), `return_tensors` "pt" / None give tensors and "np" float32 arrays, same values."""
    digit = np.asarray(tiny_test[0]["image"])
    reference = processor(digit, return_tensors="pt")["pixel_values"]
    moved = processor(digit, return_tensors="pt", device="meta")["pixel_values"]
    assert moved.is_meta and moved.shape == reference.shape and moved.dtype == reference.dtype
    assert torch.equal(processor(digit, device="cpu")["pixel_values"], reference)
    assert torch.equal(processor(digit)["pixel_values"], reference)
    array = processor(digit, return_tensors="np")["pixel_values"]
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and np.array_equal(array, reference.numpy())
