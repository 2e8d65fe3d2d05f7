"""Auto classes and pipeline: in-package (registered) and as Hub remote code in a fresh process."""

import importlib.util
import json
import shutil
import sys

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

import minivision_hf as mv
from tests.conftest import REPO_ROOT, run_fresh


@pytest.fixture(scope="module")
def saved_release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(folder)
    mv.MiniVisionImageProcessor().save_pretrained(folder)
    return folder


def test_auto_classes_in_package(saved_release):
    assert isinstance(
        AutoModelForImageClassification.from_pretrained(saved_release), mv.MiniVisionForImageClassification
    )
    assert isinstance(AutoModel.from_pretrained(saved_release), mv.MiniVisionModel)
    assert isinstance(AutoImageProcessor.from_pretrained(saved_release), mv.MiniVisionImageProcessor)


def test_pipeline_in_package(saved_release):
    """The in-package line (README "Use it"): no remote code, the package's own pipeline class."""
    clf = pipeline(
        "image-classification", model=str(saved_release), trust_remote_code=False,
        pipeline_class=mv.MiniVisionImageClassificationPipeline,
    )  # fmt: skip
    assert isinstance(clf, mv.MiniVisionImageClassificationPipeline)
    assert isinstance(clf.model, mv.MiniVisionForImageClassification)
    assert isinstance(clf.image_processor, mv.MiniVisionImageProcessor)
    canvas = Image.new("RGBA", (300, 300))
    ImageDraw.Draw(canvas).line([(150, 40), (150, 260)], fill=(0, 0, 0, 255), width=18)
    top3 = clf(canvas, top_k=3)
    assert len(top3) == 3 and all(r["label"] in [str(i) for i in range(10)] for r in top3)
    everything = clf(canvas, top_k=10)
    assert sorted(r["label"] for r in everything) == [str(i) for i in range(10)]
    assert abs(sum(r["score"] for r in everything) - 1) < 1e-4
    batch = clf([canvas, Image.new("L", (28, 28))], top_k=2)
    assert len(batch) == 2 and len(batch[0]) == 2
    assert batch[1] == [{"label": mv.BLANK_LABEL, "score": 1.0}]  # an empty image is not a digit


def test_pipeline_without_pipeline_class_or_remote_code_is_refused(saved_release):
    """config.json declares the custom pipeline: transformers refuses to fall back to the stock one (which would drop
    the alpha channel) unless told which class to use."""
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("image-classification", model=str(saved_release), trust_remote_code=False)


@pytest.mark.slow
def test_remote_code_in_a_fresh_process(saved_release, tmp_path):
    """With only transformers installed (minivision_hf blocked), trust_remote_code loads everything from the folder."""
    result = run_fresh(
        f"""
        import json, torch
        from PIL import Image
        from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                                  pipeline)
        path = {str(saved_release)!r}
        kinds = {{}}
        for cls in (AutoConfig, AutoModel, AutoModelForImageClassification, AutoImageProcessor):
            obj = cls.from_pretrained(path, trust_remote_code=True)
            kinds[cls.__name__] = [type(obj).__name__, type(obj).__module__]
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        torch.manual_seed(1)
        x = torch.randn(2, 1, 28, 28)
        logits = model(x).logits.tolist()
        clf = pipeline("image-classification", model=path, trust_remote_code=True)
        kinds["pipeline"] = [type(clf).__name__, type(clf).__module__]
        ink = Image.new("L", (28, 28))
        ink.paste(255, (12, 4, 16, 24))
        out = clf([Image.new("RGBA", (200, 200)), ink], top_k=3)
        print(json.dumps({{"kinds": kinds, "logits": logits, "pipeline": out}}))
        """,
        cwd=tmp_path,
    )
    assert result["kinds"]["pipeline"][0] == "MiniVisionImageClassificationPipeline"
    assert result["kinds"]["AutoModel"][0] == "MiniVisionModel"
    assert result["kinds"]["AutoModelForImageClassification"][0] == "MiniVisionForImageClassification"
    assert result["kinds"]["AutoImageProcessor"][0] == "MiniVisionImageProcessor"
    assert all(module.startswith("transformers_modules") for _, module in result["kinds"].values())
    torch.manual_seed(1)
    x = torch.randn(2, 1, 28, 28)
    local = AutoModelForImageClassification.from_pretrained(saved_release).eval()
    assert torch.allclose(torch.tensor(result["logits"]), local(x).logits, atol=1e-5)
    assert result["pipeline"][0] == [{"label": "blank", "score": 1.0}]
    assert len(result["pipeline"][1]) == 3 and {r["label"] for r in result["pipeline"][1]} <= set("0123456789")


@pytest.mark.slow
def test_a_model_loaded_as_remote_code_saves_a_complete_folder(saved_release, tmp_path):
    """Loaded as remote code, the model's module folder holds only the modeling and configuration files; saving it
    (the fine-tune-then-push path) still writes the processor's and pipeline's code, taken from the folder it was
    loaded from, and once that folder is gone, no entry names a file the saved folder lacks."""

    source = tmp_path / "copy"
    shutil.copytree(saved_release, source)
    result = run_fresh(
        f"""
        import json, shutil
        from PIL import Image
        from transformers import AutoModelForImageClassification, pipeline
        model = AutoModelForImageClassification.from_pretrained({str(source)!r}, trust_remote_code=True)
        model.save_pretrained("saved")
        ink = Image.new("L", (28, 28))
        ink.paste(255, (12, 4, 16, 24))
        shutil.copy({str(source / "preprocessor_config.json")!r}, "saved")
        out = pipeline("image-classification", model="saved", trust_remote_code=True)(ink, top_k=1)
        shutil.rmtree({str(source)!r})
        model.save_pretrained("orphan")
        print(json.dumps({{"pipeline": out}}))
        """,
        cwd=tmp_path,
    )
    assert result["pipeline"][0]["label"] in set("0123456789")
    for name in ("image_processing_minivision.py", "pipeline_minivision.py"):
        assert (tmp_path / "saved" / name).is_file()
    orphan = json.loads((tmp_path / "orphan" / "config.json").read_text())
    assert "custom_pipelines" not in orphan and "AutoImageProcessor" not in orphan["auto_map"]
    for name in orphan["auto_map"].values():
        assert (tmp_path / "orphan" / (name.split(".")[0] + ".py")).is_file()
    AutoModelForImageClassification.from_pretrained(tmp_path / "orphan", trust_remote_code=True)


@pytest.mark.slow
def test_a_model_loaded_from_the_hub_as_remote_code_saves_a_complete_folder(saved_release, tmp_path):
    """From a Hub repo, remote code's module folder holds only the modeling and configuration files, and the folder
    it was loaded from is a repo id: save_pretrained dropped the pipeline (custom_pipelines, pipeline_minivision.py)
    and the processor's auto_map entry, so a fine-tuned model pushed back served the stock pipeline. The files now
    come from the repo, at the commit loaded."""
    from tests.hub_server import HubServer

    with HubServer(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf_home"), "NO_PROXY": "127.0.0.1,localhost"}  # fmt: skip
        run_fresh(
            f"""
            from huggingface_hub import HfApi
            from transformers import AutoModelForImageClassification
            HfApi().create_repo("me/mv")
            HfApi().upload_folder(repo_id="me/mv", folder_path={str(saved_release)!r})
            AutoModelForImageClassification.from_pretrained("me/mv", trust_remote_code=True).save_pretrained("saved")
            print("{{}}")
            """,
            cwd=tmp_path,
            env=env,
        )
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["custom_pipelines"]["image-classification"]["impl"].startswith("pipeline_minivision.")
    assert "AutoImageProcessor" in config["auto_map"]
    for name in CODE_FILES:
        assert (tmp_path / "saved" / name).read_bytes() == (saved_release / name).read_bytes(), name


CODE_FILES = ("configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
              "pipeline_minivision.py")  # fmt: skip


def _fake_transformers_version(monkeypatch, version: str) -> None:
    # the module `import transformers` gives now: transformers 5.x replaces sys.modules["transformers"] with a new
    # lazy module when some submodules are first imported, so the one this test file imported may be stale
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)


def _run_code_file(name: str, monkeypatch):
    """Execute one remote-code file as transformers does: a fresh module (here beside the package's own modules, for
    the modeling and pipeline files' relative import), in whatever transformers is installed."""
    module_name = f"minivision_hf._version_check_{name[:-3]}"
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "minivision_hf" / name)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version", ["4.46.3", "4.57.6", "5.0.0", "5.3.0"])
@pytest.mark.parametrize("name", CODE_FILES)
def test_remote_code_before_transformers_5_4_names_the_version_it_needs(monkeypatch, name, version):
    """A Hub user on transformers 4.x (pip never checks remote code's needs) got `cannot import name
    'initialization'`, and on 5.0-5.3 `No module named 'transformers.image_processing_backends'`, from deep inside
    the import; every code file now refuses up front, naming the version needed and the one found, whichever file
    loads first."""
    _fake_transformers_version(monkeypatch, version)
    with pytest.raises(ImportError, match=rf"needs transformers>=5\.4, found {version}: pip install -U"):
        _run_code_file(name, monkeypatch)


@pytest.mark.parametrize("version", ["5.4.0", "5.4.0.dev0", "5.24.0", "6.1.0"])
@pytest.mark.parametrize("name", CODE_FILES)
def test_remote_code_loads_under_transformers_5_4_and_later(monkeypatch, name, version):
    _fake_transformers_version(monkeypatch, version)
    assert _run_code_file(name, monkeypatch).__all__
