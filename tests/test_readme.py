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


def test_reruns_table_groups_a_recipes_reruns_by_thread_count_and_names_their_settings(monkeypatch):
    """records/recipe_rerun*.json: one row per variant and CPU thread count, each seed's validation accuracy in seed
    order and their mean; the source names the comparison's command with the thread variables it ran under."""
    from scripts import compare_recipes, make_model_card

    def run(seed, threads, val):
        return {"recipe": "best", "variant": "best-rerun", "flags": "", "seed": seed, "val_accuracy": val,
                "hardware": {"cpu": "x", "torch_threads": threads}}  # fmt: skip

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = {"runs": [run(2, 1, 0.9956), run(1, 1, 0.996)],
           "command": compare_recipes.thread_settings() + "python -m scripts.compare_recipes --seeds 2 1"}  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS")
    two = {"runs": [run(1, 2, 0.9948), {**run(3, None, 0.995), "hardware": None}],
           "command": compare_recipes.thread_settings() + "python -m scripts.compare_recipes --seeds 1"}  # fmt: skip
    table = update_readme.reruns_table([(one, "records/recipe_rerun_a.json"), (two, "records/recipe_rerun_b.json")])
    assert "| best-rerun | `best` | 1 | 1, 2 | 99.60% / 99.56% | 99.58% | `records/recipe_rerun_a.json` |" in table
    assert "| best-rerun | `best` | 2 | 1 | 99.48% | 99.48% | `records/recipe_rerun_b.json` |" in table
    assert "| best-rerun | `best` | ? | 3 | 99.50% | 99.50% |" in table  # a run without hardware is not guessed
    assert "(`OMP_NUM_THREADS=1 python -m scripts.compare_recipes --seeds 2 1`)" in table
    assert "(`python -m scripts.compare_recipes --seeds 1`)" in table
    # the model card's seed row names the thread count a CPU run trained on, and nothing it does not know
    assert make_model_card.seed_cell({"seed": 1, "hardware": {"torch_threads": 1}}) == "1, trained on 1 PyTorch thread"
    assert make_model_card.seed_cell({"seed": 4, "hardware": {"torch_threads": 2}}) == "4, trained on 2 PyTorch threads"
    assert make_model_card.seed_cell({"seed": 4, "hardware": {"torch_threads": 8, "gpu": "H200"}}) == "4"
    assert make_model_card.seed_cell({"seed": 4}) == "4"
