"""The fast path's fused C kernels: max-pool + ReLU (bit-identical to PyTorch, values and gradients) and the first
block's conv + max-pool + ReLU (bit-identical forward under bf16 autocast, gradients to bf16 rounding)."""

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
    assert fast_kernels.fuse_pool_relu(fused) == 2
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
    compiler = tmp_path / "cc-without-openmp"
    compiler.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "no openmp" >&2; exit 1; }; done\n'
                        'exec gcc "$@"\n')  # fmt: skip
    compiler.chmod(0o755)
    code = (
        "import torch\n"
        "from minivision_hf import fast_kernels\n"
        "assert fast_kernels.library() is not None, fast_kernels.build_error()\n"
        "print(' '.join(fast_kernels.build_flags()))\n"
        "x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)\n"
        "assert torch.equal(fast_kernels.FusedMaxPoolReLU()(x), fast_kernels.pool_relu_reference(x))\n"
    )
    env = {**os.environ, "CC": str(compiler), "MINIVISION_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "-O3 -march=native"
