"""A tiny SDXL and PhotoMaker adapter with random weights, saved in the real on-disk layouts.

The base model is a diffusers directory (model_index.json, unet/, vae/, text_encoder(_2)/,
tokenizer(_2)/, scheduler/) whose tokenizers carry CLIP's real BPE vocabulary (from open_clip's
package). The adapter holds an ID encoder of PhotoMaker v1's or v2's structure, sized to these
text encoders (projections to 32 and 64 = their widths; v2's tokens 96 wide, made from 512-d
ArcFace embeddings as in the real file), and LoRA weights for the UNet's attention.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from pipeline.generator.id_encoder import HEAD_DIM, IDEncoder
from pipeline.generator.id_encoder_v2 import RESAMPLER_HEAD_DIM, IDEncoderV2, ResamplerSizes
from stages.clip_tokens import MAX_LENGTH, clip_tokenizer

WIDTHS = (32, 64)  # text encoder 1 and 2 hidden sizes; the prompt embeddings are 96 wide
PROJECTION = 32  # text encoder 2's pooled projection
TIME_DIM = 8
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
OLD_LORA_SIDES = {"A": "down", "B": "up"}  # peft's lora_A/lora_B were the old processors' down/up
ARCFACE_DIM = 512  # insightface's ArcFace embeddings: what v2's token projection takes
V2_SIZES = ResamplerSizes(face_dim=ARCFACE_DIM, proj_dim=64, dim=sum(WIDTHS), num_tokens=2, vision_dim=HEAD_DIM,
                          depth=2, heads=1, ff_dim=64)


def text_encoder(width: int, projection: bool) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=PROJECTION,
                            hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM, transformer_layers_per_block=(1, 1), cross_attention_dim=sum(WIDTHS),
        projection_class_embeddings_input_dim=PROJECTION + 6 * TIME_DIM,
    )


def vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def tokenizers() -> tuple:
    """SDXL's pair: the same BPE vocabulary, padded with the end token and with "!" respectively."""
    first = copy.deepcopy(clip_tokenizer())
    first.model_max_length = MAX_LENGTH
    second = copy.deepcopy(first)
    second.pad_token = "!"
    return first, second


def save_base_model(path: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tokenizers()
    pipe = StableDiffusionXLPipeline(
        vae=vae(), text_encoder=text_encoder(WIDTHS[0], False), text_encoder_2=text_encoder(WIDTHS[1], True),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet(),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
    )
    pipe.save_pretrained(path)
    return path


def vision_config() -> object:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=HEAD_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
                            patch_size=8, image_size=32, projection_dim=WIDTHS[0], hidden_act="quick_gelu")


def id_encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return IDEncoder(vision_config(), second_dim=WIDTHS[1]).state_dict()


def id_encoder_v2_state() -> dict[str, torch.Tensor]:
    """v2's structure: one resampler head (of the official 128-d heads) is enough for a 96-wide toy."""
    assert V2_SIZES.heads * RESAMPLER_HEAD_DIM >= V2_SIZES.dim
    torch.manual_seed(3)
    return IDEncoderV2(vision_config(), second_dim=WIDTHS[1], sizes=V2_SIZES).state_dict()


def lora_state() -> dict[str, torch.Tensor]:
    """LoRA on the UNet's attention projections, keyed as diffusers saves them (`unet.<module>.lora_A.weight`)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(2)
    model = unet()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS))
    state = get_peft_model_state_dict(model)
    return {f"unet.{key}": torch.randn_like(value) * 0.1 for key, value in state.items()}  # B is zero at init


def as_attention_processor_keys(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official files' LoRA layout, from diffusers' old attention processors PhotoMaker was trained with:
    `unet.<attn>.to_q.lora_A.weight` -> `unet.<attn>.processor.to_q_lora.down.weight` (to_out.0 -> to_out_lora)."""
    pattern = re.compile(r"^(.*)\.to_(q|k|v|out)(?:\.0)?\.lora_([AB])\.weight$")
    renamed = {}
    for key, value in lora.items():
        module, projection, side = pattern.fullmatch(key).groups()
        renamed[f"{module}.processor.to_{projection}_lora.{OLD_LORA_SIDES[side]}.weight"] = value
    return renamed


def save_adapter(path: Path, id_encoder: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> Path:
    """`.bin`: a pickle of the two nested dicts (the official v1 file); `.safetensors`: flat prefixed keys."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"id_encoder.{k}": v for k, v in id_encoder.items()} | {f"lora_weights.{k}": v for k, v in lora.items()}
        save_file({key: value.contiguous() for key, value in flat.items()}, str(path))
    else:
        torch.save({"id_encoder": id_encoder, "lora_weights": lora}, path)
    return path


def partial_v2(id_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A v1 state with two stray keys of v2's resampler: detected as v2, but not a whole v2 encoder."""
    extra = {"qformer_perceiver.token_proj.0.weight": torch.zeros(8, 8),
             "qformer_perceiver.perceiver_resampler.proj_in.weight": torch.zeros(8, 8)}
    return {**id_encoder, **extra}
