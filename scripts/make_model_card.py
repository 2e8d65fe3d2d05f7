"""Generate model_card.md (the Hub README of the model repo) from the committed records; never edit it by hand.

    python -m scripts.make_model_card --records records --output model_card.md [--repo-id NS/NAME]

Reads records/run_record.json (scripts/train.py), records/eval_test.json (scripts/eval_model.py) and, when present,
records/recipes.json (scripts/compare_recipes.py) and records/benchmark.json (scripts/benchmark.py).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

from huggingface_hub import EvalResult, ModelCard, ModelCardData

import minivision_hf as mv
from minivision_hf.training import kept_epoch

DEFAULT_REPO_ID = "minivision/mini-vision-v2"
SEED_CARD = {"accuracy": 0.993, "loss": 0.0235, "train_loss": 0.0615}  # ../shared/seed/Mini-Vision-V2-model-card.txt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", default="records", help="folder with run_record.json and eval_test.json")
    p.add_argument("--output", default="model_card.md")
    p.add_argument("--repo-id", default=DEFAULT_REPO_ID, help="Hub id used in the usage snippets")
    return p.parse_args(argv)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def card_data(record: dict, result: dict, repo_id: str) -> ModelCardData:
    return ModelCardData(
        language="en",
        license="mit",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "mnist", "cnn", "pytorch", "safetensors", "custom_code"],
        datasets=["ylecun/mnist"],
        metrics=["accuracy"],
        model_name=repo_id.split("/")[-1],
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type="ylecun/mnist",
                dataset_name="MNIST",
                dataset_split=result["split"],
                metric_type=metric,
                metric_name=name,
                metric_value=value,
            )
            for metric, name, value in (
                ("accuracy", "Test accuracy", result["accuracy"]),
                ("loss", "Test loss (cross-entropy)", result["loss"]),
            )
        ],  # fmt: skip
    )


def architecture_table(config: mv.MiniVisionConfig) -> str:
    rows = [
        "| Layer | In | Out | Kernel | Stride | Padding | Activation | Other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    channels = [config.num_channels, *config.conv_channels]
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        rows.append(f"| Conv Block {i} | {c_in} | {c_out} | {config.kernel_size} | {config.stride} | "
                    f"{config.padding} | ReLU | MaxPool({config.pool_size}), BatchNorm |")  # fmt: skip
    rows.append(f"| Flatten | - | - | - | - | - | - | Output: {config.flat_features} |")
    rows.append(
        f"| Linear 1 | {config.flat_features} | {config.hidden_size} | - | - | - | ReLU | Dropout({config.dropout}) |"
    )
    rows.append(f"| Linear 2 | {config.hidden_size} | {config.num_labels} | - | - | - | - | - |")
    return "\n".join(rows)


def recipe_table(record: dict) -> str:
    r = record["recipe_values"]
    if r["scheduler"] == "step":
        schedule = f"StepLR (step {r['step_epochs']} epochs, gamma {r['gamma']}), stepped per epoch"
    else:
        schedule = f"one-cycle: {r['warmup_epochs']} warm-up epochs, cosine to 0"
    rows = [
        ("Optimizer", f"SGD (momentum {r['momentum']}{', Nesterov' if r['nesterov'] else ''}, "
                      f"weight decay {r['weight_decay']})"),
        ("Initial learning rate", r["lr"]),
        ("Scheduler", schedule),
        ("Loss", "cross-entropy" + (f", label smoothing {r['label_smoothing']}" if r["label_smoothing"] else "")),
        ("Batch size", r["batch_size"]),
        ("Epochs", f"{r['epochs']} ({'best epoch by test accuracy kept' if r['best_model'] else 'last epoch kept'})"),
        ("Augmentation", f"RandomCrop(28, padding={r['max_shift']}) + RandomRotation({r['max_degrees']:g})"
                         + (f" + zoom {r['scale_min']}-{r['scale_max']}" if r["scale_min"] != r["scale_max"] else "")),
        ("Seed", record["seed"]),
        ("Trainer", f"transformers.Trainer, {record['processes']} process(es), bf16 autocast: {record['bf16']}"),
    ]  # fmt: skip
    return "\n".join(["| Setting | Value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def results_section(record: dict, result: dict) -> str:
    kept = kept_epoch(record)
    hw = record["hardware"]
    return f"""| Metric | This model | Seed card |
|---|---|---|
| Test accuracy (10,000 MNIST test images) | **{result["accuracy"]:.2%}** ({result["errors"]} errors) | {SEED_CARD["accuracy"]:.1%} |
| Test loss | {result["loss"]:.4f} | {SEED_CARD["loss"]} |
| Train loss (kept epoch {kept["epoch"]}, augmented, dropout on) | {kept.get("train_loss", float("nan")):.4f} | {SEED_CARD["train_loss"]} |
| Parameters | {mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).num_parameters():,} | 0.82M |

Test figures come from `scripts/eval_model.py` on the released weights through the image processor
(`records/eval_test.json`); training figures from `records/run_record.json`. Training took
{record["train_wall_s"] / 60:.1f} min on {hw["cpu"]} ({hw["cpu_count"]} cores{", " + hw["gpu"] if hw.get("gpu") else ""}).

Per-class accuracy: {", ".join(f"{k}: {v:.2%}" for k, v in result["per_class_accuracy"].items())}."""  # noqa: E501


def recipes_section(recipes: dict | None) -> str:
    if not recipes:
        return ""
    rows = [
        "| Recipe | Epochs | Seeds | Test accuracy, mean ± std | Test loss, mean | Per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in recipes["recipes"].items():
        per_seed = ", ".join(f"{a:.2%}" for a in summary["accuracies"])
        rows.append(f"| {name} | {summary['epochs']:g} | {len(summary['accuracies'])} | "
                    f"{summary['accuracy_mean']:.2%} ± {summary['accuracy_std']:.2%} | {summary['loss_mean']:.4f} | "
                    f"{per_seed} |")  # fmt: skip
    return f"""
## Beyond the seed: same architecture, a better recipe

{recipes.get("description", "")}

{chr(10).join(rows)}

Produced by `python -m scripts.compare_recipes` (`records/recipes.json`); each figure is the kept model of one
full training run evaluated on the 10,000 test images. The released weights are the **seed recipe**'s model.
"""


def speed_section(benchmark: dict | None) -> str:
    if not benchmark:
        return ""
    table = "\n".join(line for line in benchmark.get("markdown", "").splitlines() if not line.startswith("## "))
    return f"""
## Speed on a CPU

{table.strip()}

From `python -m scripts.benchmark` (`records/benchmark.json`).
"""


def render(record: dict, result: dict, repo_id: str, recipes: dict | None = None, benchmark: dict | None = None) -> str:
    config = mv.MiniVisionConfig()
    body = f"""
# Mini-Vision-V2: MNIST handwritten digit classifier

Mini-Vision-V2 is a lightweight CNN for 28x28 grayscale digits: two convolutional blocks and a two-layer classifier,
{mv.MiniVisionForImageClassification(config).num_parameters():,} parameters. This repository packages it as a
`transformers` model (config, model, image processor, Auto classes, pipeline) trained with `transformers.Trainer`
on MNIST with the recipe of the original Mini-Vision-V2 card.

## Model architecture

{architecture_table(config)}

## Training recipe

{recipe_table(record)}

## Results

{results_section(record, result)}
{recipes_section(recipes)}{speed_section(benchmark)}
## Training curves

![training loss](assets/train_loss.png)
![test loss](assets/test_loss.png)
![test accuracy](assets/test_accuracy.png)
![learning rate](assets/learning_rate.png)
![confusion matrix](assets/confusion_matrix.png)

TensorBoard event files are in `records/tensorboard/` (`tensorboard --logdir records/tensorboard`).

## How to use

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

# Pin the revision: this model runs custom code from this repository.
revision = "<commit sha>"
clf = pipeline("image-classification", model="{repo_id}", revision=revision, trust_remote_code=True)
clf("my_digit.png", top_k=3)   # [{{'label': '7', 'score': 0.99...}}, ...]

model = AutoModelForImageClassification.from_pretrained("{repo_id}", revision=revision, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{repo_id}", revision=revision, trust_remote_code=True)
logits = model(**processor(images, return_tensors="pt")).logits
```

With the `minivision_hf` package installed, `import minivision_hf` registers the classes and no remote code runs.
The image processor accepts PIL images in any mode, numpy arrays and tensors of any size: it flattens
transparency, inverts dark ink on a light background, crops to the ink, fits it into 20x20 and centres it by
centre of mass in 28x28, as MNIST was made. A blank image becomes an all-background input
(`processor.has_ink(images)` tells); corrupt or oversized images raise `ValueError`. `pipeline` converts PIL images
and paths to RGB, which drops transparency: give a drawing on a transparent layer as a numpy array
(`clf(np.asarray(image))`), or call the image processor directly, so its alpha channel is used.

## Limitations

- Trained on MNIST only: isolated, upright, single handwritten digits. Letters, several digits in one image,
  printed fonts or photos with clutter get confident but meaningless answers.
- The test accuracy is measured on MNIST's test split, which the seed recipe also uses to pick its best epoch
  (as the original card did); the second recipe reports its last epoch.
- Inputs pass through the MNIST protocol above; very thin strokes on huge canvases lose contrast when fitted.

## Citation

```bibtex
@article{{lecun1998gradient,
  title   = {{Gradient-based learning applied to document recognition}},
  author  = {{LeCun, Yann and Bottou, L{{\\'e}}on and Bengio, Yoshua and Haffner, Patrick}},
  journal = {{Proceedings of the IEEE}},
  volume  = {{86}}, number = {{11}}, pages = {{2278--2324}}, year = {{1998}}
}}
```

MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges (CC BY-SA 3.0). License of this model: MIT.
"""
    content = f"---\n{card_data(record, result, repo_id).to_yaml()}\n---\n{body}"
    return ModelCard(content).content


def main(argv=None) -> Path:
    args = parse_args(argv)
    records = Path(args.records)
    record, result = _load(records / "run_record.json"), _load(records / "eval_test.json")
    if record is None or result is None:
        raise SystemExit(f"need {records}/run_record.json and {records}/eval_test.json (run train, then evaluate)")
    content = render(record, result, args.repo_id, _load(records / "recipes.json"), _load(records / "benchmark.json"))
    Path(args.output).write_text(content)
    print(f"wrote {args.output}")
    return Path(args.output)


if __name__ == "__main__":
    main()
