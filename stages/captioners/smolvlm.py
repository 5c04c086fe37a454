"""SmolVLM captions through transformers (default `HuggingFaceTB/SmolVLM-256M-Instruct`, the Idefics3 architecture).

A current small vision-language model, as the multi-identity datasets caption with (Qwen2-VL / Qwen2.5-VL in
ConsisID and OpenS2V): it is asked for one sentence per person, from left to right, the order the caption stage
matches class words to the labelled faces in (stages/caption_people.py). The model is a local directory or a hub
id, found as BLIP's is (stages/captioners/blip.py: `resolve_model`); `caption.vlm_model` names it. Loaded through
the Auto classes, so a SmolVLM2 or another image-text-to-text model with a chat template loads the same way.
Its processor keeps its resize (no `fitter`, unlike BLIP's): it enlarges a crop to `size.longest_edge` (1,456 px by
default) and cuts it into tiles of `max_image_size` plus a global image, so every form it makes is bigger than the
crop's JPEG that travels instead.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

import numpy as np

from pipeline.core.config import PipelineConfig
from stages.backends import Backend
from stages.devices import checked_module, fast_matmuls, torch_device

from .base import CAPTIONERS, Captioner
from .blip import require_transformers, resolve_model

OFFICIAL = "HuggingFaceTB/SmolVLM-256M-Instruct"  # the manifest's `smolvlm_256m`
KEY = "caption.vlm_model"


@CAPTIONERS.register
class SmolVlmCaptioner(Captioner, Backend):
    name = "smolvlm"
    fields = ("vlm_model", "device", "vlm_prompt", "num_beams", "max_new_tokens", "top_p")

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["smolvlm_256m"] if config.caption.vlm_model == OFFICIAL else []

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        require_transformers()
        resolve_model(config.caption.vlm_model, "SmolVLM", KEY)

    @classmethod
    def load(cls, config: PipelineConfig) -> SmolVlmCaptioner:
        settings = config.caption
        return cls(settings.vlm_model, device=settings.device, prompt=settings.vlm_prompt,
                   num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens, top_p=settings.top_p)

    def __init__(self, model: str, *, device: str = "auto", prompt: str, num_beams: int = 3,
                 max_new_tokens: int = 60, top_p: float = 0.9) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self._torch = torch
        self.folder = resolve_model(model, "SmolVLM", KEY)
        self.device = torch_device(device)
        fast_matmuls(self.device)
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(self.folder)
        self.processor.tokenizer.padding_side = "left"  # a batch's prompts end where generation starts
        loaded = AutoModelForImageTextToText.from_pretrained(self.folder, dtype=self.dtype, device_map=self.device)
        self.model = checked_module(loaded.eval(), self.device, "SmolVLM")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.strip()}]}]
        self.prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        self.num_beams, self.max_new_tokens, self.top_p = num_beams, max_new_tokens, top_p
        self.source = f"smolvlm:{model}"
        self.model_name = model

    def caption(self, images: Sequence[np.ndarray], seed: int | None = None) -> list[str]:
        if not images:
            return []
        inputs = self.processor(text=[self.prompt] * len(images), images=[[image] for image in images],
                                return_tensors="pt", padding=True).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if seed is None:
            options = {"num_beams": self.num_beams, "do_sample": False}
        else:
            self._torch.manual_seed(seed)  # the same seed gives the same samples on a re-run (on one device)
            options = {"num_beams": 1, "do_sample": True, "top_p": self.top_p}
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
        answers = out[:, inputs["input_ids"].shape[1] :]  # the prompt is echoed before the answer
        return [" ".join(text.split()) for text in self.processor.batch_decode(answers, skip_special_tokens=True)]

    def versions(self) -> dict[str, str]:
        revision = self.folder.name if "snapshots" in self.folder.parts else "local"
        return {"captioner": "smolvlm", "model": self.model_name, "revision": revision,
                "transformers": importlib.metadata.version("transformers"), "torch": self._torch.__version__,
                "device": self.device}
