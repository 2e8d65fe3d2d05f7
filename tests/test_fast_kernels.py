"""The fast path's fused C kernels: max-pool + ReLU (bit-identical to PyTorch, values and gradients), the first
block's conv + max-pool + ReLU (bit-identical forward under bf16 autocast, gradients to bf16 rounding) and the second
block's Winograd conv + max-pool + ReLU (bf16 numerics: equal to an fp64 reference to bf16 rounding)."""

import copy
import os
import subprocess
import sys

import pytest
import torch

import minivision_hf as mv
from minivision_hf import fast_kernels

pytestmark = pytest.mark.skipif(fast_kernels.library() is None, reason=f"no fused kernel: {fast_kernels.build_error()}")


def _channels_last(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(8, 32, 28, 28), (4, 64, 14, 14), (3, 5, 6, 8)])
def test_pool_relu_matches_pytorch_bit_for_bit(dtype, shape):
    x = _channels_last(*shape, dtype=dtype)
    x[:, :, :2] = 0.5  # whole windows tied: the first maximum must win, as in max_pool2d
    x[:, :, 2:4, :4] = -0.25  # windows ReLU closes
    x[:, :, 4:6, 4:6] = 0.0  # ReLU's gradient at exactly 0 is 0
    x[0, 0, 0, 0] = float("nan")  # propagated, like max_pool2d
    x.requires_grad_(True)
    grad = _channels_last(shape[0], shape[1], shape[2] // 2, shape[3] // 2, dtype=dtype, seed=1)

    expected = fast_kernels.pool_relu_reference(x)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    assert fast_kernels.supported(x)
    out = fast_kernels.FusedMaxPoolReLU()(x)
    (out_grad,) = torch.autograd.grad(out, x, grad)

    assert _same(out, expected) and _same(out_grad, expected_grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out_grad.is_contiguous(memory_format=torch.channels_last)


def test_pool_relu_falls_back_where_unsupported():
    x = torch.randn(2, 3, 6, 6)  # NCHW: not the kernel's layout
    assert not fast_kernels.supported(x)
    assert torch.equal(fast_kernels.FusedMaxPoolReLU()(x), fast_kernels.pool_relu_reference(x))
    odd = _channels_last(2, 3, 5, 6)
    assert not fast_kernels.supported(odd)
    assert torch.equal(fast_kernels.FusedMaxPoolReLU()(odd), fast_kernels.pool_relu_reference(odd))


@pytest.mark.parametrize("out_channels", [32, 5])  # 16-channel vector path and the generic loop
def test_conv_pool_relu_matches_autocast_pytorch(out_channels):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, out_channels, 3, 1, 1).to(memory_format=torch.channels_last)
    ink = (torch.rand(16, 1, 28, 28) > 0.7).float() * torch.rand(16, 1, 28, 28)
    x = ((ink - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)  # MNIST-like: constant background
    grad = _channels_last(16, out_channels, 14, 14, dtype=torch.bfloat16, seed=2)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = fast_kernels.pool_relu_reference(conv(x))
    expected.backward(grad)
    expected_w, expected_b = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_kernels.conv_supported(x, conv)
        out = fast_kernels._ConvPoolReLU.apply(x, conv.weight, conv.bias)
    out.backward(grad)

    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)  # same bf16 rounding, same winners
    # PyTorch's reference returns bf16 weight gradients; the kernel sums in fp32: equal to bf16 rounding.
    for got, ref in ((conv.weight.grad, expected_w), (conv.bias.grad, expected_b)):
        assert got.dtype == torch.float32
        assert (got - ref).norm() <= 1e-2 * ref.norm()


def test_conv_pool_relu_only_where_it_applies():
    conv = torch.nn.Conv2d(1, 8, 3, 1, 1)
    x = torch.randn(2, 1, 28, 28)
    assert not fast_kernels.conv_supported(x, conv)  # fp32, no autocast: PyTorch's ops
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_kernels.conv_supported(x, conv)
        assert not fast_kernels.conv_supported(x.requires_grad_(True), conv)  # the kernel gives no input gradient
        assert not fast_kernels.conv_supported(torch.randn(2, 1, 28, 28), torch.nn.Conv2d(1, 8, 3, 1, 0))


def test_fused_model_trains_like_the_plain_model():
    """The fused model: same state dict keys, same forward, loss and (to bf16 rounding) gradients, in bf16 autocast
    training with channels_last, as the fast path runs it."""
    torch.manual_seed(0)
    plain = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    assert fast_kernels.fuse_pool_relu(fused, winograd=False) == 2
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert type(fused.minivision.blocks[0]).__name__ == "FusedConvPoolReLUBlock"

    ink = (torch.rand(32, 1, 28, 28) > 0.7).float()
    x = ((ink - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (32,))
    results = []
    for model in (plain, fused):
        model.train()
        torch.manual_seed(1)  # the same dropout mask
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=x, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results
    assert torch.equal(logits_a, logits_b) and torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():
        assert (grads_b[name] - grad).norm() <= 2e-2 * grad.norm() + 1e-6, name
    # Running statistics were updated identically.
    for (name, a), b in zip(plain.named_buffers(), fused.buffers()):
        assert torch.equal(a, b), name


def _routed_reference(x, conv, code, grad):
    """fp64 conv + the pooling/ReLU routing the kernel chose (`code`): outputs, and x/w/b gradients for `grad`."""
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().to(torch.bfloat16).double().requires_grad_(True)
    b64 = conv.bias.detach().to(torch.bfloat16).double().requires_grad_(True)
    full = torch.nn.functional.conv2d(x64, w64, b64, padding=1)
    picked = torch.zeros_like(full)
    for p in range(4):  # the window input each output took (code p), or nothing where ReLU closed (code 4)
        picked[:, :, p >> 1 :: 2, p & 1 :: 2] = (code == p).double()
    pooled = (full * picked).unflatten(2, (-1, 2)).unflatten(4, (-1, 2)).sum((3, 5))
    pooled.backward(grad.double())
    return pooled.detach(), x64.grad, w64.grad, b64.grad


@pytest.mark.parametrize("fused", [True, False], ids=["one-pass", "bmm"])
@pytest.mark.parametrize(
    ("shape", "out_channels", "chunk"), [((20, 32, 14, 14), 64, 32), ((5, 16, 6, 8), 32, 2), ((3, 48, 10, 10), 16, 2)]
)
def test_winograd_conv_pool_relu_matches_an_fp64_reference(monkeypatch, fused, shape, out_channels, chunk):
    """Both implementations: the one-pass kernels (own AVX-512 BF16 products) and transforms + torch.bmm (in chunks
    of `chunk` images, the last one shorter). Shapes cover 64-, 32- and 16-column products and odd tile counts."""
    monkeypatch.setattr(fast_kernels, "WINOGRAD_CHUNK", chunk)
    monkeypatch.setattr(fast_kernels, "WINOGRAD_FUSED", fused)
    if fused and not fast_kernels.winograd_fused():
        pytest.skip("the one-pass Winograd kernels need a compiler targeting AVX-512 BF16")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], out_channels, 3, 1, 1)
    x = _channels_last(*shape, dtype=torch.bfloat16).requires_grad_(True)
    grad = _channels_last(shape[0], out_channels, shape[2] // 2, shape[3] // 2, dtype=torch.bfloat16, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_kernels.winograd_supported(x, conv)
        out = fast_kernels._WinogradConvPoolReLU.apply(x, conv.weight, conv.bias)
        reference = fast_kernels.pool_relu_reference(conv(x.detach()))
    out.backward(grad)
    u = fast_kernels._winograd_weights(conv.weight.detach().to(torch.bfloat16).float()).to(torch.bfloat16)
    y, code = fast_kernels.winograd_forward(x.detach(), u, conv.bias.detach().to(torch.bfloat16).float())
    assert torch.equal(y, out) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)

    # Values: within bf16 rounding of the exact pooled conv, and of PyTorch's bf16 (oneDNN) result.
    expected, grad_x, grad_w, grad_b = _routed_reference(x, conv, code, grad)
    scale = expected.abs().max()
    assert (out.double() - expected).abs().max() <= 2e-2 * scale
    assert (out.double() - reference.double()).abs().max() <= 3e-2 * scale
    assert (code == 4).any() and (code < 4).any() and torch.equal(out == 0, code == 4)  # ReLU closed exactly there
    # Gradients through the same routing: to bf16 rounding.
    for got, ref in ((x.grad, grad_x), (conv.weight.grad, grad_w), (conv.bias.grad, grad_b)):
        assert (got.double() - ref).norm() <= 1e-2 * ref.norm()
    assert x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32


def test_winograd_only_where_it_applies():
    conv = torch.nn.Conv2d(32, 64, 3, 1, 1)
    x = _channels_last(2, 32, 14, 14)
    assert not fast_kernels.winograd_supported(x, conv)  # no autocast: PyTorch's fp32 conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_kernels.winograd_supported(x, conv)
        assert not fast_kernels.winograd_supported(_channels_last(2, 32, 13, 14), conv)  # odd H
        for other in (
            torch.nn.Conv2d(24, 64, 3, 1, 1),
            torch.nn.Conv2d(32, 64, 3, 2, 1),
            torch.nn.Conv2d(32, 64, 5, 1, 2),
        ):
            assert not fast_kernels.winograd_supported(x, other)
        # A block whose conv the kernel does not take runs PyTorch's conv and the fused pool + ReLU.
        block = mv.modeling_minivision.MiniVisionConvBlock(24, 40, mv.MiniVisionConfig())
        fused = fast_kernels.FusedConvPoolReLUBlock(copy.deepcopy(block)).eval()
        z = _channels_last(2, 24, 14, 14)
        assert torch.equal(fused(z), block.eval()(z))


def test_winograd_model_trains_like_the_plain_model():
    """With the second block as Winograd, bf16 training stays as close to exact (fp64) arithmetic as PyTorch's own bf16
    autocast model: loss, logits and every gradient (bf16 alone is ~10% off in early-layer gradients here, because
    near-tied pooling windows route differently)."""
    torch.manual_seed(0)
    plain = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)
    plain.classifier[2].p = 0.0  # no dropout: the same function on every side
    fused, exact = copy.deepcopy(plain), copy.deepcopy(plain).double()
    report = fast_kernels.apply_fast_kernels(fused)
    assert report["winograd_blocks"] == 1 and fused.minivision.blocks[1].winograd

    ink = (torch.rand(64, 1, 28, 28) > 0.7).float()
    x = ((ink - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,))
    results = []
    for model in (plain, fused, exact):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model is not exact):
            out = model.train()(pixel_values=x.to(next(model.parameters()).dtype), labels=labels)
        out.loss.backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters()}
        results.append((out.logits.detach().double(), out.loss.detach().double(), grads))
    (logits_p, loss_p, grads_p), (logits_w, loss_w, grads_w), (logits_e, loss_e, grads_e) = results
    error = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert error(logits_w, logits_e) <= 1.5 * error(logits_p, logits_e) + 1e-2
    assert abs(loss_w - loss_e) <= 1.5 * abs(loss_p - loss_e) + 1e-2 * loss_e
    for name, exact_grad in grads_e.items():
        assert error(grads_w[name], exact_grad) <= 1.5 * error(grads_p[name], exact_grad) + 0.03, name


def test_no_compiler_falls_back_with_a_warning(tmp_path):
    """Without a C compiler the fast path keeps working on PyTorch's ops and says why, once."""
    code = (
        "import warnings, torch\n"
        "from minivision_hf import fast_kernels\n"
        "assert fast_kernels.library() is None, 'built without a compiler?'\n"
        "assert 'no C compiler' in fast_kernels.build_error()\n"
        "x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    y = fast_kernels.FusedMaxPoolReLU()(x)\n"
        "assert torch.equal(y, fast_kernels.pool_relu_reference(x))\n"
        "assert any('falls back' in str(w.message) for w in caught)\n"
        "print('ok')\n"
    )
    env = {"PATH": str(tmp_path), "MINIVISION_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_kernel_builds_into_the_cache_folder(tmp_path):
    code = "from minivision_hf import fast_kernels\nlib = fast_kernels.library()\nprint(lib._name)\n"
    env = {**os.environ, "MINIVISION_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    built = list((tmp_path / "minivision_hf").glob("fused_pool_*.so"))
    assert len(built) == 1 and result.stdout.strip() == str(built[0])


def _run_with_a_compiler_refusing(flag: str, code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose C compiler (gcc behind a wrapper) fails on `flag`, with an empty cache."""
    compiler = tmp_path / "cc-without-flag"
    compiler.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = {flag} ] && {{ echo "no {flag}" >&2; exit 1; }}; done\n'
                        'exec gcc "$@"\n')  # fmt: skip
    compiler.chmod(0o755)
    env = {**os.environ, "CC": str(compiler), "MINIVISION_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_winograd_without_avx512_bf16_uses_the_bmm_path(tmp_path):
    """Built for a generic x86-64 (no -march=native: no AVX-512 BF16), the one-pass Winograd kernels are absent and
    the block runs the transforms + torch.bmm path, with the same results to bf16 rounding."""
    code = (
        "import torch\n"
        "from minivision_hf import fast_kernels\n"
        "assert fast_kernels.library() is not None, fast_kernels.build_error()\n"
        "assert '-march=native' not in fast_kernels.build_flags() and not fast_kernels.winograd_fused()\n"
        "torch.manual_seed(0)\n"
        "conv = torch.nn.Conv2d(32, 64, 3, 1, 1)\n"
        "x = torch.randn(4, 32, 14, 14).contiguous(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    assert fast_kernels.winograd_supported(x, conv)\n"
        "    out = fast_kernels._WinogradConvPoolReLU.apply(x, conv.weight, conv.bias)\n"
        "    ref = fast_kernels.pool_relu_reference(conv(x))\n"
        "err = (out.float() - ref.float()).abs().max() / ref.float().abs().max()\n"
        "assert err < 3e-2, err\n"
        "print('ok')\n"
    )
    result = _run_with_a_compiler_refusing("-march=native", code, tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_fast_dropout_has_dropouts_distribution():
    torch.manual_seed(0)
    drop = fast_kernels.FastDropout(0.3).train()
    x = torch.ones(1000, 1000, dtype=torch.bfloat16, requires_grad=True)
    y = drop(x)
    zeros = (y == 0).float().mean().item()
    assert abs(zeros - 0.3) < 0.005  # 1e6 draws: the standard error is ~5e-4
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-2) and y.dtype == torch.bfloat16
    y.float().sum().backward()  # the gradient passes through the kept elements only, scaled alike
    assert torch.equal(x.grad != 0, y != 0)
    assert torch.equal(drop.eval()(x), x) and torch.equal(fast_kernels.FastDropout(0.0).train()(x), x)


def test_apply_fast_kernels_keeps_the_state_dict_and_saved_files(tmp_path):
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = fast_kernels.apply_fast_kernels(model)
    assert report == {
        "fused_blocks": 2,
        "winograd_blocks": 1,
        "fast_dropouts": 1,
        "kernels_built": True,
        "build_flags": " ".join(fast_kernels.build_flags()),
        "build_error": None,
    }
    assert any(isinstance(m, fast_kernels.FastDropout) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    model.save_pretrained(tmp_path)  # reloads as the plain model, with the same weights
    reloaded = mv.MiniVisionForImageClassification.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in before.items())


def test_kernels_build_without_openmp(tmp_path):
    """A compiler without OpenMP (e.g. Apple clang) still builds the kernels, single-threaded."""
    code = (
        "import torch\n"
        "from minivision_hf import fast_kernels\n"
        "assert fast_kernels.library() is not None, fast_kernels.build_error()\n"
        "print(' '.join(fast_kernels.build_flags()))\n"
        "x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)\n"
        "assert torch.equal(fast_kernels.FusedMaxPoolReLU()(x), fast_kernels.pool_relu_reference(x))\n"
    )
    result = _run_with_a_compiler_refusing("-fopenmp", code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "-O3 -march=native"
