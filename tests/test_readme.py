"""README: the Quick start has exactly two commands, CI runs README's test command, the usage snippet runs, and
every generated number block matches the committed records."""

import json
import re

import pytest

from scripts import update_readme
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_quick_start_has_two_commands_and_ci_runs_the_test_command():
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["bash scripts/demo.sh", "bash .ci/run"]
    test_command = re.search(r"Test command \(.*?\): `(.+?)`", README).group(1)
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text()


def test_usage_snippet_runs(monkeypatch):
    code = re.search(r"```python\n(.*?)```", _section("Use it"), re.S).group(1)
    monkeypatch.chdir(REPO_ROOT)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["logits"].shape == (1, 10)
    assert len(namespace["top3"]) == 3
    result = REPO_ROOT / "records" / "eval_test.json"
    if not result.exists() or json.loads(result.read_text())["accuracy"] < 0.99:
        pytest.skip("the release at the root is not the trained one yet")
    assert namespace["top3"][0]["label"] == "2"
    assert namespace["drawn"][0]["label"] == "7"


def test_readme_numbers_come_from_the_records():
    assert update_readme.main(["--check"]) == 0, "run `python -m scripts.update_readme`"


@pytest.mark.parametrize("name", list(update_readme.BLOCKS))
def test_a_block_whose_markers_are_gone_is_an_error_not_skipped(name):
    """A README without a block's markers was rendered without it, and --check passed on numbers no longer shown."""
    without = re.sub(rf"<!-- BEGIN {name} -->\n.*?<!-- END {name} -->\n", "", README, flags=re.S)
    assert without != README
    with pytest.raises(ValueError, match=f"0 '<!-- BEGIN {name} -->'"):
        update_readme.render(without)


def test_recipes_source_names_the_merge_that_wrote_the_merged_record(monkeypatch):
    """A merged records/recipes.json keeps its parts' training commands; the README's source line must also give the
    `--merge` that turns their outputs into recipes.json, or the commands it shows never write the file it cites."""
    recipes = json.loads((REPO_ROOT / "records" / "recipes.json").read_text())
    merged = {**recipes, "command": "python -m scripts.compare_recipes --recipes seed --output records/a.json; "
              "python -m scripts.compare_recipes --recipes plus --output records/b.json",
              "merged_from": ["records/a.json", "records/b.json"]}  # fmt: skip
    monkeypatch.setattr(update_readme, "_load", lambda name: merged if name == "recipes.json" else None)
    source = update_readme.recipes_block().rsplit("Source: ", 1)[1]
    assert source.endswith("--output records/b.json; python -m scripts.compare_recipes --merge records/a.json "
                           "records/b.json --output records/recipes.json`).")  # fmt: skip
    unmerged = {k: v for k, v in merged.items() if k != "merged_from"}
    monkeypatch.setattr(update_readme, "_load", lambda name: unmerged if name == "recipes.json" else None)
    assert "--merge" not in update_readme.recipes_block()
