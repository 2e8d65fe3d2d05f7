"""ONNX export (scripts/export_onnx.py, minivision_hf.onnx_utils): the export graph's exactness, fp32 parity with a
dynamic batch, the int8 model, the labels in the metadata, the report, and loud failures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import minivision_hf as mv
import onnx
from minivision_hf import onnx_utils
from minivision_hf.data import decode_to_uint8
from scripts import benchmark, export_onnx

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_EXPORT = ["--eval-samples", "256", "--time-s", "0.05"]


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so that folding and reordering are really tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))  # negative scales too
            module.bias.data.copy_(torch.randn(n, generator=generator))


@pytest.fixture(scope="module")
def tiny_pixels(tiny_test):
    images, labels = decode_to_uint8(tiny_test)
    return mv.to_pixel_values(images), labels


@pytest.fixture(scope="module")
def release():
    return mv.MiniVisionForImageClassification.from_pretrained(REPO_ROOT).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dir):
    """The repo-root release exported with the tiny fixture (calibration: its 512 training rows, checks: its 256 test
    rows). The agreement gate is lowered here because the release may be an untrained placeholder; the trained-model
    agreement is asserted separately below."""
    out = tmp_path_factory.mktemp("onnx")
    report = export_onnx.main(["--model", str(REPO_ROOT), "--output", str(out), "--calibration-dataset",
                               str(tiny_dir), "--min-agreement", "0.9", *FAST_EXPORT])  # fmt: skip
    return out, report


def test_export_graph_is_exact_with_nontrivial_batchnorm():
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).eval()
    _randomise_batchnorm(model)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        got = onnx_utils.OnnxExportGraph(model)(x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        # The fold works on a copy of the classifier: the model itself is untouched.
        assert torch.equal(model(pixel_values=x).logits, expected)


def test_export_graph_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        onnx_utils.OnnxExportGraph(mv.MiniVisionForImageClassification(mv.MiniVisionConfig()))


def test_export_of_a_small_config_keeps_dynamic_batch_and_parity(tmp_path):
    torch.manual_seed(0)
    config = mv.MiniVisionConfig(conv_channels=[4, 8, 8], hidden_size=16)
    model = mv.MiniVisionForImageClassification(config).eval()
    _randomise_batchnorm(model, seed=1)
    path = onnx_utils.export_onnx(model, tmp_path / "small.onnx")
    session = onnx_utils.ort_session(path, threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            expected = model(pixel_values=x).logits.numpy()
        assert np.abs(onnx_utils.ort_logits(session, x) - expected).max() < 1e-4


@pytest.mark.slow
def test_fp32_parity_at_batch_1_and_7(exported, release, tiny_pixels):
    out, report = exported
    session = onnx_utils.ort_session(out / "model.onnx", threads=1)
    pixels, _ = tiny_pixels
    for batch in (1, 7):
        with torch.no_grad():
            expected = release(pixel_values=pixels[:batch]).logits.numpy()
        got = onnx_utils.ort_logits(session, pixels[:batch])
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() < 1e-4
    assert report["checks"]["fp32_max_abs_logit_diff"]["passed"]
    assert report["fp32"]["max_abs_logit_diff"]["batch_7"] < 1e-4


@pytest.mark.slow
def test_fp32_graph_is_clean_with_named_dynamic_batch(exported):
    out, report = exported
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    allowed = {"Conv", "Relu", "MaxPool", "BatchNormalization", "Reshape", "Flatten", "Gemm"}
    assert {n.op_type for n in model.graph.node} <= allowed
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {report["opset"]}
    assert not (out / "model.onnx.data").exists()  # weights inside the file


@pytest.mark.slow
def test_metadata_carries_labels_and_provenance(exported, release):
    out, report = exported
    for name, quantization in (("model.onnx", "none"), ("model_int8.onnx", report["int8"]["method"])):
        meta = onnx_utils.get_metadata(out / name)
        assert json.loads(meta["id2label"]) == {str(k): v for k, v in release.config.id2label.items()}
        assert json.loads(meta["label2id"]) == release.config.label2id
        assert float(meta["image_mean"]) == pytest.approx(mv.MNIST_MEAN)
        assert float(meta["image_std"]) == pytest.approx(mv.MNIST_STD)
        assert meta["weights_sha256"] == onnx_utils.weights_digest(release)
        assert meta["quantization"] == quantization


@pytest.mark.slow
def test_int8_model_loads_runs_and_report_explains_the_choice(exported, tiny_pixels):
    out, report = exported
    session = onnx_utils.ort_session(out / "model_int8.onnx", threads=1)
    pixels, _ = tiny_pixels
    assert onnx_utils.ort_logits(session, pixels[:7]).shape == (7, 10)
    int8_ops = {n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node}
    assert int8_ops & {"QuantizeLinear", "DynamicQuantizeLinear"}
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["passed"] and on_disk["int8"]["method"] == report["int8"]["method"]
    candidates = on_disk["int8"]["candidates"]
    assert set(candidates) == set(onnx_utils.QUANT_METHODS)
    qualified = [m for m, c in candidates.items() if c["qualifies"]]
    if qualified:  # the fastest qualifying candidate was kept
        fastest = max(qualified, key=lambda m: candidates[m]["speed_b1024"]["images_per_s"])
        assert on_disk["int8"]["method"] == fastest
    assert on_disk["files"]["model_int8.onnx"]["bytes"] < 0.5 * on_disk["files"]["model.onnx"]["bytes"]
    assert on_disk["opset"] == onnx_utils.DEFAULT_OPSET and on_disk["versions"]["onnxruntime"]


@pytest.mark.slow
def test_int8_agrees_with_a_trained_release(exported, release, tiny_pixels):
    eval_record = REPO_ROOT / "records" / "eval_test.json"
    accuracy = json.loads(eval_record.read_text()).get("accuracy", 0) if eval_record.exists() else None
    if accuracy is None or accuracy <= 0.99:
        pytest.skip(f"the repo-root release is not a trained model ({eval_record} missing or accuracy <= 0.99: "
                    f"{accuracy}); int8 agreement is only meaningful with trained weights")  # fmt: skip
    out, _ = exported
    pixels, _ = tiny_pixels
    with torch.no_grad():
        expected = release(pixel_values=pixels).logits.numpy().argmax(1)
    got = onnx_utils.ort_logits(onnx_utils.ort_session(out / "model_int8.onnx", threads=1), pixels).argmax(1)
    assert (got == expected).mean() >= 0.95


@pytest.mark.slow
def test_failed_check_raises_after_writing_the_report(tmp_path, tiny_dir):
    with pytest.raises(RuntimeError, match="fp32_max_abs_logit_diff"):
        export_onnx.main(["--model", str(REPO_ROOT), "--output", str(tmp_path), "--calibration-dataset", str(tiny_dir),
                          "--methods", "static_qdq_u8", "--max-logit-diff", "0", *FAST_EXPORT])  # fmt: skip
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["passed"] is False and report["checks"]["fp32_max_abs_logit_diff"]["passed"] is False


@pytest.mark.slow
def test_benchmark_reuses_an_export_only_for_the_same_weights(exported, release, tmp_path):
    out, _ = exported
    assert benchmark.onnx_matches(out, onnx_utils.weights_digest(release))
    other = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).eval()
    assert not benchmark.onnx_matches(out, onnx_utils.weights_digest(other))
    assert not benchmark.onnx_matches(tmp_path, onnx_utils.weights_digest(release))  # no files there
