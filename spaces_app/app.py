"""Mini-Vision-V2 Gradio demo: draw a digit (or upload an image) and see what the 0.82M-parameter MNIST CNN reads.

    python spaces_app/app.py                                     # the release at the repo root, http://127.0.0.1:7860
    MINIVISION_MODEL=outputs/quick python spaces_app/app.py      # any save_pretrained folder
    MINIVISION_MODEL=minivision/mini-vision-v2 MINIVISION_REVISION=<sha> python spaces_app/app.py   # a Hub repo

It serves two models of the same architecture and says which one answered: `best` (the more accurate `best`
recipe, variants/best, Hub branch `best`; the default) and `seed` (the seed recipe's release). A selector on the page
switches between them; MINIVISION_DEFAULT_MODEL=seed makes the seed model the default.

Where the seed model comes from, first match wins:
1. env MINIVISION_MODEL (Hub id or folder) and MINIVISION_REVISION (branch, tag or commit; optional);
2. model_source.json beside this file, {"model": id, "revision": sha}, written by scripts/push_to_hub.py when it
   stages the Space, so the Space serves the exact model commit it was released with;
3. the release at the repo root (the parent of spaces_app/): works offline (app.py alone, with none of these: refused).
And the best model: env MINIVISION_BEST_MODEL (+ MINIVISION_BEST_REVISION); else MINIVISION_BEST_REVISION alone (the
seed model's repo at that commit, as push_to_hub sets the Space variables); else model_source.json's
"variants": {"best": {"model", "revision"}}; else, with no MINIVISION_MODEL set, the folder variants/best beside the
release. Without any, only the seed model is served. A revision applies to a Hub repo only: given with a local folder
(MINIVISION_REVISION or MINIVISION_BEST_REVISION while the model is a folder), the app refuses to start, since
from_pretrained would ignore it and serve the folder as it is. Run as a program (as on a Space), any of these
refusals, or a model that cannot be loaded, ends the app with one line naming the model and the reason. A model
whose config has `calibration_temperature` (fitted on validation rows) reports softmax(logits / T): its scores are
calibrated, its answers unchanged.

All preprocessing (alpha, inversion, crop, fit to 20x20, centre of mass, normalisation) is the model's image
processor; this file only unpacks the Sketchpad value and calls processor + model.

Both endpoints return {label: probability}. The labels are the digits "0".."9"; a canvas or image without ink returns
the single entry {BLANK_LABEL: 1.0} instead of a confident-looking digit. An upload that cannot be decoded, or one
too large to decode safely, raises gr.Error with the reason; the app keeps serving.

No upload is decoded beyond the image processor's `max_pixels`: before Gradio's own preprocessing runs, every encoded
image in the request (uploaded file, data: URL, sketchpad layer) has its header read and is refused when larger, so a
13,000 x 13,000 PNG of 0.5 MB never becomes a 0.5 GB bitmap. The Upload tab hands predict() the file path and the
image processor decodes it; Pillow's own limit is set to the same value as a backstop.
"""

import atexit
import base64
import binascii
import html
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def use_private_upload_folder() -> None:
    """Gradio saves every upload (a drawing is one) in $GRADIO_TEMP_DIR, by default <temp>/gradio: one folder for all
    the users of a machine, so once another user's app had made it, every request here failed (PermissionError).
    Unless GRADIO_TEMP_DIR is set, this process keeps its uploads in a new private folder (0700), removed at exit."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        os.environ["GRADIO_TEMP_DIR"] = folder = tempfile.mkdtemp(prefix="minivision-gradio-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # offline: no telemetry; set before gradio is imported
use_private_upload_folder()  # before gradio is imported too: some of its modules read the folder at import

try:
    import gradio as gr  # noqa: E402
except ModuleNotFoundError as err:  # the app is the `demo` extra (on a Space, gradio is the SDK's)
    raise ModuleNotFoundError(f"{err}: the demo needs gradio: pip install 'minivision-hf[demo]'") from err
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

# abspath, not resolve(): in a Hub snapshot the files are links into blobs/, and model_source.json lies beside app.py
HERE = Path(os.path.abspath(__file__)).parent
EXAMPLES_DIR = HERE / "examples"
BLANK_LABEL = "blank canvas: draw a digit"
CANVAS_PX = 400  # a 400x400 canvas fits a phone screen; the processor rescales any size to 28x28 anyway
# Brush radius in canvas px (gradio's Brush.default_size is a radius). MNIST strokes are ~2.5 px wide on a 20 px
# digit (~12%); a digit drawn ~250 px tall on the 400 px canvas therefore wants a ~30 px wide pen. Thinner or thicker
# strokes still work (the processor rescales), they only look less like MNIST after the ~12x downscale.
BRUSH_RADIUS_PX = 15


def resolve_model_source() -> tuple[str, str | None]:
    """(model id or folder, revision or None), in the order given in the module docstring."""
    if os.environ.get("MINIVISION_MODEL"):
        return os.environ["MINIVISION_MODEL"], os.environ.get("MINIVISION_REVISION") or None
    source_file = HERE / "model_source.json"
    if source_file.is_file():
        source = json.loads(source_file.read_text())
        return source["model"], os.environ.get("MINIVISION_REVISION") or source.get("revision")
    if not (HERE.parent / "config.json").is_file():  # app.py without its repository, e.g. a Space staged by hand
        raise FileNotFoundError(f"no model to serve: {HERE.parent}, the folder above app.py, is not a release, and "
                                "neither MINIVISION_MODEL nor model_source.json names one: set MINIVISION_MODEL (a Hub "
                                "id or folder), or stage the Space with scripts/push_to_hub.py")  # fmt: skip
    return str(HERE.parent), os.environ.get("MINIVISION_REVISION") or None


def resolve_model_sources() -> tuple[dict[str, tuple[str, str | None]], str]:
    """({"best": (source, revision), "seed": (source, revision)}, default name), as the module docstring says."""
    sources = {}
    seed = resolve_model_source()
    env = os.environ
    source_file = HERE / "model_source.json"
    pinned = json.loads(source_file.read_text()).get("variants", {}) if source_file.is_file() else {}
    if env.get("MINIVISION_BEST_MODEL"):
        sources["best"] = (env["MINIVISION_BEST_MODEL"], env.get("MINIVISION_BEST_REVISION") or None)
    elif env.get("MINIVISION_BEST_REVISION"):
        sources["best"] = (seed[0], env["MINIVISION_BEST_REVISION"])
    elif "best" in pinned:
        sources["best"] = (pinned["best"]["model"], pinned["best"].get("revision"))
    elif not env.get("MINIVISION_MODEL") and (HERE.parent / "variants" / "best" / "config.json").is_file():
        sources["best"] = (str(HERE.parent / "variants" / "best"), None)
    sources["seed"] = seed
    default = env.get("MINIVISION_DEFAULT_MODEL") or next(iter(sources))
    if default not in sources:
        raise ValueError(f"MINIVISION_DEFAULT_MODEL={default!r}: this app serves {sorted(sources)}")
    return sources, default


def load_model(source: str, revision: str | None = None):
    """Model and image processor from a Hub id or folder. The local package registers the Auto classes; without it
    (on a Space) the code files saved next to the weights are used, which needs trust_remote_code."""
    try:
        import minivision_hf  # noqa: F401

        trust_remote_code = False
    except ImportError:
        trust_remote_code = True
    local = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or local.exists()
    looks_local |= "/" in source and Path(source.split("/")[0]).is_dir()  # "outputs/typo" with outputs/ here
    if looks_local and not local.is_dir():
        raise ValueError(f"model {source!r}: no such folder (give a save_pretrained folder or a Hub id, NAME/REPO)")
    if looks_local and revision:  # from_pretrained ignores a revision for a folder: it would serve the folder as is
        raise ValueError(f"revision {revision!r} was given for the local folder {source!r}, which has no revisions: "
                         "unset MINIVISION_REVISION / MINIVISION_BEST_REVISION, or name a Hub repo (MINIVISION_MODEL, "
                         "MINIVISION_BEST_MODEL), or a folder (e.g. MINIVISION_BEST_MODEL=variants/best)")  # fmt: skip
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    model = AutoModelForImageClassification.from_pretrained(source, **kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    return model, processor


def describe_source(source: str, revision: str | None) -> str:
    """Markdown naming the model served: a link for a Hub repo, the folder (relative to the repo) for a local one."""
    path = Path(source).expanduser().resolve()  # as load_model reads it: "~/models/mv" is a folder
    if path.is_dir():
        if path == HERE.parent:
            return "the release in this repository"
        try:
            return f"`{path.relative_to(HERE.parent)}`"
        except ValueError:
            return f"`{path}`"
    url = f"https://huggingface.co/{source}" + (f"/tree/{revision}" if revision else "")
    return f"[{source}]({url})" + (f" @ `{revision[:10]}`" if revision else "")


def load_models(sources: dict[str, tuple[str, str | None]]) -> dict[str, tuple]:
    """{name: (model, processor)} for every source; an error that stops one notes which model and source it was."""
    models = {}
    for name, (source, revision) in sources.items():
        try:
            models[name] = load_model(source, revision)
        except (OSError, ValueError) as err:  # transformers' messages do not say which repo they could not load
            err.add_note(f"loading the {name} model from {source}" + (f" @ {revision}" if revision else ""))
            raise
    return models


try:
    MODEL_SOURCES, DEFAULT_MODEL = resolve_model_sources()
    MODELS = load_models(MODEL_SOURCES)  # {name: (model, processor)}
except (OSError, ValueError) as startup_error:  # no model, a wrong MINIVISION_* value, the Hub out of reach
    if __name__ != "__main__":  # imported (tests, scripts): the caller decides
        raise
    # Run as the Space: the reason, in the log the Space shows, without a traceback that buries it.
    notes = "".join(f"{note}: " for note in getattr(startup_error, "__notes__", ()))
    sys.exit(f"app.py: error: {notes}{startup_error}")

# The default model's source and objects under the single-model names (tests and older callers use them).
(MODEL_SOURCE, MODEL_REVISION), (model, processor) = MODEL_SOURCES[DEFAULT_MODEL], MODELS[DEFAULT_MODEL]
LABELS = [model.config.id2label[i] for i in range(model.config.num_labels)]
# Backstop for any decode the upload guard below does not see: Pillow refuses outright above twice its limit.
Image.MAX_IMAGE_PIXELS = processor.max_pixels


def _user_error(message: str) -> gr.Error:
    # gr.Error renders HTML: escape the reason (Pillow's messages contain "<_io.BytesIO ...>"). No server traceback:
    # a bad upload is the user's input, not a fault of the app.
    # quote=False: the message is element text, where quotes need no escaping (API clients get it verbatim)
    return gr.Error(html.escape(message, quote=False), title="Unreadable image", print_exception=False)


def _model(name: str | None):
    if name is None:
        return MODELS[DEFAULT_MODEL]
    if name not in MODELS:
        raise gr.Error(f"unknown model {name!r}: choose one of {', '.join(MODELS)}", print_exception=False)
    return MODELS[name]


def classify(image, model_name: str | None = None) -> dict[str, float]:
    """One image (PIL, numpy, path or bytes) -> {label: probability}, or {BLANK_LABEL: 1.0} when it holds no ink.
    `model_name`: "best" or "seed" (default: DEFAULT_MODEL)."""
    model, processor = _model(model_name)
    if image is None:
        return {BLANK_LABEL: 1.0}
    try:
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        if pixel_values.shape[0] != 1:
            raise ValueError(f"give one image, not a batch of {pixel_values.shape[0]}")
    except (ValueError, TypeError) as err:  # corrupt file, decompression bomb, unsupported array
        raise _user_error(f"Could not use this image: {err}") from err
    # The processor maps an image without ink to a uniform background (what `processor.has_ink` reports as False);
    # testing its output instead of calling has_ink() saves a second pass over a 400-800 px canvas on every stroke.
    if bool(pixel_values.amax() <= pixel_values.amin()):
        return {BLANK_LABEL: 1.0}
    temperature = getattr(model.config, "calibration_temperature", None) or 1.0  # fitted on validation rows
    with torch.inference_mode():
        probs = (model(pixel_values=pixel_values).logits / temperature).softmax(-1)[0]
    return {label: float(p) for label, p in zip(LABELS, probs, strict=True)}


def predict(sketch: dict | None, model_name: str | None = None) -> dict[str, float]:
    """Sketchpad value {"background", "layers", "composite"} -> {label: probability} (see the module docstring)."""
    if sketch is None:
        return {BLANK_LABEL: 1.0}
    if not isinstance(sketch, dict):  # a bare image, as a convenience for Python callers
        return classify(sketch, model_name)
    image = sketch.get("composite")  # background + layers as the user sees them
    if image is None:  # an API caller may send only the background and/or the layers: stack them as the editor does
        parts = [part for part in (sketch.get("background"), *(sketch.get("layers") or [])) if part is not None]
        image = parts[0] if parts else None
        if len(parts) > 1 and all(isinstance(part, Image.Image) for part in parts):
            image = Image.new("RGBA", parts[0].size)
            for part in parts:
                image.alpha_composite(part.convert("RGBA").crop((0, 0, *image.size)))
    return classify(image, model_name)


def predict_image(image, model_name: str | None = None) -> dict[str, float]:
    """A plain image (PIL, numpy, path or bytes) -> {label: probability} (see the module docstring)."""
    return classify(image, model_name)


def predict_shown(sketch: dict | None, image, shown: str, model_name: str | None = None) -> dict[str, float]:
    """The prediction for whichever input the label answers (`shown`: "draw" or "upload", the last one changed), by
    `model_name`: what a switch of models re-answers."""
    return predict_image(image, model_name) if shown == "upload" else predict(sketch, model_name)


def answered_by(model_name: str | None) -> str:
    name = model_name or DEFAULT_MODEL
    return f"Prediction by the **{name}** model: {describe_source(*MODEL_SOURCES[name])}"




def _encoded_images(value, blobs: dict | None = None):
    """Every encoded image (file path or bytes) in a Gradio image or sketchpad payload, before Gradio decodes it:
    uploaded files, data: URLs, and the sketchpad's background / layers / composite (sent inline or as blobs)."""
    if value is None:
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        yield bytes(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _encoded_images(item)
    elif getattr(value, "path", None):
        yield value.path
    elif str(getattr(value, "url", None) or "").startswith("data:"):
        try:
            yield base64.b64decode(value.url.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError("the data: URL does not hold base64 data") from err
    else:
        for part in ("background", "layers", "composite"):
            yield from _encoded_images(getattr(value, part, None))
        if blobs is not None and getattr(value, "id", None) is not None:
            yield from _encoded_images(blobs.get(value.id))


def _guard_uploads(component: gr.components.Component) -> gr.components.Component:
    """Wrap the component's preprocess (Gradio decodes uploads with Pillow before predict() runs): first refuse any
    image whose header says it exceeds the processor's max_pixels, then report decode failures as gr.Error with the
    reason instead of a bare "Error"."""
    preprocess = component.preprocess

    def checked_preprocess(payload):
        try:
            for source in _encoded_images(payload, getattr(component, "blob_storage", None)):
                processor.check_image_file(source)  # reads the header only
            return preprocess(payload)
        except UnidentifiedImageError as err:  # its message names the server's temp file: say it plainly instead
            raise _user_error("Could not read the uploaded image: it is not an image file Pillow can decode") from err
        except ValueError as err:
            if isinstance(err.__cause__, UnidentifiedImageError):
                raise _user_error(
                    "Could not read the uploaded image: it is not an image file Pillow can decode"
                ) from err
            raise _user_error(f"Could not read the uploaded image: {err}") from err
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise _user_error(f"Could not read the uploaded image: {err}") from err

    component.preprocess = checked_preprocess
    return component


EXPLANATION = f"""
# Mini-Vision-V2: handwritten digits

Draw a digit from 0 to 9 on the canvas (large and centred or not, the model does not mind), or upload a photo or
scan of one. The prediction updates as you draw.

**How it works.** Mini-Vision-V2 is a 0.82M-parameter CNN (two conv blocks and a small classifier) trained on
MNIST. Its image processor brings any picture to MNIST's form: transparency flattened, dark-on-light inverted to
white-on-black, cropped to the ink, fitted into 20x20 px and centred by centre of mass in 28x28. A blank canvas is
reported as *"{BLANK_LABEL}"*, never as a digit.

**Limits.** One digit per image. MNIST is American-style handwriting: a crossed 7 or a 1 with a long flag may be
read less surely. It is a 28x28-pixel model, so fine detail is lost.
"""


# The image editor opens with its "image" tool, showing "select the draw tool to start"; a digit pad should take
# strokes at once, so select the brush when the page loads (and after Clear). Retries while the canvas mounts.
SELECT_BRUSH_JS = """() => {
  let tries = 0;
  const select = () => {
    const brush = document.querySelector('#sketchpad button[aria-label="Brush"]');
    if (brush) { brush.click(); } else if (tries++ < 50) { setTimeout(select, 100); }
  };
  select();
}"""

CLEAR_CANVAS_JS = """() => {
  document.querySelector('#sketchpad button[aria-label="Clear canvas"]')?.click();
  setTimeout(() => document.querySelector('#sketchpad button[aria-label="Brush"]')?.click(), 100);
}"""


MODEL_CHOICE_LABELS = {  # plain text: a Radio shows Markdown's backticks as they are
    "best": "best: the best recipe, more accurate",
    "seed": "seed: the seed recipe's release",
}


def model_choices() -> list[tuple[str, str]]:
    """The selector's (label, value) pairs: the model that answers by default says so (MINIVISION_DEFAULT_MODEL)."""
    return [(MODEL_CHOICE_LABELS.get(name, name) + (" (default)" if name == DEFAULT_MODEL else ""), name)
            for name in MODELS]  # fmt: skip


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="Mini-Vision-V2: handwritten digits") as demo:
        gr.Markdown(EXPLANATION)
        with gr.Row():
            with gr.Column():
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(
                        label="Draw a digit",
                        type="pil",
                        image_mode="RGBA",  # black ink on a transparent layer; the processor flattens the alpha
                        format="png",  # lossless: webp would blur the strokes
                        canvas_size=(CANVAS_PX, CANVAS_PX),
                        height=CANVAS_PX + 60,  # room for the toolbar: the canvas shows at ~100% zoom
                        fixed_canvas=True,
                        brush=gr.Brush(default_size=BRUSH_RADIUS_PX, colors=["#000000"], color_mode="fixed"),
                        layers=False,
                        transforms=(),
                        elem_id="sketchpad",
                    )
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Tab("Upload"):
                    upload = gr.Image(
                        label="Upload an image of a digit",
                        # The file itself, opened by the processor (header checked first, alpha kept, EXIF honoured):
                        # with image_mode=None Gradio only reads the header, never the pixels.
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=CANVAS_PX + 60,
                        elem_id="upload",
                    )
                    gr.Examples(
                        examples=sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")),
                        inputs=upload,
                        label="Examples: MNIST test digits and drawn-style images",
                        examples_per_page=12,
                        cache_examples=False,
                    )
            with gr.Column():
                choice = gr.Radio(
                    choices=model_choices(),
                    value=DEFAULT_MODEL,
                    label="Model",
                    elem_id="model_choice",
                )
                label = gr.Label(num_top_classes=3, label="Prediction", elem_id="prediction")
                source = gr.Markdown(answered_by(DEFAULT_MODEL), elem_id="answered_by")
                shown = gr.State("draw")  # the input the label answers for: the last one changed

        _guard_uploads(sketch)
        _guard_uploads(upload)
        # always_last: while the user keeps drawing, skip stale strokes and classify only the latest canvas.
        # The model selector is a second input with a default: API callers may leave it out (the default answers).
        sketch.change(predict, [sketch, choice], label, api_name="predict", trigger_mode="always_last",
                      show_progress="hidden")  # fmt: skip
        upload.change(predict_image, [upload, choice], label, api_name="predict_image", show_progress="hidden")
        sketch.change(lambda: "draw", None, shown, api_visibility="private", queue=False)
        upload.change(lambda: "upload", None, shown, api_visibility="private", queue=False)
        # Switching models says which one answers now, and answers again for the drawing or upload the label shows.
        # Page events, not API endpoints: the API is /predict and /predict_image, each with its model_name argument.
        choice.change(answered_by, choice, source, show_progress="hidden", api_visibility="private")
        choice.change(predict_shown, [sketch, upload, shown, choice], label, show_progress="hidden",
                      api_visibility="private")  # fmt: skip
        # Clear through the editor's own "Clear canvas" button: setting the Sketchpad's value to None from Python leaves
        # the editor stuck loading (gradio 6.31). Its change event then reports the blank canvas.
        clear.click(None, js=CLEAR_CANVAS_JS)
        demo.load(None, js=SELECT_BRUSH_JS)
    return demo


demo = build_demo()

if __name__ == "__main__":
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    served = ", ".join(f"{name}: {src}@{rev}" for name, (src, rev) in MODEL_SOURCES.items())
    print(f"Mini-Vision-V2 demo: http://{host}:{port}  (default {DEFAULT_MODEL}; {served})")
    # SIGTERM (a Space stopping, `kill`, a load test ending) ends the process through Python's exit, so atexit removes
    # the private upload folder with the users' drawings; by default it ended on the spot and left the folder behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    demo.launch(server_name=host, server_port=port, share=False, max_file_size="20mb")
