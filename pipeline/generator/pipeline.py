"""SDXL (diffusers) with the PhotoMaker adapter: text-only prompt first, ID-conditioned from `start_merge_step`.

The prompt embeddings are computed here as SDXL does (penultimate hidden states of both text
encoders, concatenated; pooled output of the second), once for the text-only prompt and once for
the ID prompt, whose class-word rows are then fused with the references' ID tokens (v1: one per
reference, from CLIP; v2: two, from CLIP and the shards' ArcFace embedding). The denoising loop
is diffusers' own; a step-end callback swaps the conditional half of the embeddings at the merge step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.core.config import GenerateSection
from pipeline.core.errors import UserError
from pipeline.generator.checkpoint import Adapter
from pipeline.generator.id_encoder import IDEncoder
from pipeline.generator.prompt import add_trigger, id_tokens
from pipeline.generator.references import Reference

BASE_SOURCE = "stabilityai/stable-diffusion-xl-base-1.0 on Hugging Face (diffusers layout)"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP's image tower was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LORA_NAME = "photomaker"


@dataclass
class Generator:
    pipe: object  # diffusers StableDiffusionXLPipeline
    id_encoder: IDEncoder
    trigger: str
    device: torch.device


@dataclass(frozen=True)
class Conditioning:
    text_only: tuple[torch.Tensor, torch.Tensor]  # (1, 77, D) prompt embeddings, (1, P) pooled
    with_id: tuple[torch.Tensor, torch.Tensor]  # the same for the ID prompt, class-word rows fused
    positions: list[int]  # rows of `with_id` that hold stacked ID embeddings, one per ID token


def pick_device(settings: GenerateSection) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available() else
                          "cpu" if settings.device == "auto" else settings.device)
    if settings.dtype != "auto":
        return device, getattr(torch, settings.dtype)
    return device, torch.float16 if device.type == "cuda" else torch.float32


def weights_variant(base_model: Path) -> str | None:
    """"fp16" where the UNet's fp16 files are there (`*.fp16.safetensors`: the UNet is 5 GB, not 10, and a download
    of the fp16 files alone holds nothing else), else None: the plain fp32 files. Either loads in any dtype."""
    unet = base_model / "unet"
    return "fp16" if any(unet.glob("*.fp16.safetensors")) or any(unet.glob("*.fp16.bin")) else None


def load_generator(base_model: Path, adapter: Adapter, encoder: IDEncoder, settings: GenerateSection) -> Generator:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    if not (base_model / "model_index.json").is_file():
        raise UserError(f"{base_model} is not an SDXL model in diffusers layout (no model_index.json)",
                        f"download one, e.g. {BASE_SOURCE}")
    device, dtype = pick_device(settings)
    pipe = StableDiffusionXLPipeline.from_pretrained(base_model, dtype=dtype, variant=weights_variant(base_model),
                                                     local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(adapter.lora_weights, adapter_name=LORA_NAME)
    pipe.set_adapters([LORA_NAME], adapter_weights=[settings.lora_scale])
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        add_trigger(tokenizer, settings.trigger_word)
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    if encoder.fuse_module.layer_norm.normalized_shape[0] != width:
        raise UserError(f"the adapter's ID embeddings do not fit {base_model} (prompt width {width})",
                        "use an SDXL base model with the adapter it was trained for")
    pipe.set_progress_bar_config(disable=True)
    return Generator(pipe.to(device), encoder.to(device, dtype), settings.trigger_word, device)


def reference_pixels(crops: list[Image.Image], size: int) -> torch.Tensor:
    """Square RGB crops -> (n, 3, size, size) CLIP-normalised pixels (resize short side, centre crop)."""
    arrays = []
    for image in crops:
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        arrays.append(np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255)
    pixels = (np.stack(arrays) - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_ids(gen: Generator, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt embeddings of one token sequence per text encoder."""
    hidden, pooled = [], None
    for encoder, sequence in zip((gen.pipe.text_encoder, gen.pipe.text_encoder_2), ids):
        out = encoder(torch.tensor([sequence], device=gen.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else pooled
    return torch.cat(hidden, dim=-1), pooled


@torch.no_grad()
def condition(gen: Generator, prompt: str, id_embeds: torch.Tensor) -> Conditioning:
    """Text-only and ID-conditioned embeddings; `id_embeds` holds (tokens, D) per slot, class word repeated per token.

    Slot-major order, as the official pipeline fuses them: slot 0's tokens, then slot 1's, and so on.
    """
    id_embeds = id_embeds.flatten(0, 1)
    tokens = [id_tokens(tok, prompt, gen.trigger, id_embeds.shape[0]) for tok in (gen.pipe.tokenizer, gen.pipe.tokenizer_2)]
    if tokens[0].positions != tokens[1].positions:
        raise ValueError("SDXL's two tokenizers put the class word at different positions")
    text_only = encode_ids(gen, [t.text_only_ids for t in tokens])
    embeds, pooled = encode_ids(gen, [t.ids for t in tokens])
    fused = gen.id_encoder.fuse(embeds, id_embeds, tokens[0].positions)
    return Conditioning(text_only, (fused, pooled), tokens[0].positions)


@torch.no_grad()
def image_embeddings(gen: Generator, refs: list[Reference]) -> torch.Tensor:
    """(n, tokens, D): the ID tokens of each reference; its face embedding is read only by encoders that take one."""
    encoder = gen.id_encoder
    dtype = encoder.visual_projection.weight.dtype
    pixels = reference_pixels([ref.image() for ref in refs], encoder.image_size).to(gen.device, dtype)
    if encoder.face_dim is None:
        return encoder.id_tokens(pixels)
    faces = np.stack([ref.raw_embedding for ref in refs])
    return encoder.id_tokens(pixels, torch.from_numpy(faces).to(gen.device, dtype))


def generate_image(gen: Generator, cond: Conditioning, settings: GenerateSection, seed: int) -> Image.Image:
    """One image; the conditional half of the UNet's input switches to the ID prompt at the merge step."""
    if settings.start_merge_step >= settings.steps:
        raise UserError(f"start_merge_step {settings.start_merge_step} >= steps {settings.steps}: the ID is never used",
                        "pass --start-merge-step below --steps")
    first = cond.with_id if settings.start_merge_step == 0 else cond.text_only

    def swap(pipe: object, step: int, timestep: object, tensors: dict) -> dict:
        if step + 1 != settings.start_merge_step:
            return {}
        embeds, pooled = cond.with_id
        keep = tensors["prompt_embeds"].shape[0] - 1  # with guidance, row 0 is the negative prompt
        return {"prompt_embeds": torch.cat([tensors["prompt_embeds"][:keep], embeds]),
                "add_text_embeds": torch.cat([tensors["add_text_embeds"][:keep], pooled])}

    result = gen.pipe(
        prompt_embeds=first[0], pooled_prompt_embeds=first[1], negative_prompt=settings.negative_prompt,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance, width=settings.width,
        height=settings.height, generator=torch.Generator(gen.device).manual_seed(seed),
        callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"],
    )
    return result.images[0]
