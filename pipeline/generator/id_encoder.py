"""PhotoMaker v1's ID encoder: CLIP image embeddings fused into the class word's token embeddings.

A CLIP ViT vision tower (ViT-L/14 in the real file: hidden 1024) gives one pooled vector per
reference image; its own projection (to the first text encoder's width, 768) and a second one
without bias (to the second's, 1280) are concatenated, so each reference has the width of SDXL's
prompt embeddings (2048). The fuse module mixes that with the class word's prompt embedding.
Parameter names follow the official file, so its state dict loads strictly. v2's encoder
(id_encoder_v2.py) is this one plus an ArcFace-token resampler.
"""

from __future__ import annotations

import re
from typing import TypeVar

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

HEAD_DIM = 64  # CLIP ViTs use 64-d heads; the head count is the one size a state dict does not show
Encoder = TypeVar("Encoder", bound=nn.Module)


class MLP(nn.Module):
    """LayerNorm, Linear, GELU, Linear, with an optional residual."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp1 = MLP(dim * 2, dim, dim, residual=False)
        self.mlp2 = MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, token_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        """(n, dim) class-word token embeddings and (n, dim) image embeddings -> (n, dim) stacked ID embeddings."""
        fused = self.mlp1(torch.cat([token_embeds, id_embeds], dim=-1)) + token_embeds
        return self.layer_norm(self.mlp2(fused))


class IDEncoder(nn.Module):
    face_dim: int | None = None  # width of the face embedding a reference needs; v1 needs none

    def __init__(self, vision: CLIPVisionConfig, second_dim: int) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, vision.projection_dim, bias=False)
        self.visual_projection_2 = nn.Linear(vision.hidden_size, second_dim, bias=False)
        self.fuse_module = FuseModule(vision.projection_dim + second_dim)
        self.image_size = vision.image_size

    def id_tokens(self, pixels: torch.Tensor, faces: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 3, s, s) normalised pixels -> (n, 1, dim): both projections of the pooled CLS state.

        One ID token per reference; v1 reads no face embeddings (`faces` is there for v2's signature).
        """
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1).unsqueeze(1)

    def fuse(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """A copy of (1, seq, dim) prompt embeddings whose rows at `positions` (one per (dim,) ID embedding) are fused."""
        if len(positions) != id_embeds.shape[0]:
            raise ValueError(f"{len(positions)} class-word positions for {id_embeds.shape[0]} ID embeddings")
        out = prompt_embeds.clone()
        index = torch.tensor(positions, device=out.device)
        out[0, index] = self.fuse_module(prompt_embeds[0, index], id_embeds.to(out.dtype))
        return out


def vision_config(state: dict[str, torch.Tensor]) -> CLIPVisionConfig:
    """The vision tower's config, read from tensor shapes (so a real and a tiny file load the same way)."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = {int(m.group(1)) for key in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", key))}
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // HEAD_DIM),
        patch_size=patch_size,
        image_size=round((positions - 1) ** 0.5) * patch_size,
        projection_dim=state["visual_projection.weight"].shape[0],
        hidden_act="quick_gelu",
    )


def second_width(state: dict[str, torch.Tensor]) -> int:
    return state["visual_projection_2.weight"].shape[0]


def build_id_encoder(state: dict[str, torch.Tensor]) -> IDEncoder:
    return load_exactly(IDEncoder(vision_config(state), second_width(state)), state)


def load_exactly(encoder: Encoder, state: dict[str, torch.Tensor]) -> Encoder:
    """`encoder` with exactly the given weights (strict: a foreign or partial state dict fails)."""
    encoder.load_state_dict({key: value for key, value in state.items() if not key.endswith("position_ids")},
                            strict=True)  # position_ids: a buffer older transformers saved, not a weight
    return encoder.eval()
