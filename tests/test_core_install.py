"""The core install (`pip install minivision-hf`, no extras) runs the model, and the extras are what pyproject says.

The core venv is built from what is already installed, so it takes seconds and no network: a fresh venv whose
site-packages holds links to exactly the distributions of pyproject's core `dependencies` and their requirement
closure (resolved from `importlib.metadata`, markers and extras included), plus `pip install --no-deps -e .` of this
repo: ~5 s to build here. (pip's own resolution of the core install, `pip install --dry-run --ignore-installed -e .`,
picks the same 59 distributions + this package; installing them for real would unpack ~5.3 GB of torch, nvidia and
triton wheels, minutes of I/O per CI run.)
There: `import minivision_hf` pulls in no extra, the extras' modules are not importable, README's usage snippet
(pipeline and Auto classes) runs, and a script that needs an extra says which one to install.
"""

import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from minivision_hf.extras import EXTRA_OF_MODULE, add_install_hint, install_hint
from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
# Modules of the extras that must not be importable in a core install (tqdm is also a transformers dependency).
EXTRA_MODULES = sorted(m for m, extra in EXTRA_OF_MODULE.items() if m != "tqdm")


def requirement_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that `requirements` need, transitively: {canonical name: distribution}.

    A requirement's own requirements count when they have no marker or their marker holds for this interpreter with
    one of the extras asked for (or none)."""
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        dist, extras_done = found.get(name, (None, set()))
        if dist is not None and set(req.extras) <= extras_done:
            continue
        dist = dist or metadata.distribution(req.name)
        extras = extras_done | set(req.extras)
        found[name] = (dist, extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(sub)
    return {name: dist for name, (dist, _) in found.items()}


def link_distributions(dists: dict[str, metadata.Distribution], site: Path) -> None:
    """Expose exactly `dists` in the folder `site` by symlinks to their installed files.

    A top-level entry (package folder, module, .pth, .dist-info) is linked whole when only these distributions own
    it; a folder shared with another distribution (a namespace package, `__pycache__`) is recreated and only these
    distributions' own files in it are linked."""
    wanted = set(dists)
    owners: dict[tuple[Path, str], set[str]] = {}
    for root in {Path(d.locate_file("")) for d in dists.values()}:
        for other in metadata.distributions(path=[str(root)]):
            other_name = canonicalize_name(other.metadata["Name"])
            for top in {file.parts[0] for file in other.files or []}:
                owners.setdefault((root, top), set()).add(other_name)
    for name, dist in dists.items():
        root = Path(dist.locate_file(""))
        if dist.files is None:
            raise RuntimeError(f"{name} has no RECORD: cannot tell its files apart")
        for file in dist.files:
            if file.parts[0] == "..":  # console scripts in bin/: not needed to import
                continue
            whole = owners[(root, file.parts[0])] <= wanted
            relative = Path(file.parts[0]) if whole else Path(*file.parts)
            target = site / relative
            if target.is_symlink() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / relative)


def core_venv_env() -> dict:
    return {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> Path:
    """A venv with pyproject's core dependencies (and what they need) plus this package, and nothing else."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    closure = requirement_closure(PYPROJECT["dependencies"])
    link_distributions(closure, site)
    # The package itself, editable, built offline with the setuptools of this interpreter (on PYTHONPATH for the
    # build only, unless the core closure already has it: torch requires setuptools).
    build_env = core_venv_env()
    if "setuptools" not in closure:
        tools = venv.parent / "build_tools"
        link_distributions({"setuptools": metadata.distribution("setuptools")}, tools)
        build_env["PYTHONPATH"] = str(tools)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", "-e", str(REPO_ROOT)],
        check=True, env=build_env, capture_output=True,
    )  # fmt: skip
    return python


def run_core(python: Path, code: str, cwd: Path, timeout: int = 300) -> dict:
    """Run `code` with the core venv's interpreter in `cwd`; the code prints one JSON line last."""
    proc = subprocess.run([python, "-c", textwrap.dedent(code)], cwd=cwd, env=core_venv_env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"core venv run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def readme_usage_snippet() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Use it\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


LOADED_EXTRAS = f"sorted(m for m in sys.modules if m.split('.')[0] in {EXTRA_MODULES!r})"


def test_extras_table_matches_pyproject():
    extras = {name: {canonicalize_name(Requirement(r).name) for r in reqs}
              for name, reqs in PYPROJECT["optional-dependencies"].items()}  # fmt: skip
    assert set(extras) == {"train", "onnx", "demo", "dev"}
    # dev = the other three extras (by referring to this package with them) + the test tools
    dev_self = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"] if "minivision" in r]
    assert [sorted(r.extras) for r in dev_self] == [["demo", "onnx", "train"]]
    extras["dev"].discard("minivision-hf")
    for extra, dists in extras.items():
        modules = {canonicalize_name(m) for m, e in EXTRA_OF_MODULE.items() if e == extra}
        assert modules == dists, f"minivision_hf/extras.py and pyproject disagree on the '{extra}' extra"
    core = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    assert core == {"torch", "torchvision", "transformers", "huggingface-hub", "safetensors", "numpy", "pillow"}


def test_install_hint_names_the_extra():
    missing = ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    assert install_hint(missing).startswith("this needs the 'onnx' extra: pip install 'minivision-hf[onnx]'")
    add_install_hint(missing)
    add_install_hint(missing)  # once only
    assert str(missing).count("pip install") == 1 and str(missing).startswith("No module named 'onnxruntime'; ")
    # transformers' own message when Trainer lacks accelerate
    trainer = ImportError("Using the `Trainer` with `PyTorch` requires `accelerate>=1.1.0`: Please run `pip install`")
    assert "'minivision-hf[train]'" in install_hint(trainer)
    assert install_hint(ModuleNotFoundError("No module named 'foo'", name="foo")) is None
    assert install_hint(ImportError("cannot import name 'x' from 'datasets'")) is None  # installed, wrong version
    assert install_hint(ValueError("datasets requires")) is None


def test_core_closure_leaves_the_extras_out():
    closure = requirement_closure(PYPROJECT["dependencies"])
    assert {"torch", "transformers", "safetensors", "pillow"} <= set(closure)
    leaked = set(closure) & {canonicalize_name(m) for m in EXTRA_MODULES}
    assert not leaked, f"the core dependencies pull in extras: {leaked}"


@pytest.mark.slow
def test_core_venv_imports_the_package_without_extras(core_python, tmp_path):
    result = run_core(core_python, f"""
        import importlib.metadata, importlib.util, json, sys
        import minivision_hf
        from minivision_hf import configuration_minivision, image_processing_minivision, modeling_minivision, extras
        if importlib.util.find_spec("minivision_hf.pipeline_minivision"):
            import minivision_hf.pipeline_minivision
        loaded = {LOADED_EXTRAS}
        importable = [m for m in {EXTRA_MODULES!r} if importlib.util.find_spec(m) is not None]
        print(json.dumps({{"file": minivision_hf.__file__, "version": importlib.metadata.version("minivision-hf"),
                          "loaded": loaded, "importable": importable}}))
    """, cwd=tmp_path)  # fmt: skip
    assert Path(result["file"]).resolve() == REPO_ROOT / "minivision_hf" / "__init__.py"
    assert result["version"] == PYPROJECT["version"]
    assert result["loaded"] == [], "importing the package imported modules of the extras"
    assert result["importable"] == [], "the core venv is not core-only"


@pytest.mark.slow
def test_core_venv_runs_readme_usage_snippet(core_python):
    code = readme_usage_snippet() + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{"logits": list(logits.shape), "top3": top3, "drawn": drawn[:1], "loaded": {LOADED_EXTRAS}}}))
    """)  # fmt: skip
    result = run_core(core_python, code, cwd=REPO_ROOT)
    assert result["logits"] == [1, 10]
    assert len(result["top3"]) == 3 and all(set(p) == {"label", "score"} for p in result["top3"])
    assert result["drawn"][0]["label"] in {str(d) for d in range(10)}
    assert result["loaded"] == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "extra"),
    [(["-m", "scripts.eval_model"], "train"), (["-m", "scripts.export_onnx"], "onnx"), (["scripts/train.py"], "train"),
     (["spaces_app/app.py"], "demo")],  # fmt: skip
)
def test_core_venv_script_names_the_missing_extra(core_python, command, extra):
    proc = subprocess.run([core_python, *command, "--help"], cwd=REPO_ROOT, env=core_venv_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ModuleNotFoundError") and f"pip install 'minivision-hf[{extra}]'" in last_line


@pytest.mark.slow
def test_core_venv_converts_a_seed_checkpoint(core_python, tmp_path):
    import torch
    from transformers import AutoModelForImageClassification

    from tests.test_convert import seed_inputs, seed_sequential, trained_like

    seed = trained_like(seed_sequential())
    torch.save(seed.state_dict(), tmp_path / "Mini-Vision-V2.pth")
    proc = subprocess.run([core_python, "-m", "scripts.convert_seed_checkpoint", tmp_path / "Mini-Vision-V2.pth",
                           "--output", tmp_path / "converted"], cwd=REPO_ROOT, env=core_venv_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "converted").eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values=seed_inputs()).logits, seed(seed_inputs()))
