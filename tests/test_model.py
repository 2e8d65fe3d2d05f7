"""MiniVisionConfig and the model: validation, shapes, loss, gradients, parameter count, save/load."""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import minivision_hf as mv


def test_config_defaults_are_the_seed_table():
    config = mv.MiniVisionConfig()
    assert (config.num_channels, config.image_size, config.conv_channels) == (1, 28, [32, 64])
    assert (config.kernel_size, config.stride, config.padding, config.pool_size) == (3, 1, 1, 2)
    assert (config.hidden_size, config.dropout, config.flat_features) == (256, 0.3, 3136)
    assert config.num_labels == 10
    assert config.id2label == {i: str(i) for i in range(10)}
    assert config.label2id == {str(i): i for i in range(10)}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"conv_channels": []}, "conv_channels"),
        ({"conv_channels": [32, -1]}, "conv_channels"),
        ({"hidden_size": 2.5}, "hidden_size"),
        ({"padding": -1}, "padding"),
        ({"image_size": 3, "conv_channels": [8, 8, 8]}, "image_size"),
        ({"num_labels": 1}, "num_labels"),
        ({"dropout": "0.3"}, "dropout"),  # a string that float() would accept, then torch would not
        ({"dropout": float("nan")}, "dropout"),
        ({"dropout": True}, "dropout"),
        ({"batch_norm_eps": "1e-5"}, "batch_norm_eps"),
        ({"batch_norm_eps": 0}, "batch_norm_eps"),
        ({"image_size": 28.0}, "image_size"),
        ({"num_channels": "1"}, "num_channels"),
        ({"padding": True}, "padding"),
        ({"conv_channels": [32, True]}, "conv_channels"),
        ({"conv_channels": [32.0, 64]}, "conv_channels"),
        ({"id2label": {0: "0", 2: "2"}}, "id2label"),
    ],
)
def test_config_rejects_invalid_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mv.MiniVisionConfig(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("dropout", "0.3"), ("hidden_size", "256"), ("conv_channels", [32, "64"]), ("batch_norm_eps", None)],
)
def test_bad_config_json_fails_on_load_naming_the_field(tmp_path, field, value):
    import json

    mv.MiniVisionConfig().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "override, field",
    [({"conv_channels": [-32, 64]}, "conv_channels"), ({"num_channels": -1}, "num_channels"),
     ({"dropout": 2.0}, "dropout"), ({"image_size": 3, "conv_channels": [8, 8, 8]}, "image_size")],
)  # fmt: skip
def test_from_pretrained_overrides_are_validated(tmp_path, override, field):
    """`from_pretrained(folder, key=value)` sets overrides after construction: they are checked too (a negative
    channel count reached torch as "Trying to create tensor with negative dimension")."""
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig(conv_channels=[4, 8], hidden_size=8))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        AutoConfig.from_pretrained(tmp_path, **override)
    with pytest.raises(ValueError, match=field):
        AutoModelForImageClassification.from_pretrained(tmp_path, **override)
    config, unused = AutoConfig.from_pretrained(tmp_path, return_unused_kwargs=True, image_size=16, foo=1)
    assert (config.image_size, unused) == (16, {"foo": 1})


def test_config_round_trip(tmp_path):
    config = mv.MiniVisionConfig(conv_channels=[8, 16], hidden_size=32, dropout=0.1)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, mv.MiniVisionConfig)
    ignore = {"_name_or_path", "transformers_version"}
    assert {k: v for k, v in loaded.to_dict().items() if k not in ignore} == {
        k: v for k, v in config.to_dict().items() if k not in ignore
    }


def test_parameter_count_matches_the_seed():
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())
    assert model.num_parameters() == 824_650  # 0.82M, the seed card's figure
    # conv1 320 + bn1 64 + conv2 18,496 + bn2 128 + fc1 803,072 + fc2 2,570
    assert sum(p.numel() for p in model.minivision.parameters()) == 320 + 64 + 18_496 + 128


def test_forward_shapes_loss_and_backward():
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())
    pixel_values = torch.randn(5, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3, 4])
    out = model(pixel_values=pixel_values, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (5, 10)
    assert [tuple(h.shape) for h in out.hidden_states] == [(5, 1, 28, 28), (5, 32, 14, 14), (5, 64, 7, 7)]
    expected = torch.nn.functional.cross_entropy(out.logits, labels)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model(pixel_values=pixel_values, return_dict=False)[0].shape == (5, 10)


def test_loss_refuses_non_integer_labels():
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).eval()  # no dropout: same logits each call
    pixel_values = torch.randn(2, 1, 28, 28)
    for labels in (torch.tensor([0.7, 1.2]), torch.tensor([1.0, 2.0]), torch.tensor([True, False])):
        with pytest.raises(ValueError, match="labels must be integer class indices"):
            model(pixel_values=pixel_values, labels=labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        model(pixel_values=pixel_values, labels=torch.tensor([[0, 1]]))
    for labels in (torch.tensor([3, 10]), torch.tensor([-1, 2])):  # not a class, not the ignore index
        with pytest.raises(ValueError, match=r"class indices 0\.\.9"):
            model(pixel_values=pixel_values, labels=labels)
    logits = model(pixel_values=pixel_values).logits
    for labels in (torch.tensor([3, 4]), torch.tensor([3, 4], dtype=torch.int32), [3, 4]):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4])))
    ignored = model(pixel_values=pixel_values, labels=torch.tensor([3, -100])).loss  # Trainer's "ignore" index
    assert torch.allclose(ignored, torch.nn.functional.cross_entropy(logits[:1], torch.tensor([3])))


def test_block_order_is_conv_relu_pool_bn():
    """The forward pools before ReLU (cheaper); it must equal the seed's Conv -> ReLU -> MaxPool -> BN exactly."""
    torch.manual_seed(0)
    block = mv.modeling_minivision.MiniVisionConvBlock(1, 32, mv.MiniVisionConfig()).eval()
    x = torch.randn(4, 1, 28, 28)
    seed_order = block.norm(block.pool(torch.relu(block.conv(x))))
    assert torch.equal(block(x), seed_order)


def test_tiny_config_and_wrong_input_shape():
    config = mv.MiniVisionConfig(conv_channels=[4], hidden_size=8, image_size=16, num_labels=3)
    model = mv.MiniVisionForImageClassification(config)
    assert model(torch.randn(2, 1, 16, 16)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.randn(2, 3, 16, 16))


def test_forward_refuses_raw_pixels_and_non_tensors_and_casts_other_float_dtypes():
    """uint8 pixels or a bool mask are not normalised inputs (casting them would answer silently wrong), a numpy array
    is not a tensor: clear errors, not a dtype clash deep in conv2d; float64 / float16 inputs (or float32 ones for a
    bf16 model) are cast to the weights' dtype, as transformers' vision models do."""
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).eval()
    x = torch.randn(2, 1, 28, 28)
    for raw in ((x > 0).to(torch.uint8) * 255, x > 0, x.long()):
        with pytest.raises(ValueError, match=f"floating point.*{raw.dtype}.*MiniVisionImageProcessor"):
            model(raw)
    for other in (x.numpy(), x.tolist(), None):
        with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
            model(other)
    with torch.no_grad():
        reference = model(x).logits
        assert torch.allclose(model(x.double()).logits, reference, atol=1e-5)
        assert torch.allclose(model(x.half()).logits, reference, atol=0.05)
        assert torch.allclose(model.to(torch.bfloat16)(x).logits.float(), reference, atol=0.1)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x).logits, loaded(x).logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, mv.MiniVisionModel)
    assert torch.equal(base(x).pooler_output, model.minivision(x).pooler_output)


def test_save_pretrained_writes_complete_auto_map_and_code(tmp_path):
    import json

    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(tmp_path)
    mv.MiniVisionImageProcessor().save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"}
    for target in auto_map.values():
        assert (tmp_path / f"{target.split('.')[0]}.py").exists()
    processor_map = json.loads((tmp_path / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_minivision.MiniVisionImageProcessor"}


def test_save_pretrained_declares_and_copies_the_pipeline(tmp_path):
    """What `pipeline(..., trust_remote_code=True)` reads: custom_pipelines in config.json, its module beside it."""
    import json

    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(tmp_path)
    custom = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    assert custom == {
        "image-classification": {
            "impl": "pipeline_minivision.MiniVisionImageClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }
    module, cls = custom["image-classification"]["impl"].split(".")
    assert (tmp_path / f"{module}.py").read_bytes() == Path(mv.pipeline_minivision.__file__).read_bytes()
    assert cls == mv.MiniVisionImageClassificationPipeline.__name__
    # The released config.json at the repo root was regenerated with it (never edited by hand).
    from tests.conftest import REPO_ROOT

    assert json.loads((REPO_ROOT / "config.json").read_text())["custom_pipelines"] == custom
    assert (REPO_ROOT / f"{module}.py").resolve() == (REPO_ROOT / "minivision_hf" / f"{module}.py").resolve()


def _with_batchnorm_statistics(config: "mv.MiniVisionConfig") -> "mv.MiniVisionForImageClassification":
    """A model whose BatchNorm running statistics are not the fresh ones (as after training)."""
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(config).eval()
    for block in model.minivision.blocks:
        block.norm.running_mean.uniform_(-1, 1)
        block.norm.running_var.uniform_(0.5, 2)
        block.norm.num_batches_tracked.fill_(100)
    return model


def test_loading_keeps_batchnorm_statistics_when_a_buffer_is_missing(tmp_path):
    """A checkpoint without `num_batches_tracked` (written by other tools, or converted) loads every tensor it has:
    `_init_weights` must initialise only what is missing, never reset the running mean/var that were loaded (the
    model would answer very differently, with no error)."""
    from safetensors.torch import load_file, save_file

    model = _with_batchnorm_statistics(mv.MiniVisionConfig(conv_channels=[4, 8], hidden_size=16))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "num_batches_tracked" not in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    state = loaded.state_dict()
    for key, value in model.state_dict().items():
        if "num_batches_tracked" in key:
            assert state[key] == 0  # missing: initialised, as PyTorch does
        else:
            assert torch.equal(state[key], value), key
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_device_map_with_disk_offload_gives_the_same_logits(tmp_path):
    """`device_map="auto"` with too little memory offloads the weights to disk; the BatchNorm statistics, kept in
    memory, must still be the loaded ones."""
    pytest.importorskip("accelerate")
    model = _with_batchnorm_statistics(mv.MiniVisionConfig())
    model.save_pretrained(tmp_path / "model")
    offloaded = AutoModelForImageClassification.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "400KB"}, offload_folder=tmp_path / "offload"
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(offloaded(x).logits, model(x).logits, atol=1e-6)


def test_problem_type_multi_label_and_regression_losses():
    """As transformers' image classifiers: `config.problem_type` selects BCE-with-logits over multi-hot labels or MSE
    over real-valued ones, (batch, num_labels); unset, float labels stay refused (never guessed to be multi-hot)."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    multi_hot = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    config = mv.MiniVisionConfig(num_labels=3, problem_type="multi_label_classification")
    model = mv.MiniVisionForImageClassification(config).eval()
    logits = model(x).logits
    for labels in (multi_hot, multi_hot.float(), multi_hot.bool()):
        loss = model(x, labels=labels).loss
        assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, multi_hot.float()))
    assert model(x, labels=multi_hot, return_dict=False)[0] == loss
    with pytest.raises(ValueError, match=r"problem_type='multi_label_classification'.*shape \(4, 3\)"):
        model(x, labels=torch.tensor([0, 1, 2, 0]))
    regression = mv.MiniVisionForImageClassification(mv.MiniVisionConfig(num_labels=3, problem_type="regression"))
    regression.eval()
    targets = torch.randn(4, 3)
    loss = regression(x, labels=targets).loss
    assert torch.allclose(loss, torch.nn.functional.mse_loss(regression(x).logits, targets))
    plain = mv.MiniVisionForImageClassification(mv.MiniVisionConfig(num_labels=3))
    with pytest.raises(ValueError, match="labels must be integer class indices.*multi_label_classification"):
        plain(x, labels=multi_hot.float())


def test_config_changed_after_construction_is_validated_on_save(tmp_path):
    """transformers validates configs in `save_pretrained`: an invalid value set as an attribute is refused there,
    naming the field, instead of being written into a folder that then fails to load."""
    config = mv.MiniVisionConfig()
    config.dropout = 1.5
    with pytest.raises(ValueError, match="dropout"):
        config.save_pretrained(tmp_path / "config")
    assert not (tmp_path / "config" / "config.json").exists()
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig(conv_channels=[4], hidden_size=8))
    model.config.hidden_size = "8"
    with pytest.raises(ValueError, match="hidden_size"):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "config.json").exists()


def test_eval_model_on_a_folder_without_preprocessor_config_uses_the_default_processor(tmp_path, tiny_dir, capsys):
    """`model.save_pretrained` alone writes no preprocessor_config.json: eval_model.py stopped with transformers'
    OSError traceback; it now evaluates with the default image processor (the MNIST protocol) and says so."""
    from scripts import eval_model

    torch.manual_seed(0)
    mv.MiniVisionForImageClassification(mv.MiniVisionConfig(conv_channels=[4], hidden_size=8)).save_pretrained(tmp_path)
    result = eval_model.main(["--model", str(tmp_path), "--dataset", str(tiny_dir), "--max-samples", "8",
                              "--no-progress"])  # fmt: skip
    assert result["num_samples"] == 8
    assert "no preprocessor_config.json" in capsys.readouterr().err


def test_eval_model_on_an_unreachable_hub_id_is_one_line(tiny_dir, monkeypatch):
    """Offline (or no such repo), from_pretrained's OSError was a traceback; it is eval_model.py's one-line error."""
    from scripts import eval_model

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(eval_model.AutoModelForImageClassification, "from_pretrained", offline)
    with pytest.raises(SystemExit, match="eval_model.py: error: --model nobody/no-such-model-here: "):
        eval_model.main(["--model", "nobody/no-such-model-here", "--dataset", str(tiny_dir), "--no-progress"])
