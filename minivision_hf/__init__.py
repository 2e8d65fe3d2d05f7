"""Mini-Vision-V2 as a Hugging Face transformers model package.

Importing this package registers the model with the Auto classes, so that `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `AutoImageProcessor` work without `trust_remote_code`; `save_pretrained` writes
an `auto_map` and `custom_pipelines` and copies the code files, so that a saved folder also loads as Hub remote code.
The image-classification pipeline, in-package (the same answers as the remote-code one):

    pipeline("image-classification", model=..., trust_remote_code=False,
             pipeline_class=MiniVisionImageClassificationPipeline)
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_minivision import MiniVisionConfig
from .image_processing_minivision import MNIST_MEAN, MNIST_STD, MiniVisionImageProcessor, to_pixel_values
from .modeling_minivision import MiniVisionForImageClassification, MiniVisionModel, MiniVisionPreTrainedModel
from .pipeline_minivision import BLANK_LABEL, MiniVisionImageClassificationPipeline

__version__ = "0.1.0"

AutoConfig.register("minivision", MiniVisionConfig, exist_ok=True)
AutoModel.register(MiniVisionConfig, MiniVisionModel, exist_ok=True)
AutoModelForImageClassification.register(MiniVisionConfig, MiniVisionForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    MiniVisionConfig, image_processor_classes={"torchvision": MiniVisionImageProcessor}, exist_ok=True
)

MiniVisionConfig.register_for_auto_class()
MiniVisionModel.register_for_auto_class("AutoModel")
MiniVisionForImageClassification.register_for_auto_class("AutoModelForImageClassification")
MiniVisionImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "BLANK_LABEL",
    "MNIST_MEAN",
    "MNIST_STD",
    "MiniVisionConfig",
    "MiniVisionForImageClassification",
    "MiniVisionImageClassificationPipeline",
    "MiniVisionImageProcessor",
    "MiniVisionModel",
    "MiniVisionPreTrainedModel",
    "to_pixel_values",
]
