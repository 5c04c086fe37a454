"""BLIP image captioning through transformers (default `Salesforce/blip-image-captioning-large`).

The model is a local directory or a hub id; a hub id is looked up in the Hugging Face cache and
downloaded there only where the hub can be reached (never with HF_HUB_OFFLINE=1). The prompt
prefix conditions the decoder ("a picture of" is the prefix BLIP was fine-tuned for captioning
with) and starts every caption. Crops reach the actor already resized to the model's input size by the processor's
own resize, on the CPU workers that prepare them (`fitter`): the actor's processor only rescales and normalises.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound
from stages.backends import Backend
from stages.devices import checked_module, fast_matmuls, torch_device

from .base import CAPTIONERS, Captioner, Fit

OFFICIAL = "Salesforce/blip-image-captioning-large"  # the manifest's `blip_large`
HUB_FILES = ["*.json", "*.txt", "*.jinja", "*.safetensors"]  # config, processor, tokenizer, chat template, weights


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin")
    )


def resolve_model(name: str, kind: str = "BLIP", key: str = "caption.model") -> Path:
    """The folder holding the `kind` model `name` (a directory or a hub id, config key `key`); ModelNotFound says
    where it looked (the BLIP and SmolVLM backends)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not has_weights(folder):
            raise ModelNotFound(f"{kind} model files (config.json and weights) in {folder}", [str(folder)],
                                f"save a {kind} model there with save_pretrained(), or set {key} to another one")
        return folder
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as exc:  # offline, unknown repo, invalid id or path: all mean "not here"
        fix = (f"on a machine that reaches the hub run `hf download {name}` and copy {constants.HF_HUB_CACHE}, "
               f"or set {key} to a local directory of a {kind} model")
        raise ModelNotFound(f"{kind} model {name!r} ({type(exc).__name__})",
                            [str(folder.resolve()), constants.HF_HUB_CACHE], fix) from exc


def require_transformers() -> None:
    """The captioners built on transformers need it and torch installed (not every profile does)."""
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise ModelNotFound(f"python package {package!r}", ["this environment"], "pip install torch transformers")


@CAPTIONERS.register
class BlipCaptioner(Captioner, Backend):
    name = "blip"
    fields = ("model", "device", "prompt", "num_beams", "max_new_tokens", "top_p")

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["blip_large"] if config.caption.model == OFFICIAL else []

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        require_transformers()
        resolve_model(config.caption.model)

    @classmethod
    def fitter(cls, config: PipelineConfig) -> Fit:
        return processor_resize(config.caption.model)

    @classmethod
    def load(cls, config: PipelineConfig) -> BlipCaptioner:
        settings = config.caption
        return cls(settings.model, device=settings.device, prompt=settings.prompt, num_beams=settings.num_beams,
                   max_new_tokens=settings.max_new_tokens, top_p=settings.top_p)

    def __init__(self, model: str, *, device: str = "auto", prompt: str = "", num_beams: int = 3,
                 max_new_tokens: int = 30, top_p: float = 0.9) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self._torch = torch
        self.folder = resolve_model(model)
        self.device = torch_device(device)
        fast_matmuls(self.device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32  # halves GPU memory and time
        self.processor = BlipProcessor.from_pretrained(self.folder)
        loaded = BlipForConditionalGeneration.from_pretrained(self.folder, dtype=self.dtype, device_map=self.device)
        self.model = checked_module(loaded.eval(), self.device, "BLIP")
        self.prompt, self.num_beams, self.max_new_tokens, self.top_p = prompt.strip(), num_beams, max_new_tokens, top_p
        self.source = f"blip:{model}"
        self.model_name = model

    def caption(self, images: Sequence[np.ndarray], seed: int | None = None) -> list[str]:
        if not images:
            return []
        text = [self.prompt] * len(images) if self.prompt else None
        # a crop `processor_resize` fitted is at the processor's size already: its resize returns it as it is
        inputs = self.processor(images=list(images), text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if seed is None:
            options = {"num_beams": self.num_beams, "do_sample": False}
        else:
            self._torch.manual_seed(seed)  # the same seed gives the same samples on a re-run (on one device)
            options = {"num_beams": 1, "do_sample": True, "top_p": self.top_p}
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
        return [" ".join(text.split()) for text in self.processor.batch_decode(out, skip_special_tokens=True)]

    def versions(self) -> dict[str, str]:
        revision = self.folder.name if "snapshots" in self.folder.parts else "local"
        return {"captioner": "blip", "model": self.model_name, "revision": revision,
                "transformers": importlib.metadata.version("transformers"), "torch": self._torch.__version__,
                "device": self.device}


@functools.cache  # once per worker process: the runner makes a stage object for every task it prepares
def processor_resize(model: str) -> Fit:
    """BLIP's image processor (the model's own, from its folder) resizing only, no rescale and no normalise: a crop
    comes out as the processor would resize it, HxWx3 uint8 at the model's input size. That is the smallest form to
    ship: at BLIP-large's 384 px, 0.44 MB, where its float32 pixel_values are 1.8 MB and the 1024-px crop 3.1 MB
    (benchmarks/object_store_bytes.py)."""
    from transformers import BlipProcessor

    images = BlipProcessor.from_pretrained(resolve_model(model)).image_processor

    def fit(image: np.ndarray) -> np.ndarray:
        resized = images(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(resized[0].transpose(1, 2, 0))  # channels last again, as captioners take images

    return fit
