"""PhotoMaker adapter files: one file holding the ID encoder's and the UNet LoRA's state dicts.

Official files come as `.bin` (a torch pickle of `{"id_encoder": {...}, "lora_weights": {...}}`) or
`.safetensors` (flat keys prefixed `id_encoder.` and `lora_weights.`). Pickles are read with
`weights_only=True`, so a file cannot run code. The version is told from the ID encoder's keys: v2
adds an ArcFace-token resampler (`qformer_perceiver.*`); everything else with a fuse module is v1.
Each version's ID encoder is built by its own module, so a v1 file never reaches v2's code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import UserError
from pipeline.generator.id_encoder import IDEncoder, build_id_encoder
from pipeline.generator.id_encoder_v2 import build_id_encoder_v2

PARTS = ("id_encoder", "lora_weights")
V2_MARKER = "qformer_perceiver."  # the v2 resampler that turns ArcFace embeddings into tokens
V1_MARKERS = ("visual_projection_2.weight", "fuse_module.mlp1.fc1.weight")
ADAPTER_SOURCE = ("TencentARC/PhotoMaker (photomaker-v1.bin) or TencentARC/PhotoMaker-V2 (photomaker-v2.bin) "
                  "on Hugging Face")
BUILDERS = {"v1": build_id_encoder, "v2": build_id_encoder_v2}
EXPECTED = ("pass a PhotoMaker adapter: a .bin (torch) or .safetensors file of id_encoder and lora_weights, "
            f"e.g. {ADAPTER_SOURCE}")


@dataclass(frozen=True)
class Adapter:
    path: Path
    version: str  # "v1" | "v2"
    id_encoder: dict[str, torch.Tensor]
    lora_weights: dict[str, torch.Tensor]


def load_adapter(path: Path) -> Adapter:
    """Read and classify an adapter file; anything that is not a PhotoMaker file is a UserError."""
    if not path.is_file():
        raise UserError(f"adapter file not found: {path}", f"download one, e.g. {ADAPTER_SOURCE}")
    if path.stat().st_size == 0:
        raise UserError(f"adapter file {path} is empty (0 bytes): a download that did not finish?", EXPECTED)
    parts = split_parts(read_tensors(path), path)
    return Adapter(path, detect_version(parts["id_encoder"], path), parts["id_encoder"], parts["lora_weights"])


def read_tensors(path: Path) -> dict:
    """The file's dict of tensors; a file that is none (torn, garbage, pickled code, another object) is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:  # weights_only: a pickle that would build anything but tensors is refused (UnpicklingError)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, OSError) as exc:
        why = " ".join(str(exc).split()).split(". ")[0][:160] or f"{type(exc).__name__}: it ends too soon"
        raise UserError(f"cannot read adapter file {path} as plain tensors: {why}", EXPECTED) from exc
    if not isinstance(data, dict):
        raise UserError(f"adapter file {path} holds a {type(data).__name__}, not a dict of tensors", EXPECTED)
    return data


def split_parts(data: dict, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Nested (`data["id_encoder"]`) or flat prefixed (`id_encoder.<key>`) layouts, to nested."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for part in PARTS:
        nested = data.get(part)
        prefix = f"{part}."
        flat = {key[len(prefix):]: value for key, value in data.items() if key.startswith(prefix)}
        parts[part] = dict(nested) if isinstance(nested, dict) else flat
        if not parts[part]:
            raise UserError(f"{path} has no {part} weights: not a PhotoMaker adapter",
                            f"pass a file holding id_encoder and lora_weights, e.g. {ADAPTER_SOURCE}")
    return parts


def detect_version(id_encoder: dict[str, torch.Tensor], path: Path) -> str:
    if any(key.startswith(V2_MARKER) for key in id_encoder):
        return "v2"
    if all(key in id_encoder for key in V1_MARKERS):
        return "v1"
    raise UserError(f"{path}: the id_encoder weights match neither PhotoMaker v1 nor v2",
                    f"pass an official PhotoMaker file, e.g. {ADAPTER_SOURCE}")


def build_encoder(adapter: Adapter) -> IDEncoder:
    """The adapter's ID encoder, of the structure its version names; weights that do not fit are a UserError."""
    try:
        return BUILDERS[adapter.version](adapter.id_encoder)
    except (KeyError, RuntimeError) as exc:  # a missing tensor, or a missing, extra or misshapen one
        detail = f"no {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:300]
        raise UserError(f"{adapter.path}: the id_encoder weights do not fit PhotoMaker {adapter.version} ({detail})",
                        f"pass an unmodified official file, e.g. {ADAPTER_SOURCE}") from exc
