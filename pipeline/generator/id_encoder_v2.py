"""PhotoMaker v2's ID encoder: v1's, plus ID tokens made from each reference's ArcFace embedding.

Each reference gives `num_tokens` ID embeddings (2 in the official file) instead of one: its
insightface ArcFace embedding (512-d) is projected to that many prompt-width tokens, which a
perceiver resampler refines by attending to the CLIP tower's last hidden states (all patch
states, before the post-layernorm). v1's fuse module then mixes each token into one copy of the
class word. v1's pooled projections are still in the file, and loaded, but v2 does not use them.
Parameter names follow the official `photomaker-v2.bin`, so its state dict loads strictly; the
sizes are read from tensor shapes, as for v1. The face embeddings are insightface's raw
(unnormalised) ones, as PhotoMaker's own pipeline passes them: `token_proj` is not scale-invariant,
so the shards' unit vectors are scaled back by their stored `embedding_norm`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig

from pipeline.generator.id_encoder import IDEncoder, load_exactly, second_width, vision_config

PREFIX = "qformer_perceiver."
RESAMPLER_HEAD_DIM = 128  # the resampler's head width in the official model; a state dict shows only heads x width


@dataclass(frozen=True)
class ResamplerSizes:
    face_dim: int  # ArcFace embedding width (512)
    proj_dim: int  # token projection's hidden width (4 x 512)
    dim: int  # prompt-embedding width, of the tokens (2048)
    num_tokens: int  # ID tokens per reference (2)
    vision_dim: int  # CLIP hidden width the resampler reads (1024)
    depth: int  # resampler layers (4)
    heads: int  # attention heads of RESAMPLER_HEAD_DIM (16)
    ff_dim: int  # feed-forward hidden width (4 x 2048)

    @classmethod
    def read(cls, state: dict[str, torch.Tensor]) -> ResamplerSizes:
        def shape(key: str) -> torch.Size:
            return state[PREFIX + key].shape

        layers = {int(m.group(1)) for key in state
                  if (m := re.match(rf"{re.escape(PREFIX)}perceiver_resampler\.layers\.(\d+)\.", key))}
        dim = shape("token_norm.weight")[0]
        return cls(face_dim=shape("token_proj.0.weight")[1], proj_dim=shape("token_proj.0.weight")[0], dim=dim,
                   num_tokens=shape("token_proj.2.weight")[0] // dim,
                   vision_dim=shape("perceiver_resampler.proj_in.weight")[1], depth=len(layers),
                   heads=shape("perceiver_resampler.layers.0.0.to_q.weight")[0] // RESAMPLER_HEAD_DIM,
                   ff_dim=shape("perceiver_resampler.layers.0.1.1.weight")[0])


class PerceiverAttention(nn.Module):
    """The ID tokens (queries) attend to the image states and to themselves."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)  # image states
        self.norm2 = nn.LayerNorm(dim)  # ID tokens
        self.to_q = nn.Linear(dim, heads * RESAMPLER_HEAD_DIM, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * RESAMPLER_HEAD_DIM, bias=False)
        self.to_out = nn.Linear(heads * RESAMPLER_HEAD_DIM, dim, bias=False)

    def forward(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        states, tokens = self.norm1(states), self.norm2(tokens)
        keys, values = self.to_kv(torch.cat([states, tokens], dim=1)).chunk(2, dim=-1)
        q, k, v = (part.unflatten(-1, (self.heads, -1)).transpose(1, 2) for part in (self.to_q(tokens), keys, values))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


def feed_forward(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, dim, bias=False))


class PerceiverResampler(nn.Module):
    def __init__(self, sizes: ResamplerSizes) -> None:
        super().__init__()
        self.proj_in = nn.Linear(sizes.vision_dim, sizes.dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(sizes.dim, sizes.heads), feed_forward(sizes.dim, sizes.ff_dim)])
            for _ in range(sizes.depth))
        self.proj_out = nn.Linear(sizes.dim, sizes.dim)
        self.norm_out = nn.LayerNorm(sizes.dim)

    def forward(self, tokens: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        states = self.proj_in(image_states)
        for attention, ff in self.layers:
            tokens = tokens + attention(states, tokens)
            tokens = tokens + ff(tokens)
        return self.norm_out(self.proj_out(tokens))


class QFormerPerceiver(nn.Module):
    def __init__(self, sizes: ResamplerSizes) -> None:
        super().__init__()
        self.num_tokens = sizes.num_tokens
        self.token_proj = nn.Sequential(nn.Linear(sizes.face_dim, sizes.proj_dim), nn.GELU(),
                                        nn.Linear(sizes.proj_dim, sizes.dim * sizes.num_tokens))
        self.token_norm = nn.LayerNorm(sizes.dim)
        self.perceiver_resampler = PerceiverResampler(sizes)

    def forward(self, faces: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """(n, face_dim) raw ArcFace embeddings, (n, patches + 1, vision_dim) CLIP states -> (n, num_tokens, dim)."""
        tokens = self.token_norm(self.token_proj(faces).unflatten(-1, (self.num_tokens, -1)))
        return tokens + self.perceiver_resampler(tokens, image_states)


class IDEncoderV2(IDEncoder):
    def __init__(self, vision: CLIPVisionConfig, second_dim: int, sizes: ResamplerSizes) -> None:
        super().__init__(vision, second_dim)
        self.qformer_perceiver = QFormerPerceiver(sizes)
        self.face_dim = sizes.face_dim

    def id_tokens(self, pixels: torch.Tensor, faces: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 3, s, s) normalised pixels and (n, face_dim) raw ArcFace embeddings -> (n, num_tokens, dim)."""
        if faces is None:
            raise ValueError("PhotoMaker v2 needs each reference's ArcFace embedding")
        states = self.vision_model(pixel_values=pixels).last_hidden_state
        return self.qformer_perceiver(faces.to(states.dtype), states)


def build_id_encoder_v2(state: dict[str, torch.Tensor]) -> IDEncoderV2:
    return load_exactly(IDEncoderV2(vision_config(state), second_width(state), ResamplerSizes.read(state)), state)
