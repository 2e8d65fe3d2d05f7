"""Publish a Mini-Vision-V2 release to the Hugging Face Hub: the model repo, then its Gradio Space pinned to it.

    python -m scripts.push_to_hub --repo-id NS/NAME [--space-id NS/NAME-demo] [--release DIR] [--private]
        [--commit-message MSG] [--dry-run OUT_DIR]

What goes up (staged in a temporary folder, never the repo root itself):
- model repo NS/NAME: config.json, model.safetensors, preprocessor_config.json; the code files their `auto_map`
  and `custom_pipelines` name (and what those import), copied from the minivision_hf/ package, the single source;
  README.md made from the release's model_card.md; assets/ (images), records/ (run and evaluation JSON, TensorBoard
  events), onnx/ (model.onnx, model_quantized.onnx, export_report.json: the names Transformers.js and Optimum use).
- variants: every folder `variants/<name>/` of the release holding a config.json (a complete save_pretrained folder
  with its own model_card.md and records/, made by scripts/make_variant.py) goes to the branch <name> of the same
  model repo, staged and checked like the root (`from_pretrained(NS/NAME, revision="best")`); --no-variants skips
  them, and the root card's section pointing to them.
- Space NS/NAME-demo (Gradio): spaces_app/ minus caches, plus model_source.json
  {"model": "NS/NAME", "revision": "<sha of the model commit just made>", "variants": {"best": {"model": "NS/NAME",
  "revision": "<sha of the best branch's commit>"}}, "default": "best"} so the demo loads exactly those commits and
  serves the variant by default (and, when the Hub allows it, Space variables MINIVISION_MODEL / MINIVISION_REVISION
  and MINIVISION_<NAME>_REVISION with the same values).

Each repo gets ONE commit that mirrors the staged folder (remote files that are no longer staged are deleted,
.gitattributes excepted). Before anything is sent, the script refuses when the staged model folder does not load
with trust_remote_code=True in a fresh interpreter (offline, minivision_hf not importable) and classify an image,
or when the accuracy/loss in the model card's model-index differ from records/eval_test.json.

Token: HF_TOKEN or the saved login (`hf auth login`); never printed. HF_ENDPOINT is honoured (huggingface_hub
reads it at import). `--dry-run OUT_DIR` stages into a new or empty OUT_DIR (model/, space/, variants/<name>/; not
inside --release or --space-src, where the next push would publish it), runs the checks, lists the files and sends
no request (no token needed); a refused dry run leaves OUT_DIR empty. A failed upload says which repo was committed;
rerunning is safe.
Exit status: 0 done, 1 upload failed, 2 refused before sending anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "minivision_hf"  # the single source of the remote-code files
DEFAULT_SPACE_SRC = REPO_ROOT / "spaces_app"

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
MODEL_CARD = "model_card.md"  # at the release root; becomes the repo's README.md
EVAL_RECORD = "records/eval_test.json"  # top-level "accuracy" and "loss"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
ONNX_FILES = ("model.onnx", "model_quantized.onnx", "export_report.json")  # what scripts/export_onnx.py writes
RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".txt", ".md", ".yaml", ".yml"}
MODEL_SOURCE_FILE = "model_source.json"  # read by spaces_app/app.py when MINIVISION_MODEL is not set
VARIANTS_SECTION = "Other revisions of this repository"  # the root card's pointer to the variant branches
LOAD_CHECK_TIMEOUT_S = 300  # a fresh interpreter importing torch + transformers takes ~5 s here
CARD_REPO_ID = "minivision/mini-vision-v2"  # the id in the committed cards' snippets (make_model_card's default)


class ReleaseError(Exception):
    """The release cannot be published as it is; nothing has been sent."""


# -- staging ----------------------------------------------------------------------------------------------------


def _skip(path: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in path.parts) or path.suffix == ".pyc"


def _copy_tree(src: Path, dst: Path, keep=lambda p: True) -> None:
    """Copy the files under src that `keep` accepts (hidden files and caches never), keeping the layout."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not _skip(rel) and keep(path):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)


def _prepare_out_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ReleaseError(f"{out_dir} exists and is not empty: stage into an empty or new folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # an unwritable parent, a file on the way, a read-only file system
        raise ReleaseError(f"cannot create {out_dir}: {e.strerror or e}") from None
    return out_dir


def _auto_map_modules(json_file: Path) -> set[str]:
    """Module names of the remote code a config names: its auto_map ({"AutoModel": "modeling_x.Cls"} -> {"modeling_x"})
    and its custom_pipelines ({"image-classification": {"impl": "pipeline_x.Cls", ...}} -> {"pipeline_x"})."""
    config = json.loads(json_file.read_text())
    auto_map = config.get("auto_map") or {}
    pipelines = [task.get("impl") for task in (config.get("custom_pipelines") or {}).values()]
    modules = set()
    for refs in [*auto_map.values(), *pipelines]:
        for ref in refs if isinstance(refs, list | tuple) else [refs]:
            if ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0])  # "repo--module.Class" names a remote repo
    return modules


def _with_relative_imports(source: Path) -> set[Path]:
    """source and the sibling modules it imports relatively, recursively: what transformers fetches with it."""
    found, todo = set(), [source]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        if not path.is_file():
            raise ReleaseError(f"{path.name} is imported by the remote code but {path} does not exist")
        found.add(path)
        text = path.read_text(encoding="utf-8")
        # the two forms transformers.dynamic_module_utils.get_relative_imports recognises
        names = re.findall(r"^\s*import\s+\.(\S+)\s*$", text, flags=re.MULTILINE)
        names += re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE)
        todo += [path.parent / f"{name}.py" for name in names]
    return found


def name_repo(readme: Path, repo_id: str | None, space_id: str | None = None) -> None:
    """Point a staged card's snippets and links (written for CARD_REPO_ID and its Space CARD_REPO_ID-demo) at the repo
    and the Space being published."""
    text = readme.read_text()
    renamed = text.replace(f"{CARD_REPO_ID}-demo", space_id) if space_id else text
    renamed = renamed.replace(CARD_REPO_ID, repo_id) if repo_id else renamed
    if renamed != text:
        readme.write_text(renamed)


def stage_model_repo(release_dir: Path, out_dir: Path, code_dir: Path = PACKAGE_DIR,
                     repo_id: str | None = None, with_variants: bool = True) -> Path:  # fmt: skip
    """Write the model repo's files from `release_dir` into `out_dir` (new or empty) and return it; with `repo_id`,
    the card's snippets name that repo; without `with_variants` (nothing published on the variant branches), the
    card's section pointing to them is left out."""
    release_dir, code_dir = Path(release_dir), Path(code_dir)
    if not release_dir.is_dir():
        raise ReleaseError(f"release folder {release_dir} does not exist")
    missing = [name for name in REQUIRED_FILES if not (release_dir / name).is_file()]
    if missing:
        raise ReleaseError(f"release folder {release_dir} lacks {', '.join(missing)} (save_pretrained writes them)")
    card = release_dir / MODEL_CARD
    if not card.is_file():
        raise ReleaseError(
            f"no {MODEL_CARD} in {release_dir}: the model card (the repo's README.md, with the model-index results) "
            "is generated with the release; create it before publishing"
        )
    out_dir = _prepare_out_dir(out_dir)
    for name in REQUIRED_FILES:
        shutil.copy2(release_dir / name, out_dir / name)
    shutil.copy2(card, out_dir / "README.md")
    name_repo(out_dir / "README.md", repo_id)
    if not with_variants:
        drop_card_section(out_dir / "README.md", VARIANTS_SECTION)

    modules = _auto_map_modules(release_dir / "config.json") | _auto_map_modules(
        release_dir / "preprocessor_config.json"
    )
    if not modules:
        raise ReleaseError(f"{release_dir}/config.json has no auto_map: the repo would not load as remote code")
    code_files: set[Path] = set()
    for module in sorted(modules):
        source = code_dir / f"{module.replace('.', '/')}.py"
        if not source.is_file():
            raise ReleaseError(f"auto_map names {module}, but {source} does not exist")
        code_files |= _with_relative_imports(source)
    for source in sorted(code_files):
        shutil.copy2(source, out_dir / source.name)
        shipped = release_dir / source.name
        if shipped.is_file() and shipped.read_bytes() != source.read_bytes():
            print(f"note: {shipped} differs from {source}; staging the package's copy (the single source)")

    if (release_dir / "assets").is_dir():
        _copy_tree(release_dir / "assets", out_dir / "assets", lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
    if (release_dir / "records").is_dir():
        _copy_tree(
            release_dir / "records",
            out_dir / "records",
            lambda p: p.suffix.lower() in RECORD_SUFFIXES or p.name.startswith("events.out.tfevents"),
        )
    if (release_dir / "onnx").is_dir():  # the conventional names only: a stale onnx/model_int8.onnx stays behind
        _copy_tree(release_dir / "onnx", out_dir / "onnx", lambda p: p.name in ONNX_FILES)
    return out_dir


def stage_space(space_src: Path, out_dir: Path, model_id: str, revision: str | None,
                space_id: str | None = None, variants: dict[str, str | None] | None = None) -> Path:  # fmt: skip
    """Write the Space's files from `space_src` into `out_dir` (new or empty), pinned to model_id@revision and to
    each variant branch's revision in `variants` (model_source.json); with `space_id`, its README's snippets name
    that Space."""
    from huggingface_hub.repocard import metadata_load, metadata_save

    space_src = Path(space_src)
    readme = space_src / "README.md"
    if not readme.is_file():
        raise ReleaseError(f"{space_src} has no README.md (a Space's settings live in its YAML header)")
    try:
        settings = metadata_load(readme) or {}
    except Exception as e:
        raise ReleaseError(f"{readme}: unreadable YAML header: {e}") from None
    if settings.get("sdk") != "gradio":
        raise ReleaseError(f"{readme}: the YAML header must say `sdk: gradio` (found {settings.get('sdk')!r})")
    app_file = settings.get("app_file", "app.py")
    if not (space_src / app_file).is_file():
        raise ReleaseError(f"{space_src} has no {app_file} (the README's app_file)")
    if not (space_src / "requirements.txt").is_file():
        print(f"note: {space_src} has no requirements.txt; the Space will only have the SDK's packages")
    out_dir = _prepare_out_dir(out_dir)
    _copy_tree(space_src, out_dir)
    name_repo(out_dir / "README.md", model_id, space_id)
    metadata_save(out_dir / "README.md", {**settings, "models": [model_id]})  # the Hub links the Space to the model
    write_model_source(out_dir, model_id, revision, variants)
    return out_dir


def drop_card_section(card: Path, heading: str) -> None:
    """Remove the `## heading` section (up to the next `## ` heading) from the card, where it has one."""
    text = card.read_text()
    start = text.find(f"\n## {heading}\n")
    if start < 0:
        return
    end = text.find("\n## ", start + 1)
    card.write_text(text[:start] + (text[end:] if end >= 0 else "\n"))


def find_variants(release_dir: Path) -> dict[str, Path]:
    """{name: folder} for every variants/<name>/ of the release that holds a config.json (a save_pretrained folder);
    not the hidden .<name>.staging / .<name>.previous folders a killed make_variant can leave."""
    folder = Path(release_dir) / "variants"
    if not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir())
            if not path.name.startswith(".") and (path / "config.json").is_file()}  # fmt: skip


def write_model_source(
    space_dir: Path, model_id: str, revision: str | None, variants: dict[str, str | None] | None = None
) -> None:
    """model_source.json: the root release's pin and, per variant, its branch's pin; the app serves `variants.best` by
    default (`default` is informational)."""
    source = {"model": model_id, "revision": revision}
    if variants:
        source["variants"] = {name: {"model": model_id, "revision": rev} for name, rev in variants.items()}
        source["default"] = "best" if "best" in variants else next(iter(variants))
    (Path(space_dir) / MODEL_SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")


# -- checks -----------------------------------------------------------------------------------------------------

# Prelude for a fresh interpreter: a meta-path finder refuses minivision_hf, so what follows runs as on a machine
# with only transformers, even when the package is pip-installed (editable) in the environment. The tests use it too.
BLOCK_PACKAGE = r"""
import importlib.abc, sys

class _NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "minivision_hf":
            raise ModuleNotFoundError(f"{name} is blocked: the release must load as remote code", name=name)

sys.meta_path.insert(0, _NoPackage())
"""

# Runs in a fresh `python -I` (no PYTHONPATH, no cwd on sys.path) with HF_HUB_OFFLINE=1, after BLOCK_PACKAGE.
_LOAD_CHECK = BLOCK_PACKAGE + r"""
import json

import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

folder = sys.argv[1]
model, info = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
if bad:
    sys.exit(f"model.safetensors does not match the model code: {bad}")
model.eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.new("L", (28, 28), 0)
ImageDraw.Draw(image).line([(14, 4), (14, 23)], fill=255, width=3)  # a "1", white ink on black as in MNIST
with torch.no_grad():
    logits = model(**processor(image, return_tensors="pt")).logits
classify = pipeline("image-classification", model=folder, trust_remote_code=True)
out = classify(image, top_k=len(model.config.id2label))
labels = set(model.config.id2label.values())
ok = (
    logits.shape == (1, len(labels))
    and bool(torch.isfinite(logits).all())
    and {o["label"] for o in out} == labels
    and all(0.0 <= o["score"] <= 1.0 for o in out)
    and abs(sum(o["score"] for o in out) - 1.0) < 1e-3
    and out[0]["label"] == model.config.id2label[int(logits.argmax())]
)
print("LOAD_CHECK " + json.dumps({
    "ok": ok, "model_class": type(model).__name__, "model_module": type(model).__module__,
    "processor_class": type(processor).__name__, "top": out[0], "labels": sorted(labels),
}))
"""


def check_release(staged_dir: Path) -> dict:
    """Load the staged model folder as remote code in a fresh interpreter and classify one image; return a summary.

    Raises ReleaseError when it does not load, its weights do not match the code, or its outputs are malformed.
    """
    staged_dir = Path(staged_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="minivision-load-check-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp) / "hf_home"), TRANSFORMERS_VERBOSITY="error")
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _LOAD_CHECK, str(staged_dir)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=LOAD_CHECK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise ReleaseError(f"load check of {staged_dir} took more than {LOAD_CHECK_TIMEOUT_S} s") from None
    result = next(
        (line[len("LOAD_CHECK ") :] for line in proc.stdout.splitlines() if line.startswith("LOAD_CHECK ")), None
    )
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ReleaseError(
            f"the staged model does not load with trust_remote_code=True in a fresh interpreter "
            f"(offline, minivision_hf not importable):\n{tail}"
        )
    summary = json.loads(result)
    if not summary["ok"] or not summary["model_module"].startswith("transformers_modules"):
        raise ReleaseError(f"the staged model loads but misbehaves: {summary}")
    return summary


def _decimals(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 12


def _same_number(card_value, record_value: float, min_decimals: int) -> bool:
    """The card's value equals the record's up to the card's rounding, which must keep at least `min_decimals`
    decimals: 0.9921 stands for 0.99213, but 0.99 does not (YAML drops trailing zeros, hence the minimum)."""
    try:
        card_value = float(card_value)
    except (TypeError, ValueError):
        return False
    tolerance = 0.5 * 10 ** -max(_decimals(card_value), min_decimals) + 1e-12
    return math.isclose(card_value, record_value, abs_tol=tolerance)


def check_card_numbers(staged_dir: Path) -> dict[str, float]:
    """Compare the model card's model-index accuracy and loss with records/eval_test.json; return the record.

    Raises ReleaseError when the record is missing, the card lacks either metric, or a number differs beyond
    rounding to 4 decimals (accuracy may also be a percentage, rounded to 2 decimals).
    """
    from huggingface_hub import ModelCard

    staged_dir = Path(staged_dir)
    record_file = staged_dir / EVAL_RECORD
    if not record_file.is_file():
        raise ReleaseError(f"no {EVAL_RECORD} in the release: the card's numbers cannot be checked")
    try:
        record = json.loads(record_file.read_text())
        numbers = {"accuracy": float(record["accuracy"]), "loss": float(record["loss"])}
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{EVAL_RECORD} needs numeric top-level 'accuracy' and 'loss' ({e!r})") from None
    try:
        results = ModelCard.load(staged_dir / "README.md").data.eval_results or []
    except Exception as e:
        raise ReleaseError(f"{MODEL_CARD}: unreadable metadata: {e}") from None
    if any(r.dataset_split == "test" for r in results):
        results = [r for r in results if r.dataset_split == "test"]
    problems = []
    for metric, expected in numbers.items():
        found = [r.metric_value for r in results if r.metric_type == metric]
        if not found:
            problems.append(f"{metric}: not in the card's model-index (expected {expected})")
        for value in found:
            as_percent = metric == "accuracy" and _same_number(value, 100 * expected, min_decimals=2)
            if not (_same_number(value, expected, min_decimals=4) or as_percent):
                problems.append(f"{metric}: card says {value}, {EVAL_RECORD} says {expected}")
    if problems:
        raise ReleaseError(f"{MODEL_CARD} disagrees with {EVAL_RECORD}:\n  " + "\n  ".join(problems))
    return numbers


# -- upload -----------------------------------------------------------------------------------------------------


def _list_files(title: str, folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    print(f"{title} ({len(files)} files, {sum(p.stat().st_size for p in files):,} bytes):")
    for path in files:
        print(f"  {path.stat().st_size:>12,}  {path.relative_to(folder).as_posix()}")


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _status(error: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error; None for anything else (e.g. a dropped connection)."""
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(error, "response", None) if isinstance(error, HfHubHTTPError) else None
    return None if response is None else response.status_code


def _describe(error: BaseException, token: str | None) -> str:
    status = _status(error)
    if status == 401:
        return "token rejected (HTTP 401): use a valid write token in HF_TOKEN or `hf auth login`"
    if status is not None:
        url = error.response.request.url
        detail = f"HTTP {status} from {error.response.request.method} {url.copy_with(query=None)}"
        server_message = (getattr(error, "server_message", None) or "").strip()
        return _redact(f"{detail}: {server_message}" if server_message else detail, token)
    return _redact(f"{type(error).__name__}: {' '.join(str(error).split())}", token)


def push(
    model_dir: Path,
    space_dir: Path,
    repo_id: str,
    space_id: str,
    token: str,
    private: bool,
    commit_message: str,
    variant_dirs: dict[str, Path] | None = None,
) -> int:
    """Create both repos if needed and commit each in one go; report what was committed. Returns an exit status."""
    from huggingface_hub import HfApi, constants

    api = HfApi(token=token)
    done: list[str] = []
    step = f"model repo {repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        model_commit = api.upload_folder(
            repo_id=repo_id, folder_path=model_dir, commit_message=commit_message, delete_patterns="*"
        )
        done.append(f"model repo {repo_id} at {model_commit.oid} ({model_commit.commit_url})")
        print(f"published model repo {repo_id} at {model_commit.oid}\n  {model_commit.commit_url}")

        variant_commits = {}
        for name, folder in (variant_dirs or {}).items():
            step = f"branch {name!r} of model repo {repo_id}"
            api.create_branch(repo_id, branch=name, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=name, delete_patterns="*",
                                       commit_message=f"{commit_message} (variant {name})")  # fmt: skip
            variant_commits[name] = commit.oid
            done.append(f"branch {name} of {repo_id} at {commit.oid} ({commit.commit_url})")
            print(f"published variant {name} as branch {name} of {repo_id} at {commit.oid}\n  {commit.commit_url}")

        step = f"Space {space_id}"
        write_model_source(space_dir, repo_id, model_commit.oid, variant_commits)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        space_commit = api.upload_folder(
            repo_id=space_id,
            repo_type="space",
            folder_path=space_dir,
            commit_message=f"{commit_message} (demo of {repo_id}@{model_commit.oid[:12]})",
            delete_patterns="*",
        )
        done.append(f"Space {space_id} at {space_commit.oid} ({space_commit.commit_url})")
        print(f"published Space {space_id} at {space_commit.oid}\n  {space_commit.commit_url}")
    except Exception as e:
        print(f"ERROR: publishing the {step} to {constants.ENDPOINT} failed: {_describe(e, token)}", file=sys.stderr)
        for line in done:
            print(f"  committed:     {line}", file=sys.stderr)
        print(
            f"  NOT committed: {step} (Hub commits are atomic: nothing of it, or all if only the answer was lost)",
            file=sys.stderr,
        )
        if not done:
            print(f"  NOT committed: Space {space_id} (not attempted)", file=sys.stderr)
        if _status(e) == 401:
            print("Fix the token, then rerun the same command.", file=sys.stderr)
        else:
            print(
                "Rerun the same command to retry: existing repos are reused, unchanged files are not sent again.",
                file=sys.stderr,
            )
        return 1

    # Best effort: Space variables win over model_source.json in the app, and carry the same pin.
    try:
        api.add_space_variable(space_id, "MINIVISION_MODEL", repo_id)
        api.add_space_variable(space_id, "MINIVISION_REVISION", model_commit.oid)
        for name, oid in variant_commits.items():
            api.add_space_variable(space_id, f"MINIVISION_{name.upper()}_REVISION", oid)
        print(f"set Space variables MINIVISION_MODEL={repo_id} MINIVISION_REVISION={model_commit.oid}"
              + "".join(f" MINIVISION_{n.upper()}_REVISION={oid}" for n, oid in variant_commits.items()))  # fmt: skip
    except Exception as e:
        print(f"note: Space variables not set ({_describe(e, token)}); the Space reads {MODEL_SOURCE_FILE}")
    variants_done = "".join(f", branch {name}@{oid}" for name, oid in variant_commits.items())
    print(f"done: {repo_id}@{model_commit.oid}{variants_done} and its Space {space_id}@{space_commit.oid}")
    return 0


# -- command line -----------------------------------------------------------------------------------------------


def dry_run_staging(out_dir: Path) -> Path:
    """The staging folder of a dry run into `out_dir`: beside it, emptied (a killed dry run's is removed)."""
    from minivision_hf.training import staging_names

    staging, _ = staging_names(out_dir.resolve())  # replace_folder's naming: hidden, so never taken for a variant
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def move_dry_run_into_place(staging: Path, out_dir: Path) -> None:
    """The checked dry run becomes `out_dir` (new, or empty as the arguments required) in one rename; where the empty
    folder cannot be replaced (".", a link to a folder, a mount point) what it holds is moved into it instead."""
    try:
        if out_dir.is_dir() and not out_dir.is_symlink():
            out_dir.rmdir()
        os.rename(staging, out_dir)
        return
    except OSError:  # "." (EINVAL), a link (ENOTDIR/EEXIST), a mount point (EBUSY), another file system (EXDEV)
        out_dir.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        shutil.move(item, out_dir / item.name)
    staging.rmdir()


def stage_check_and_push(args: argparse.Namespace, out: Path, space_id: str) -> int:
    """Stage the model repo, its variants and the Space in `out`, check them, then push (or, for a dry run, move
    them into OUT_DIR). Returns the exit status."""
    token = None
    try:
        model_dir = stage_model_repo(Path(args.release), out / "model", repo_id=args.repo_id,
                                     with_variants=not args.no_variants)  # fmt: skip
        numbers = check_card_numbers(model_dir)
        print(f"model card matches {EVAL_RECORD}: accuracy {numbers['accuracy']}, loss {numbers['loss']}")
        variant_dirs = {}
        for name, folder in ({} if args.no_variants else find_variants(Path(args.release))).items():
            variant_dirs[name] = stage_model_repo(folder, out / "variants" / name, repo_id=args.repo_id)
            numbers = check_card_numbers(variant_dirs[name])
            print(f"variant {name}: model card matches {EVAL_RECORD}: accuracy {numbers['accuracy']}, "
                  f"loss {numbers['loss']}")  # fmt: skip
        # pinned as the push will pin it, each revision filled in once its commit exists
        space_dir = stage_space(Path(args.space_src), out / "space", args.repo_id, None, space_id,
                                {name: None for name in variant_dirs})  # fmt: skip
        if not args.dry_run:
            from huggingface_hub import constants, get_token

            if constants.HF_HUB_OFFLINE:
                raise ReleaseError("HF_HUB_OFFLINE is set: unset it to publish (or use --dry-run)")
            token = get_token()
            if not token:
                raise ReleaseError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
        for name, staged in {"root release": model_dir, **variant_dirs}.items():
            summary = check_release(staged)
            print(
                f"load check passed ({name}): {summary['model_class']} from remote code, "
                f"labels {','.join(summary['labels'])}, top prediction {summary['top']['label']}"
            )
    except ReleaseError as e:
        print(f"REFUSED, nothing was sent: {_redact(str(e), token)}", file=sys.stderr)
        return 2  # a dry run's OUT_DIR is left new or empty: the same dry run can be retried
    _list_files(f"model repo {args.repo_id}", model_dir)
    for name, staged in variant_dirs.items():
        _list_files(f"model repo {args.repo_id}, branch {name}", staged)
    _list_files(f"Space {space_id}", space_dir)
    if args.dry_run:
        move_dry_run_into_place(out, Path(args.dry_run))
        print(f"dry run: staged in {args.dry_run}; nothing was sent ({MODEL_SOURCE_FILE} gets the revision at push "
              "time)")  # fmt: skip
        return 0
    return push(model_dir, space_dir, args.repo_id, space_id, token, args.private, args.commit_message,
                variant_dirs)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-id", required=True, help="model repo to publish to, NAMESPACE/NAME")
    parser.add_argument("--space-id", default=None, help="Gradio Space for the demo (default: REPO_ID + '-demo')")
    parser.add_argument("--release", default=str(REPO_ROOT), help="release folder (default: the repo root)")
    parser.add_argument("--space-src", default=str(DEFAULT_SPACE_SRC), help="Space sources (default: spaces_app/)")
    parser.add_argument("--private", action="store_true", help="create missing repos as private (default: public)")
    parser.add_argument(
        "--commit-message", default="Publish Mini-Vision-V2 release", help="model commit title (default: %(default)s)"
    )
    parser.add_argument(
        "--dry-run",
        metavar="OUT_DIR",
        default=None,
        help="stage into a new or empty OUT_DIR (model/, space/, variants/<name>/), check, send nothing",
    )
    parser.add_argument("--no-variants", action="store_true",
                        help="publish the root release only, not the release's variants/<name>/ branches (its "
                             "card then leaves out its section pointing to them)")  # fmt: skip
    args = parser.parse_args(argv)
    space_id = args.space_id or f"{args.repo_id}-demo"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for repo in (args.repo_id, space_id):
        if repo.count("/") != 1 or not all(repo.split("/")):
            parser.error(f"repo ids are NAMESPACE/NAME, got {repo!r}")
        try:  # the Hub's own rules, checked by the client only when it sends: refuse before staging and load checks
            validate_repo_id(repo)
        except HFValidationError as e:
            flag = "--repo-id" if repo == args.repo_id else "--space-id" + ("" if args.space_id else " (REPO_ID-demo)")
            parser.error(f"{flag}: {e}")

    if args.dry_run is not None and not args.dry_run.strip():  # "" is falsy: it published instead of staging
        parser.error("--dry-run: OUT_DIR is empty (an unset variable?); give a new or empty folder to stage into")
    if args.dry_run and Path(args.dry_run).exists():
        if not Path(args.dry_run).is_dir() or any(Path(args.dry_run).iterdir()):
            parser.error(f"--dry-run {args.dry_run}: give an empty or new folder to stage into")
    for flag, folder in (("--release", args.release), ("--space-src", args.space_src)) if args.dry_run else ():
        if Path(folder).resolve() in Path(args.dry_run).resolve().parents:  # its records/, assets/, spaces_app/...
            parser.error(f"--dry-run {args.dry_run} is inside {flag} {folder}: the next push would publish the staged "
                         "copy with the release; stage outside it (e.g. /tmp/staged)")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="minivision-push-") as tmp:
        # A dry run stages beside OUT_DIR and is moved into it once checked: a killed one leaves OUT_DIR as it was
        # (the next run removes its staging folder), never a half-staged folder that blocks the retry.
        out = dry_run_staging(Path(args.dry_run)) if args.dry_run else Path(tmp)
        try:
            return stage_check_and_push(args, out, space_id)
        finally:
            if args.dry_run:
                shutil.rmtree(out, ignore_errors=True)  # refused or interrupted (once moved into place: gone)


if __name__ == "__main__":
    sys.exit(main())
