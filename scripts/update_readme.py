"""Render README.md's numbers from the committed records (never typed by hand).

    python -m scripts.update_readme            # rewrite the generated blocks in README.md
    python -m scripts.update_readme --check    # exit 1 if README.md is out of date with records/ (a test runs this)

Each block sits between `<!-- BEGIN name -->` and `<!-- END name -->`; its source is named inside it.
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

from minivision_hf.training import kept_epoch, write_text

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> dict | None:
    path = ROOT / "records" / name
    return json.loads(path.read_text()) if path.exists() else None


def results_block() -> str:
    result, record = _load("eval_test.json"), _load("run_record.json")
    if not result or not record:
        return "_No trained release yet: run `scripts/train.py`, then `scripts/make_release.py`._"
    kept = kept_epoch(record)
    return "\n".join([
        "| Metric (MNIST test, 10,000 images) | Released model (seed recipe) | Seed card |",
        "|---|---|---|",
        f"| Test accuracy | **{result['accuracy']:.2%}** ({result['errors']} errors) | 99.3% |",
        f"| Test loss | {result['loss']:.4f} | 0.0235 |",
        f"| Train loss (kept epoch {kept['epoch']} of {len(record['epochs'])}) | {kept['train_loss']:.4f} | 0.0615 |",
        f"| Training time | {record['train_wall_s'] / 60:.1f} min on {record['hardware']['cpu_count']} CPU cores"
        f"{threads(record)} | - |",
        "",
        "Source: `records/eval_test.json` (`python -m scripts.eval_model --model . --dataset ../shared/data/mnist "
        "--output records/eval_test.json`) and `records/run_record.json`" + made_by(record) + ".",
    ])  # fmt: skip


def threads(record: dict, inside: bool = False) -> str:
    """" (1 PyTorch thread)" (", 1 PyTorch thread" `inside` parentheses) when the run used fewer threads than the
    machine has cores, else ""."""
    hw = record["hardware"]
    n = hw.get("torch_threads")
    if not n or n >= (hw.get("cpu_count") or n):
        return ""
    return f", {thread_count(n)}" if inside else f" ({thread_count(n)})"


def thread_count(n: int) -> str:
    """"1 PyTorch thread", "2 PyTorch threads": how README and cards name a run's thread count."""
    return f"{n} PyTorch thread{'s' if n != 1 else ''}"


def made_by(record: dict) -> str:
    """", trained at commit `abc123def456`" (plus a warning when the tree had uncommitted changes), or ""."""
    git = record.get("git") or {}
    if not git.get("commit"):
        return ""
    return f", trained at commit `{git['commit'][:12]}`" + (" with uncommitted changes" if git.get("dirty") else "")


def _recipes_table(summary: dict) -> str:
    rows = ["| Recipe | Epochs | Test accuracy, mean ± std | Test loss, mean | Runs |", "|---|---|---|---|---|"]
    for name, s in summary["recipes"].items():
        runs = ", ".join(f"{a:.2%}" for a in s["accuracies"])
        rows.append(f"| {name} | {s['epochs']:g} | {s['accuracy_mean']:.2%} ± {s['accuracy_std']:.2%} | "
                    f"{s['loss_mean']:.4f} | {runs} |")  # fmt: skip
    return "\n".join(rows)


def recipes_block() -> str:
    summary = _load("recipes.json")
    if not summary:
        return "_Not measured yet: `python -m scripts.compare_recipes` writes records/recipes.json._"
    command = summary["command"]
    if summary.get("merged_from"):  # its command is the parts' commands: the merge that made recipes.json follows
        command += ("; python -m scripts.compare_recipes --merge " + " ".join(summary["merged_from"])
                    + " --output records/recipes.json")  # fmt: skip
    return _recipes_table(summary) + "\n\nSource: `records/recipes.json` (`" + command + "`)."


def best_variant_block() -> str:
    """The shipped `best` variant (variants/best, Hub branch `best`) next to the seed release, then every variant
    tried (records/recipe_search*.json on the held-out rows; records/recipes_best.json on the test split)."""
    from scripts.make_model_card import variants_table

    variant = ROOT / "variants" / "best" / "records"
    def records(pattern: str) -> list[tuple[dict, str]]:
        return [(json.loads(f.read_text()), f"records/{f.name}") for f in sorted((ROOT / "records").glob(pattern))]

    searches, comparisons = records("recipe_search*.json"), records("recipes_best*.json")
    if not searches and not (variant / "eval_test.json").exists():
        return "_Not built yet: `python -m scripts.compare_recipes --val-size 5000 --no-test ...`, then " \
            "`python -m scripts.make_variant`._"
    lines = []
    if (variant / "eval_test.json").exists():
        result = json.loads((variant / "eval_test.json").read_text())
        run = json.loads((variant / "run_record.json").read_text())
        recipe = json.loads((variant / "variant.json").read_text())["recipe"] if (variant / "variant.json").exists() \
            else run["recipe"]  # fmt: skip
        calibration = json.loads((variant / "calibration.json").read_text())
        seed_file = variant / "eval_seed_release.json"
        seed = json.loads(seed_file.read_text()) if seed_file.exists() else None

        def cells(r: dict | None) -> str:
            if not r:
                return "- | - | - | - |"
            tta = f"{r['tta_accuracy']:.2%}" if "tta_accuracy" in r else "-"
            return f"{r['accuracy']:.2%} ({r['errors']} errors) | {r['loss']:.4f} | {r['ece']:.4f} | {tta} |"
        t_cell = (f"{result['ece_temperature']:.4f} (T = {calibration['temperature']}, fitted on "
                  f"{calibration['num_samples']:,} validation rows)") if calibration.get("temperature") else "-"
        lines += [
            "| Model (MNIST test, 10,000 images) | Test accuracy | Test loss | ECE (15 bins) | TTA accuracy "
            "(separate) | ECE, temperature-scaled |",
            "|---|---|---|---|---|---|",
            f"| `main`: seed recipe release (repo root) | {cells(seed)} - |",
            f"| `best`: recipe `{recipe}`, seed {run['seed']}, {run['kept']} weights (`variants/best`) | "
            f"{cells(result)} {t_cell} |",
            "",
            "Source: `variants/best/records/eval_test.json` and `eval_seed_release.json` (`python -m "
            "scripts.eval_model --tta`, run by `scripts/make_variant.py`), `variants/best/records/calibration.json`.",
            "",
        ]
        drawn = _load("app_drawn_accuracy.json")
        if drawn:
            per_model = ", ".join(f"`{name}` {m['accuracy']:.2%}" for name, m in drawn["models"].items())
            lines += [f"The Space serves `{drawn['default_model']}` by default (selector: best / seed). Drawn-digit "
                      f"accuracy on the app test's drawn set: {per_model} (`records/app_drawn_accuracy.json`, "
                      f"`{drawn['command']}`).", ""]  # fmt: skip
    from scripts.make_model_card import GOAL_MEAN_ACCURACY, GOAL_SEEDS

    for rec, _ in comparisons:  # the goal of issue 13, stated from the records
        for name, summary in rec["recipes"].items():
            n, mean = len(summary["accuracies"]), summary["accuracy_mean"]
            met = n >= GOAL_SEEDS and mean >= GOAL_MEAN_ACCURACY
            lines += [f"Recipe `{name}`: {n} finished run{'s' if n > 1 else ''}, mean test accuracy {mean:.2%}; "
                      f"the target (≥ {GOAL_MEAN_ACCURACY:.2%} over ≥ {GOAL_SEEDS} seeds) is "
                      f"{'met' if met else '**not met**'}.", ""]  # fmt: skip
    sources = "; ".join(f"`{path}` (`{rec['command']}`)" for rec, path in [*searches, *comparisons])
    lines += [variants_table(searches, comparisons), "", f"Sources: {sources}."]
    if (ROOT / "assets" / "recipe_search.png").exists():
        lines += ["", "![Every variant tried: validation curves, and final validation / test accuracy per seed]"
                      "(assets/recipe_search.png)", "",
                  "(`python -m scripts.plot_recipe_search`, from the records above.)"]  # fmt: skip
    reruns = records("recipe_rerun*.json")
    if reruns:
        lines += ["", reruns_table(reruns)]
    for ensemble, path in records("validation_ensemble*.json"):
        lines += ["", f"Headroom check on the validation rows: the {len(ensemble['runs'])} runs "
                      f"({', '.join(f'`{name}`' for name in ensemble['runs'])}) score {ensemble['single_mean']:.2%} "
                      f"on average (best {ensemble['single_best']:.2%}); their softmax-averaged ensemble scores "
                      f"{ensemble['ensemble_accuracy']:.2%}, and {ensemble['errors_in_every_run']} of the "
                      f"~{round(sum(ensemble['errors_per_run'].values()) / len(ensemble['runs']))} rows each run "
                      f"gets wrong are wrong in every run (`{path}`, `{ensemble['command']}`)."]  # fmt: skip
    return "\n".join(lines)


def reruns_table(reruns: list[tuple[dict, str]]) -> str:
    """Reruns of a chosen recipe on the held-out rows (records/recipe_rerun*.json, compare_recipes records): one row
    per variant and CPU thread count, each seed's kept-weights validation accuracy and their mean. Not candidates:
    they measure how far runs of one recipe and seed spread (the thread count changes a run's trajectory)."""
    groups: dict[tuple[str, object], list[tuple[dict, str]]] = {}
    for record, path in reruns:
        for run in record["runs"]:
            count = (run.get("hardware") or {}).get("torch_threads", "?")
            groups.setdefault((run.get("variant") or run["recipe"], count), []).append((run, path))
    rows = ["| Rerun | Recipe + flags | CPU threads | Seeds | Val. acc. per seed, kept weights | Mean | Record |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, count), runs in groups.items():
        runs.sort(key=lambda item: item[0]["seed"])
        first, values = runs[0][0], [r["val_accuracy"] for r, _ in runs]
        paths = ", ".join(f"`{p}`" for p in dict.fromkeys(p for _, p in runs))
        flags = f" `{first['flags']}`" if first["flags"] else ""
        rows.append(f"| {name} | `{first['recipe']}`{flags} | {count} | {', '.join(str(r['seed']) for r, _ in runs)}"
                    f" | {' / '.join(f'{v:.2%}' for v in values)} | {sum(values) / len(values):.2%} | {paths} |")
    commands = "; ".join(f"`{path}` (`{rec['command']}`)" for rec, path in reruns)
    return "\n".join([*rows, "", f"Sources: {commands}."])


def data_paths_block() -> str:
    summary = _load("data_paths.json")
    if not summary:
        return "_Not measured yet: `python -m scripts.compare_recipes --data-paths plain fast` writes records/data_paths.json._"  # noqa: E501
    return _recipes_table(summary) + "\n\nSource: `records/data_paths.json` (`" + summary["command"] + "`)."


def benchmark_block() -> str:
    bench = _load("benchmark.json")
    if not bench:
        return "_Not measured yet: `python -m scripts.benchmark --output records/benchmark.json`._"
    table = "\n".join(line for line in bench["markdown"].strip().splitlines() if not line.startswith("## "))
    return table.strip() + "\n\nSource: `records/benchmark.json` (`python -m scripts.benchmark`)."


def load_test_block() -> str:
    load = _load("load_test.json")
    if not load:
        return "_Not measured yet: `python -m scripts.load_test` writes records/load_test.json._"
    summary, args = load["summary"], load["args"]
    return "\n".join([
        "| Clients x requests | Requests | Errors | Wrong answers | p50 latency | p95 latency | Throughput |",
        "|---|---|---|---|---|---|---|",
        f"| {args['clients']} x {args['requests']} | {summary['requests']} | {summary['errors']} | "
        f"{summary['wrong_predictions']} | {summary['latency_ms']['p50']:.0f} ms | "
        f"{summary['latency_ms']['p95']:.0f} ms | "
        f"{summary['throughput_rps']:.1f} req/s |",
        "",
        f"Model: {'`' + load['args']['model'] + '`' if load['args'].get('model') else 'the release at the repo root'}. "
        "Source: `records/load_test.json` (`python -m scripts.load_test`); "
        "the clients run on the same 2 cores as the app.",
    ])  # fmt: skip


BLOCKS = {
    "results": results_block,
    "recipes": recipes_block,
    "best_variant": best_variant_block,
    "data_paths": data_paths_block,
    "benchmark": benchmark_block,
    "load_test": load_test_block,
}


def render(text: str) -> str:
    """`text` with every block regenerated; ValueError naming a block whose markers are missing (it was skipped, and
    --check passed on a README that no longer showed the records)."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        text, found = pattern.subn(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
        if found != 1:
            raise ValueError(f"README.md holds {found} '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' blocks, "
                             "not one: put the markers back where the block belongs")  # fmt: skip
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    try:
        new = render(text)
    except ValueError as err:
        p.error(str(err))
    if args.check:
        if new != text:
            print("README.md is out of date with records/: run `python -m scripts.update_readme`")
            return 1
        print("README.md is up to date")
        return 0
    write_text(readme, new)  # atomic: a killed run leaves the old README whole
    print("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
