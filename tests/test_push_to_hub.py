"""scripts/push_to_hub.py against a loopback Hub (tests/hub_server.py), checked with the real clients.

Every client runs in a subprocess with HF_ENDPOINT pointing at the server (huggingface_hub reads it at import) and
its own HF_HOME. The release pushed is a randomly initialised model with a generated card, unless the repo root
holds a complete trained release (config.json, model.safetensors, preprocessor_config.json, model_card.md,
records/eval_test.json): then that one is pushed, and if its recorded accuracy is at least 90%, the digits in
tests/fixtures/digits/*.png (label in the file name: `..._label7_...png` or `7_...png`) must be read back correctly
through the Hub.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import HubServer  # noqa: E402

from scripts.push_to_hub import (  # noqa: E402
    BLOCK_PACKAGE,
    ReleaseError,
    check_card_numbers,
    find_variants,
    stage_model_repo,
    stage_space,
)

TOKEN = "hf_test_4f2a9c"
REPO_ID = "tester/mini-vision-v2"
SPACE_ID = "tester/mini-vision-v2-demo"
DIGITS_DIR = REPO_ROOT / "tests" / "fixtures" / "digits"
MIN_DIGIT_ACCURACY = 0.9  # trained release only: fixture digits read back through the Hub
TRAINED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "model_card.md",
    "records/eval_test.json",
)
CODE_FILES = {"configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
              "pipeline_minivision.py"}  # fmt: skip

# The same guard as the script's load check: minivision_hf must not be importable, even if pip-installed.
NO_PACKAGE = (
    BLOCK_PACKAGE
    + r"""
import importlib
try:
    importlib.import_module("minivision_hf")
    PACKAGE_IMPORTABLE = True
except ModuleNotFoundError:
    PACKAGE_IMPORTABLE = False
"""
)

# Runs in a fresh `python -I` (cwd a temp dir) against the server: everything a user of the pushed repos does.
VERIFY = (
    NO_PACKAGE
    + r"""
import json, re
from huggingface_hub import ModelCard, snapshot_download
from PIL import Image, ImageDraw
from transformers import AutoModelForImageClassification, pipeline

args = json.loads(sys.argv[1])
model = AutoModelForImageClassification.from_pretrained(args["repo"], revision=args["sha"], trust_remote_code=True)
classify = pipeline("image-classification", model=args["repo"], revision=args["sha"], trust_remote_code=True)
image = Image.new("L", (28, 28), 0)
ImageDraw.Draw(image).line([(14, 4), (14, 23)], fill=255, width=3)
out = classify(image, top_k=10)
digits = [[path, classify(Image.open(path))[0]["label"]] for path in args["digits"]]
card = ModelCard.load(args["repo"])
results = card.data.eval_results or []
space = snapshot_download(args["space"], repo_type="space")
space_files = sorted(str(p.relative_to(space)) for p in __import__("pathlib").Path(space).rglob("*") if p.is_file())
# Start the Space app from its download, as the Space does: it reads model_source.json and loads the model from the
# Hub (the server) with remote code, since minivision_hf is not importable.
sys.path.insert(0, space)
import app as space_app

def top(prediction):
    return max(prediction, key=prediction.get)

space_result = {
    "source": [space_app.MODEL_SOURCE, space_app.MODEL_REVISION],
    "model_module": type(space_app.model).__module__,
    "digits": [[path, top(space_app.predict({"background": None, "layers": [], "composite": Image.open(path)}))]
               for path in args["digits"]],
    "blank": top(space_app.predict({"background": None, "layers": [], "composite": Image.new("RGBA", (400, 400))})),
    "blank_label": space_app.BLANK_LABEL,
}
print("RESULT " + json.dumps({
    "space_app": space_result,
    "package_importable": PACKAGE_IMPORTABLE,
    "model_module": type(model).__module__,
    "labels": [o["label"] for o in out],
    "scores": [o["score"] for o in out],
    "digits": digits,
    "card_metrics": {r.metric_type: r.metric_value for r in results if r.dataset_split in (None, "test")},
    "space_files": space_files,
    "space_readme": open(f"{space}/README.md").read(),
    "model_source": json.load(open(f"{space}/model_source.json")),
}))
"""
)


# -- fixtures ---------------------------------------------------------------------------------------------------


def _trained_release_at_root() -> bool:
    return all((REPO_ROOT / name).is_file() for name in TRAINED_FILES)


def _write_card(path: Path, accuracy: float, loss: float) -> None:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    common = dict(task_type="image-classification", dataset_type="mnist", dataset_name="MNIST", dataset_split="test")
    data = ModelCardData(
        model_name="mini-vision-v2",
        license="mit",
        pipeline_tag="image-classification",
        eval_results=[
            EvalResult(metric_type="accuracy", metric_value=accuracy, **common),
            EvalResult(metric_type="loss", metric_value=loss, **common),
        ],
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n# Mini-Vision-V2 (test release)\n\nTest accuracy {accuracy}.\n")
    card.save(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A complete release folder: the trained one from the repo root if there is one, else a random-init model."""
    out = tmp_path_factory.mktemp("release")
    if _trained_release_at_root():
        for name in TRAINED_FILES:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, out / name)
        if (REPO_ROOT / "assets").is_dir():
            shutil.copytree(REPO_ROOT / "assets", out / "assets")
        return out
    from PIL import Image

    import minivision_hf as mv

    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(out)
    mv.MiniVisionImageProcessor().save_pretrained(out)
    (out / "records" / "tb").mkdir(parents=True)
    (out / "records" / "eval_test.json").write_text(json.dumps({"accuracy": 0.99213, "loss": 0.02514}))
    (out / "records" / "run.json").write_text(json.dumps({"seed": 0}))
    (out / "records" / "tb" / "events.out.tfevents.1.test").write_bytes(b"\0tb")
    (out / "records" / "checkpoint.pt").write_bytes(b"not staged")
    _write_card(out / "model_card.md", accuracy=0.9921, loss=0.0251)  # rounded as a card shows them
    (out / "assets").mkdir()
    Image.new("L", (16, 16), 128).save(out / "assets" / "curves.png")
    (out / "assets" / "notes.txt").write_text("not staged")
    return out


@pytest.fixture(scope="module")
def space_src(tmp_path_factory) -> Path:
    """The real Space (spaces_app/), plus a cache folder that must not be uploaded."""
    src = tmp_path_factory.mktemp("space_src") / "spaces_app"
    shutil.copytree(REPO_ROOT / "spaces_app", src, ignore=shutil.ignore_patterns("__pycache__", "model_source.json"))
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")
    return src


SPACE_FILES = {
    p.relative_to(REPO_ROOT / "spaces_app").as_posix()
    for p in (REPO_ROOT / "spaces_app").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.name != "model_source.json"
}


@pytest.fixture
def hub():
    with HubServer(token=TOKEN) as server:
        yield server


def client_env(hub: HubServer, home: Path, token: str | None = TOKEN) -> dict:
    """Environment for a real client in a subprocess: the server as endpoint, its own HF_HOME, no proxies to it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    env.pop("HF_HUB_OFFLINE", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push(hub, tmp_path, release, space_src, *extra, token=TOKEN, home="hf_home") -> subprocess.CompletedProcess:
    argv = ["--repo-id", REPO_ID, "--release", str(release), "--space-src", str(space_src), *extra]
    return subprocess.run(
        [sys.executable, "-m", "scripts.push_to_hub", *argv],
        cwd=REPO_ROOT,
        env=client_env(hub, tmp_path / home, token),
        capture_output=True,
        text=True,
        timeout=300,
    )


def digit_label(path: Path) -> str | None:
    """The digit a fixture shows, from its name: `..._label7_....png` or `7_....png`."""
    match = re.search(r"label(\d)", path.stem) or re.match(r"(\d)", path.stem)
    return match.group(1) if match else None


# -- the loopback Hub itself (fast, stdlib only) -----------------------------------------------------------------


def call(hub, method, path, body=None, token=TOKEN, content_type="application/json"):
    """(status, headers, body bytes) of one request."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(hub.url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def ndjson(*lines) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def add(path: str, content: bytes) -> dict:
    import base64

    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


def test_hub_server_auth_atomic_commits_and_errors(hub):
    assert call(hub, "POST", "/api/repos/create", {"name": "m"}, token=None)[0] == 401
    assert call(hub, "POST", "/api/repos/create", {"name": "m"}, token="hf_wrong")[0] == 401
    assert call(hub, "POST", "/api/repos/create", {"name": "m", "organization": "me"})[0] == 200
    status, _, body = call(hub, "POST", "/api/repos/create", {"name": "m", "organization": "me"})
    assert status == 409 and json.loads(body)["url"].endswith("/me/m")
    assert call(hub, "POST", "/api/repos/create", {"name": "s", "organization": "me", "type": "space"})[0] == 400

    head = hub.head("me/m")
    commit = ndjson({"key": "header", "value": {"summary": "add"}}, add("a.txt", b"A"), add("d/b.txt", b"B"))
    nd = "application/x-ndjson"
    assert call(hub, "POST", "/api/models/me/m/commit/main", commit, token="hf_wrong", content_type=nd)[0] == 401
    status, headers, _ = call(hub, "POST", "/api/models/me/m/commit/nope", commit, content_type=nd)
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
    # all or nothing: an invalid operation after a valid one applies neither
    bad = ndjson(
        {"key": "header", "value": {"summary": "x"}},
        add("c.txt", b"C"),
        {"key": "deletedFile", "value": {"path": "zz"}},
    )
    assert call(hub, "POST", "/api/models/me/m/commit/main", bad, content_type=nd)[0] == 404
    stale = ndjson({"key": "header", "value": {"summary": "x", "parentCommit": "0" * 40}}, add("c.txt", b"C"))
    assert call(hub, "POST", "/api/models/me/m/commit/main", stale, content_type=nd)[0] == 400
    assert hub.head("me/m") == head

    hub.fail_commit(hub.commit_requests + 1, "500")
    assert call(hub, "POST", "/api/models/me/m/commit/main", commit, content_type=nd)[0] == 500
    assert hub.head("me/m") == head
    hub.fail_commit(hub.commit_requests + 1, "drop")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        call(hub, "POST", "/api/models/me/m/commit/main", commit, content_type=nd)
    assert hub.head("me/m") == head

    status, _, body = call(hub, "POST", "/api/models/me/m/commit/main", commit, content_type=nd)
    sha = json.loads(body)["commitOid"]
    assert status == 200 and hub.head("me/m") == sha and hub.files("me/m")["d/b.txt"] == b"B"
    status, headers, body = call(hub, "GET", f"/me/m/resolve/{sha}/d/b.txt", token=None)
    assert (status, body, headers["X-Repo-Commit"], headers["ETag"].startswith('"')) == (200, b"B", sha, True)
    status, headers, _ = call(hub, "HEAD", "/me/m/resolve/main/missing.txt", token=None)
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound" and headers["X-Repo-Commit"] == sha
    status, _, body = call(hub, "GET", f"/api/models/me/m/revision/{head}", token=None)
    assert status == 200 and json.loads(body)["sha"] == head
    tree = json.loads(call(hub, "GET", "/api/models/me/m/tree/main?recursive=true", token=None)[2])
    assert {e["path"]: e["type"] for e in tree} == {
        ".gitattributes": "file",
        "a.txt": "file",
        "d": "directory",
        "d/b.txt": "file",
    }
    assert ("GET", f"/me/m/resolve/{sha}/d/b.txt") in hub.requests

    assert (
        call(hub, "POST", "/api/repos/create", {"name": "p", "organization": "me", "visibility": "private"})[0] == 200
    )
    status, headers, _ = call(hub, "GET", "/api/models/me/p", token=None)
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    assert call(hub, "GET", "/api/models/me/p")[0] == 200


# -- staging and checks, in process (fast) ----------------------------------------------------------------------


def test_a_killed_make_variants_staging_folder_is_not_a_variant(tmp_path):
    """make_variant builds variants/.NAME.staging (config.json first, the long evaluation after): a kill leaves it, and
    the push took it for a variant and refused everything ("no model_card.md in variants/.best.staging")."""
    for name in ("best", ".best.staging", ".best.previous"):
        (tmp_path / "variants" / name).mkdir(parents=True)
        (tmp_path / "variants" / name / "config.json").write_text("{}")
    assert find_variants(tmp_path) == {"best": tmp_path / "variants" / "best"}


def test_stage_model_repo_takes_only_release_files(release, tmp_path):
    staged = stage_model_repo(release, tmp_path / "model")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} | CODE_FILES <= files
    assert "records/eval_test.json" in files and not any(f.endswith((".pt", ".txt")) for f in files)
    for name in CODE_FILES:  # the package is the single source of the remote code
        assert (staged / name).read_bytes() == (REPO_ROOT / "minivision_hf" / name).read_bytes()
    assert (staged / "README.md").read_bytes() == (release / "model_card.md").read_bytes()
    with pytest.raises(ReleaseError, match="not empty"):
        stage_model_repo(release, tmp_path / "model")


def test_staged_cards_name_the_repo_being_published(release, space_src, tmp_path):
    """The committed cards' snippets name the project's repo (CARD_REPO_ID); a push to another repo stages cards
    whose snippets and links name that one, for the model repo and for the Space."""
    from scripts.make_model_card import DEFAULT_REPO_ID
    from scripts.push_to_hub import CARD_REPO_ID

    assert CARD_REPO_ID == DEFAULT_REPO_ID
    card = tmp_path / "release"
    shutil.copytree(release, card)
    (card / "model_card.md").write_text((release / "model_card.md").read_text() +
                                        f'\nmodel = AutoModel.from_pretrained("{CARD_REPO_ID}")\n')  # fmt: skip
    staged = stage_model_repo(card, tmp_path / "model", repo_id="me/my-mnist")
    text = (staged / "README.md").read_text()
    assert 'from_pretrained("me/my-mnist")' in text and CARD_REPO_ID not in text
    space = stage_space(space_src, tmp_path / "space", "me/my-mnist", None)
    assert CARD_REPO_ID not in (space / "README.md").read_text()


def test_stage_space_pins_the_model_and_drops_caches(space_src, tmp_path):
    staged = stage_space(space_src, tmp_path / "space", REPO_ID, "a" * 40)
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert files == SPACE_FILES | {"model_source.json"}
    assert {"app.py", "requirements.txt", "README.md"} <= files
    assert json.loads((staged / "model_source.json").read_text()) == {"model": REPO_ID, "revision": "a" * 40}
    from huggingface_hub.repocard import metadata_load

    settings = metadata_load(staged / "README.md")
    assert settings["models"] == [REPO_ID] and settings["sdk"] == "gradio" and settings["app_file"] == "app.py"
    assert "Mini-Vision-V2" in (staged / "README.md").read_text().split("---", 2)[2]  # the body is kept


def test_missing_card_or_record_is_refused(release, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(release, partial)
    (partial / "records" / "eval_test.json").unlink()
    with pytest.raises(ReleaseError, match="eval_test.json"):
        check_card_numbers(stage_model_repo(partial, tmp_path / "staged"))
    (partial / "model_card.md").unlink()
    with pytest.raises(ReleaseError, match="model_card.md"):
        stage_model_repo(partial, tmp_path / "staged2")


@pytest.mark.parametrize(
    "accuracy, loss, ok",
    [(0.9921, 0.0251, True), (99.21, 0.0251, True), (0.99, 0.0251, False), (0.9921, 0.03, False)],
)
def test_card_numbers_must_match_the_record_up_to_rounding(tmp_path, accuracy, loss, ok):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "eval_test.json").write_text(json.dumps({"accuracy": 0.99213, "loss": 0.02514}))
    _write_card(tmp_path / "README.md", accuracy=accuracy, loss=loss)
    if ok:
        assert check_card_numbers(tmp_path) == {"accuracy": 0.99213, "loss": 0.02514}
    else:
        with pytest.raises(ReleaseError, match="disagrees"):
            check_card_numbers(tmp_path)


# -- the script against the loopback Hub, real clients in subprocesses -------------------------------------------


@pytest.mark.slow
def test_push_then_use_from_a_fresh_process(hub, release, space_src, tmp_path):
    result = push(hub, tmp_path, release, space_src)
    assert result.returncode == 0, result.stderr
    sha, space_sha = hub.head(REPO_ID), hub.head(SPACE_ID, "space")
    assert sha in result.stdout and space_sha in result.stdout and f"{hub.url}/{REPO_ID}/commit/{sha}" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert len(hub.commits(REPO_ID)) == 2 and len(hub.commits(SPACE_ID, "space")) == 2  # initial + ONE commit each
    assert hub.variables(SPACE_ID) == {"MINIVISION_MODEL": REPO_ID, "MINIVISION_REVISION": sha}
    record = json.loads((release / "records" / "eval_test.json").read_text())

    trained = _trained_release_at_root() and record["accuracy"] >= MIN_DIGIT_ACCURACY  # not a smoke-run release
    digits = [p for p in sorted(DIGITS_DIR.glob("*.png")) if digit_label(p)] if trained and DIGITS_DIR.is_dir() else []
    seen = len(hub.requests)
    args = {"repo": REPO_ID, "sha": sha, "space": SPACE_ID, "digits": [str(p) for p in digits]}
    verify = subprocess.run(
        [sys.executable, "-I", "-c", VERIFY, json.dumps(args)],
        cwd=tmp_path,
        env=client_env(hub, tmp_path / "fresh_home", token=None),  # public repos: a user without a token
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in verify.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert verify.returncode == 0 and line, verify.stderr[-3000:]
    out = json.loads(line[len("RESULT ") :])

    assert out["package_importable"] is False
    assert out["model_module"].startswith("transformers_modules")  # the code came from the Hub repo
    assert sorted(out["labels"]) == [str(d) for d in range(10)] and abs(sum(out["scores"]) - 1) < 1e-4
    card_accuracy = out["card_metrics"]["accuracy"]  # a fraction, or a percentage
    assert card_accuracy in (
        pytest.approx(record["accuracy"], abs=5e-4),
        pytest.approx(100 * record["accuracy"], abs=0.05),
    )
    if digits:
        correct = sum(label == digit_label(Path(path)) for path, label in out["digits"])
        assert correct >= MIN_DIGIT_ACCURACY * len(digits), out["digits"]
    assert SPACE_FILES | {"model_source.json"} <= set(out["space_files"])
    assert not any("__pycache__" in f for f in out["space_files"])
    assert "sdk: gradio" in out["space_readme"] and "app_file: app.py" in out["space_readme"]
    assert out["model_source"] == {"model": REPO_ID, "revision": sha}
    # The Space app, started from the download, serves the pinned model from the Hub through remote code.
    assert out["space_app"]["source"] == [REPO_ID, sha]
    assert out["space_app"]["model_module"].startswith("transformers_modules")
    assert out["space_app"]["blank"] == out["space_app"]["blank_label"]
    if digits:
        correct = sum(label == digit_label(Path(path)) for path, label in out["space_app"]["digits"])
        assert correct >= MIN_DIGIT_ACCURACY * len(digits), out["space_app"]["digits"]
    # from_pretrained / pipeline asked for the pinned commit only
    model_reads = [p for m, p in hub.requests[seen:] if p.startswith(f"/{REPO_ID}/resolve/") and "README" not in p]
    assert model_reads and all(p.startswith(f"/{REPO_ID}/resolve/{sha}/") for p in model_reads)


@pytest.mark.slow
def test_failed_space_commit_is_reported_and_a_rerun_succeeds(hub, release, space_src, tmp_path):
    hub.fail_commit(2, "drop")  # commit 1: the model repo; commit 2: the Space, connection dropped
    first = push(hub, tmp_path, release, space_src)
    assert first.returncode == 1
    sha = hub.head(REPO_ID)
    assert f"committed:     model repo {REPO_ID} at {sha}" in first.stderr
    assert f"NOT committed: Space {SPACE_ID}" in first.stderr
    assert [c.title for c in hub.commits(SPACE_ID, "space")] == ["initial commit"]  # no partial commit
    assert "model_source.json" not in hub.files(SPACE_ID, "space")

    rerun = push(hub, tmp_path, release, space_src)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(hub.files(SPACE_ID, "space")["model_source.json"]) == {"model": REPO_ID, "revision": sha}
    assert hub.head(REPO_ID) == sha  # unchanged files: no new model commit


@pytest.mark.slow
def test_dry_run_sends_nothing(hub, release, space_src, tmp_path):
    result = push(hub, tmp_path, release, space_src, "--dry-run", str(tmp_path / "out"), token=None)
    assert result.returncode == 0, result.stderr
    assert hub.requests == []
    size = (release / "model.safetensors").stat().st_size
    assert re.search(rf"{size:,}\s+model\.safetensors", result.stdout)
    assert (tmp_path / "out" / "model" / "modeling_minivision.py").is_file()
    assert (tmp_path / "out" / "space" / "model_source.json").is_file()


@pytest.mark.slow
def test_a_refused_dry_run_leaves_its_folder_empty_for_the_retry(hub, release, space_src, tmp_path):
    out = tmp_path / "out"
    bad = push(hub, tmp_path, release, tmp_path / "no_space_here", "--dry-run", str(out), token=None)
    assert bad.returncode == 2 and "REFUSED" in bad.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing half-staged that would block the next try
    retry = push(hub, tmp_path, release, space_src, "--dry-run", str(out), token=None)
    assert retry.returncode == 0, retry.stderr
    again = push(hub, tmp_path, release, space_src, "--dry-run", str(out), token=None)
    assert again.returncode == 2 and "give an empty or new folder" in again.stderr
    (tmp_path / "a_file").write_text("x")
    as_file = push(hub, tmp_path, release, space_src, "--dry-run", str(tmp_path / "a_file"), token=None)
    assert as_file.returncode == 2 and "Traceback" not in as_file.stderr
    assert hub.requests == []


def test_a_killed_dry_run_leaves_its_folder_as_it_was_and_the_retry_stages(release, space_src, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """A dry run stages beside OUT_DIR and moves in once checked: interrupted in its load check it leaves OUT_DIR
    empty (it used to leave it half-staged, looking staged, and the retry was refused as not empty), and the staging
    folder a SIGKILL leaves behind is cleared by the retry."""
    from scripts import push_to_hub

    out = tmp_path / "out"
    out.mkdir()
    argv = ["--repo-id", REPO_ID, "--release", str(release), "--space-src", str(space_src), "--dry-run", str(out)]

    def killed(staged):
        raise KeyboardInterrupt

    monkeypatch.setattr(push_to_hub, "check_release", killed)
    with pytest.raises(KeyboardInterrupt):
        push_to_hub.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(out.iterdir())
    leftover = tmp_path / ".out.staging" / "model" / "half_copied.bin"  # what a SIGKILL (no clean-up) leaves
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x")
    checked = {"model_class": "MiniVisionForImageClassification", "labels": ["0"], "top": {"label": "0"}}
    monkeypatch.setattr(push_to_hub, "check_release", lambda staged: checked)
    assert push_to_hub.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "space" / "app.py").is_file()
    assert not (out / "model" / "half_copied.bin").exists()


def test_a_dry_run_lands_in_an_empty_folder_it_cannot_replace(tmp_path, monkeypatch):
    """`--dry-run .` from an empty folder and `--dry-run LINK` (a link to an empty folder) worked before the dry run
    was staged, then failed at its very end (rmdir of "." or of a link): what was staged is moved into them."""
    from scripts.push_to_hub import dry_run_staging, move_dry_run_into_place

    here, target = tmp_path / "here", tmp_path / "target"
    here.mkdir(), target.mkdir()
    (tmp_path / "link").symlink_to(target)
    monkeypatch.chdir(here)
    for out_dir, holder in ((Path("."), here), (tmp_path / "link", target), (tmp_path / "new", tmp_path / "new")):
        staging = dry_run_staging(out_dir)
        (staging / "model").mkdir(parents=True)
        (staging / "model" / "config.json").write_text("{}")
        move_dry_run_into_place(staging, out_dir)
        assert (holder / "model" / "config.json").read_text() == "{}" and not staging.exists(), out_dir
    assert (tmp_path / "link").is_symlink()


@pytest.mark.slow
def test_wrong_token_is_reported_without_echoing_it(hub, release, space_src, tmp_path):
    secret = "hf_wrong_secret_0123456789"
    result = push(hub, tmp_path, release, space_src, token=secret)
    assert result.returncode == 1
    assert "token rejected" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert not hub.repo_exists(REPO_ID)


def test_missing_token_is_refused_before_any_request(hub, release, space_src, tmp_path):
    result = push(hub, tmp_path, release, space_src, token=None)
    assert result.returncode == 2 and "no Hugging Face token" in result.stderr
    assert hub.requests == []


@pytest.mark.parametrize(
    "repo_id, space_id, flag",
    [
        ("tester/mini vision", None, "--repo-id"),
        ("tester/a..b", None, "--repo-id"),
        ("tester/-mv", None, "--repo-id"),
        ("tester/" + "m" * 94, None, "--space-id (REPO_ID-demo)"),  # valid, but its default Space id is too long
        (REPO_ID, "tester/demo.git", "--space-id"),
    ],
)
def test_malformed_repo_ids_are_usage_errors_before_staging(release, space_src, tmp_path, capsys, repo_id, space_id,
                                                            flag):  # fmt: skip
    """The Hub's repo-id rules are checked at once (exit 2, one line), not by the client after staging and the load
    checks, where they read as a failed upload (exit 1, "rerun the same command"); a dry run checks them too."""
    from scripts import push_to_hub

    out = tmp_path / "out"
    argv = ["--repo-id", repo_id, "--release", str(release), "--space-src", str(space_src), "--dry-run", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main(argv + (["--space-id", space_id] if space_id else []))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"error: {flag}: " in err and "Traceback" not in err
    assert not out.exists()


def test_dry_run_into_an_empty_name_or_inside_the_sources_is_a_usage_error(release, space_src, tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    """`--dry-run ""` (an unset variable) was no dry run at all: the release was published. A dry run inside the release
    or the Space sources (records/staged, spaces_app/staged) was published, weights and all, by the next push."""
    from scripts import push_to_hub

    staged = []
    monkeypatch.setattr(push_to_hub, "stage_check_and_push", lambda args, out, space_id: staged.append(args) or 0)
    for out, says in (("", "OUT_DIR is empty"), (release / "records" / "staged", "inside --release"),
                      (space_src / "staged", "inside --space-src")):  # fmt: skip
        argv = ["--repo-id", REPO_ID, "--release", str(release), "--space-src", str(space_src), "--dry-run", str(out)]
        with pytest.raises(SystemExit) as exit_info:
            push_to_hub.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and says in err and "Traceback" not in err, out
    assert staged == [] and not (release / "records" / "staged").exists() and not (space_src / "staged").exists()


def test_the_staged_space_readme_names_the_space_being_published(space_src, tmp_path):
    """The Space README's client snippet names minivision/mini-vision-v2-demo; with --space-id it was staged as
    REPO_ID-demo, a Space that does not exist."""
    space = stage_space(space_src, tmp_path / "space", REPO_ID, None, space_id="tester/digits")
    text = (space / "README.md").read_text()
    assert 'Client("tester/digits")' in text and "-demo" not in text and f"huggingface.co/{REPO_ID})" in text


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder nothing can be created in)")
def test_an_out_dir_that_cannot_be_created_is_refused(release, tmp_path):
    with pytest.raises(ReleaseError, match="cannot create"):
        stage_model_repo(release, Path("/proc/minivision-staged/model"))


@pytest.mark.skipif(not (REPO_ROOT / "variants" / "best" / "records" / "variant.json").is_file(),
                    reason="no variants/best in this checkout")  # fmt: skip
def test_the_published_cards_are_the_generated_ones_and_say_what_their_records_say(tmp_path):
    """The push publishes model_card.md and variants/best/model_card.md as they are: they must be what
    make_model_card writes from the committed records. The best card said "Label smoothing makes the raw softmax
    scores underconfident; divide by T for calibrated probabilities" of a recipe without label smoothing, whose test
    ECE is 0.0009 raw and 0.0016 after dividing by T."""
    from scripts import make_model_card

    for card, argv in ((REPO_ROOT / "model_card.md", ["--records", str(REPO_ROOT / "records")]),
                       (REPO_ROOT / "variants" / "best" / "model_card.md", ["--variant", "best"])):  # fmt: skip
        generated = make_model_card.main([*argv, "--output", str(tmp_path / "card.md")])
        assert generated.read_text() == card.read_text(), f"{card} is stale: regenerate it with make_model_card"
        records = card.parent / "records"
        if not json.loads((records / "run_record.json").read_text())["recipe_values"].get("label_smoothing"):
            assert "Label smoothing makes" not in card.read_text(), card
    result = json.loads((REPO_ROOT / "variants" / "best" / "records" / "eval_test.json").read_text())
    text = (REPO_ROOT / "variants" / "best" / "model_card.md").read_text()
    assert f"test ECE {result['ece']:.4f} for the raw softmax scores, {result['ece_temperature']:.4f}" in text


def test_a_variant_card_without_a_temperature_does_not_promise_one(tmp_path):
    """A variant made with --no-temperature (no T stored) and no label smoothing: its card said label smoothing made
    the scores underconfident and told users to divide by `config.calibration_temperature`, neither of which held."""
    import shutil

    from scripts import make_model_card

    records = tmp_path / "records"
    shutil.copytree(REPO_ROOT / "variants" / "best" / "records", records)
    result = json.loads((records / "eval_test.json").read_text())
    for key in ("ece_temperature", "loss_temperature", "temperature"):
        result.pop(key, None)
    (records / "eval_test.json").write_text(json.dumps(result))
    (records / "calibration.json").unlink(missing_ok=True)
    card = make_model_card.render_variant("best", records, "NS/mini-vision-v2")
    assert "Label smoothing makes" not in card and "calibration_temperature" not in card
    assert f"Test ECE {result['ece']:.4f} for the raw softmax scores; no temperature is stored" in card


def test_card_numbers_differing_from_the_record_are_refused(hub, release, space_src, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(release, changed)
    record = json.loads((release / "records" / "eval_test.json").read_text())
    _write_card(changed / "model_card.md", accuracy=round(record["accuracy"] - 0.01, 4), loss=record["loss"])
    result = push(hub, tmp_path, changed, space_src)
    assert result.returncode == 2 and "disagrees" in result.stderr and "accuracy" in result.stderr
    assert hub.requests == []
