"""Test helpers that make images the way users make them: MNIST digits drawn on canvases, and decompression bombs."""

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

STYLES = ("transparent", "black_on_white", "white_on_black")


def draw_like_a_person(
    digit: Image.Image,
    rng: np.random.Generator,
    canvas_px: tuple[int, int] = (280, 800),
    style: str | None = None,
) -> Image.Image:
    """An MNIST digit (28x28, white on black) rendered the ways people draw or upload one: a canvas of `canvas_px`
    (min, max) pixels, the digit large or small and off-centre, solid pen or anti-aliased, normal or thick strokes,
    as black ink on a transparent layer (gradio's RGBA Sketchpad), black on white, or white on black (`style`, one of
    STYLES; random when None, transparent half of the time)."""
    canvas = int(rng.integers(canvas_px[0], canvas_px[1] + 1))
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
    if style is None:
        style = rng.choice(STYLES, p=[0.5, 0.35, 0.15])
    if style == "transparent":
        rgba = np.zeros((canvas, canvas, 4), dtype=np.uint8)
        rgba[..., 3] = ink8  # black ink, alpha = coverage; RGB under alpha 0 is 0, as the canvas exports it
        return Image.fromarray(rgba, "RGBA")
    if style == "black_on_white":
        return Image.fromarray(255 - ink8, "L").convert("RGB")
    if style == "white_on_black":
        return Image.fromarray(ink8, "L")
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG that claims width x height pixels (with one tiny IDAT): a decompression bomb as Pillow sees it."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(bytes(64))) + _png_chunk(b"IEND", b"")


def write_png_bomb(path: Path, width: int = 13_000, height: int = 13_000) -> Path:
    """A complete, valid black RGB PNG of width x height pixels that compresses to a small file (~0.5 MB for
    13,000 x 13,000): decoding it takes width * height * 3 bytes (~507 MB). Streamed row by row, so writing it takes
    no memory."""
    row = b"\x00" + bytes(3 * width)  # filter byte 0, then black pixels
    compressor = zlib.compressobj(9)
    chunks = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    data = [compressor.compress(row) for _ in range(height)]
    data.append(compressor.flush())
    chunks += [_png_chunk(b"IDAT", b"".join(data)), _png_chunk(b"IEND", b"")]
    path.write_bytes(b"".join(chunks))
    return path
