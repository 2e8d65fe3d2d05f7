"""The Gradio demo (spaces_app/app.py): predict() on drawn-style digits, blank and corrupt input, and the live app
through gradio_client.

The app serves what spaces_app/app.py resolves (MINIVISION_MODEL, else model_source.json, else the release at the
repo root); the accuracy tests need trained weights there, e.g.

    MINIVISION_MODEL=outputs/quick .venv/bin/python -m pytest -q tests/test_app.py
"""

import os
import re
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import load_app

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_FILE = REPO_ROOT / "spaces_app" / "app.py"
EXAMPLES_DIR = REPO_ROOT / "spaces_app" / "examples"
N_DRAWN = 300  # drawn-style test digits; at >= 97% correct a model may miss at most 9
MIN_DRAWN_ACCURACY = 0.97


@pytest.fixture(scope="module")
def app():
    return load_app()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def top_label(result: dict[str, float]) -> str:
    return max(result, key=result.get)


def sketch(image) -> dict:
    """A Sketchpad value as gradio hands it to predict() (type="pil", no background image, one layer)."""
    return {"background": None, "layers": [image], "composite": image}


def example_files() -> list[tuple[Path, str]]:
    """spaces_app/examples/*.png with the label in their name (..._label7_...)."""
    files = sorted(EXAMPLES_DIR.glob("*.png"))
    return [(path, re.search(r"label(\d)", path.name).group(1)) for path in files]


def draw_like_a_person(digit: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit (28x28, white on black) rendered the ways people draw or upload one: a 280-800 px canvas, the
    digit large or small and off-centre, solid pen or anti-aliased, normal or thick strokes, as black ink on a
    transparent layer (gradio's RGBA Sketchpad), black on white, or white on black."""
    canvas = int(rng.integers(280, 801))
    box = int(canvas * rng.uniform(0.35, 0.95))  # the 28x28 frame; the ink fills ~20/28 of it
    ink = np.asarray(digit.resize((box, box), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    if rng.random() < 0.6:
        ink = (ink > 0.35).astype(np.float32)  # a solid pen stroke, as a sketchpad draws
    if rng.random() < 0.4:
        # A thicker pen: MNIST strokes are ~9% of the frame wide; grow them by ~2% of the frame on each side (~13%).
        k = 2 * max(1, round(0.02 * box)) + 1
        ink = F.max_pool2d(torch.from_numpy(ink)[None, None], k, stride=1, padding=k // 2)[0, 0].numpy()
    full = np.zeros((canvas, canvas), dtype=np.float32)
    top, left = (int(rng.integers(0, canvas - box + 1)) for _ in range(2))
    full[top : top + box, left : left + box] = ink
    ink8 = np.round(full * 255).astype(np.uint8)
    style = rng.choice(["transparent", "black_on_white", "white_on_black"], p=[0.5, 0.35, 0.15])
    if style == "transparent":
        rgba = np.zeros((canvas, canvas, 4), dtype=np.uint8)
        rgba[..., 3] = ink8  # black ink, alpha = coverage; RGB under alpha 0 is 0, as the canvas exports it
        return Image.fromarray(rgba, "RGBA")
    if style == "black_on_white":
        return Image.fromarray(255 - ink8, "L").convert("RGB")
    return Image.fromarray(ink8, "L")


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG that claims width x height pixels (with one tiny IDAT): a decompression bomb as Pillow sees it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


# ---- predict() ---------------------------------------------------------------------------------------------------


def test_blank_canvas_gives_the_blank_message(app):
    blank = {app.BLANK_LABEL: 1.0}
    assert app.predict(None) == blank
    assert app.predict({"background": None, "layers": [], "composite": None}) == blank
    assert app.predict_image(None) == blank
    empty_canvases = [
        Image.new("RGBA", (800, 800)),  # untouched RGBA sketchpad: all transparent
        Image.new("RGBA", (400, 400), (0, 0, 0, 255)),  # black paper, opaque
        Image.new("RGB", (400, 400), "white"),
        Image.new("L", (600, 300), 200),  # grey paper
        Image.new("L", (28, 28)),
    ]
    for canvas in empty_canvases:
        assert app.processor.has_ink(canvas) == [False]  # the app's own test agrees with the processor's
        assert app.predict(sketch(canvas)) == blank, canvas
        assert app.predict_image(canvas) == blank, canvas
    one_dot = Image.new("RGBA", (400, 400))
    one_dot.paste((0, 0, 0, 255), (200, 200, 215, 215))
    assert app.processor.has_ink(one_dot) == [True]
    assert app.BLANK_LABEL not in app.predict(sketch(one_dot))  # a dot is ink: some digit, however unsure


def test_result_is_a_distribution_over_the_digits(app):
    path, _ = example_files()[0]
    result = app.predict_image(Image.open(path))
    assert sorted(result) == [str(d) for d in range(10)]
    assert abs(sum(result.values()) - 1.0) < 1e-4


def test_corrupt_and_huge_uploads_raise_gr_error_and_the_app_recovers(app):
    import gradio as gr

    good = Image.open(EXAMPLES_DIR / "mnist_test0003_label0.png")
    before = app.predict_image(good)
    truncated_png = (EXAMPLES_DIR / "drawn_test0000_label7_black_on_transparent_corner.png").read_bytes()[:200]
    for bad in (b"definitely not an image", truncated_png, png_header_only(30_000, 30_000)):
        with pytest.raises(gr.Error) as err:
            app.predict_image(bad)
        assert "Could not use this image" in err.value.message
        with pytest.raises(gr.Error):
            app.predict({"background": None, "layers": [], "composite": bad})
    assert "exceeds" in err.value.message  # the bomb says why
    assert app.predict_image(good) == before  # still serving, same answer


def test_examples_are_read_correctly(app):
    for path, label in example_files():
        assert top_label(app.predict_image(str(path))) == label, path.name


@pytest.mark.slow
@pytest.mark.mnist
def test_drawn_mnist_test_digits_at_least_97_percent(app, mnist_dir):
    from datasets import load_dataset

    test = load_dataset(str(mnist_dir), split="test")
    rng = np.random.default_rng(0)
    indices = rng.choice(len(test), size=N_DRAWN, replace=False)
    misses = []
    for index in indices:
        row = test[int(index)]
        drawn = draw_like_a_person(row["image"], rng)
        predicted = top_label(app.predict(sketch(drawn)))
        if predicted != str(row["label"]):
            misses.append((int(index), row["label"], predicted, drawn.mode, drawn.size))
    accuracy = 1 - len(misses) / N_DRAWN
    print(f"drawn-style accuracy {accuracy:.3f} on {N_DRAWN} MNIST test digits; misses: {misses}")
    assert accuracy >= MIN_DRAWN_ACCURACY, misses


# ---- the running app, through gradio_client -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.demo.close()


def confidences(label_value: dict) -> dict[str, float]:
    """gr.Label's value as the client receives it -> {label: confidence}."""
    return {c["label"]: c["confidence"] for c in label_value["confidences"]}


@pytest.mark.slow
def test_gradio_client_both_endpoints(app, client, tmp_path):
    from gradio_client import handle_file

    for path, label in example_files()[:3]:
        value = {"background": None, "layers": [], "composite": handle_file(str(path))}
        assert client.predict(value, api_name="/predict")["label"] == label, path.name
        assert client.predict(handle_file(str(path)), api_name="/predict_image")["label"] == label, path.name

    blank = tmp_path / "blank.png"
    Image.new("RGBA", (400, 400)).save(blank)
    result = client.predict(
        {"background": None, "layers": [], "composite": handle_file(str(blank))}, api_name="/predict"
    )
    assert result["label"] == app.BLANK_LABEL
    assert confidences(result) == {app.BLANK_LABEL: 1.0}


@pytest.mark.slow
def test_gradio_client_corrupt_upload_is_reported_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError  # what a gr.Error raised in the app becomes on the client

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30_000, 30_000))
    for bad, reason in ((corrupt, "not an image file"), (bomb, "exceeds")):
        with pytest.raises(AppError, match=f"Could not read the uploaded image.*{reason}"):
            client.predict(handle_file(str(bad)), api_name="/predict_image")
        with pytest.raises(AppError, match=f"Could not read the uploaded image.*{reason}"):
            client.predict({"background": None, "layers": [], "composite": handle_file(str(bad))}, api_name="/predict")
    path, label = example_files()[0]
    assert client.predict(handle_file(str(path)), api_name="/predict_image")["label"] == label


@pytest.mark.slow
def test_app_runs_on_remote_code_without_the_package(app):  # app: skips when there is no model to load
    """As on a Space: minivision_hf is not installed, the model's own code files load with trust_remote_code."""
    from tests.conftest import run_fresh

    path, label = example_files()[0]
    out = run_fresh(
        f"""
        import importlib.util, json
        spec = importlib.util.spec_from_file_location("space_app", {str(APP_FILE)!r})
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        result = app.predict_image({str(path)!r})
        print(json.dumps({{"top": max(result, key=result.get), "model_class": type(app.model).__module__}}))
        """,
        cwd=REPO_ROOT,
    )
    assert out["top"] == label
    assert not out["model_class"].startswith("minivision_hf")  # transformers_modules...: the remote code


def test_model_source_resolution(app, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVISION_MODEL", "someone/some-model")
    monkeypatch.setenv("MINIVISION_REVISION", "abc123")
    assert app.resolve_model_source() == ("someone/some-model", "abc123")
    monkeypatch.delenv("MINIVISION_MODEL")
    monkeypatch.delenv("MINIVISION_REVISION")
    monkeypatch.setattr(app, "HERE", tmp_path)
    assert app.resolve_model_source() == (str(tmp_path.parent), None)  # the release at the repo root
    (tmp_path / "model_source.json").write_text('{"model": "minivision/mini-vision-v2", "revision": "0123abcd"}')
    assert app.resolve_model_source() == ("minivision/mini-vision-v2", "0123abcd")
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"
