"""The `generate` subcommand's options: flags that override the `generate` config section, and the request."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError

# flag destination -> key of the `generate` config section it overrides
CONFIG_FLAGS = {
    "base_model": "base_model", "adapter": "adapter", "seed": "seed", "steps": "steps", "guidance": "guidance",
    "start_merge_step": "start_merge_step", "num_images": "num_images",
}


@dataclass(frozen=True)
class Request:
    prompt: str
    identities: list[str]
    num_refs: list[int]  # one per identity (a single value applies to all)
    weights: list[float] | None  # None: mix by pool


def add_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--identity", action="append", required=True, metavar="ID",
                         help="a name, its slug or its readable slug (angelina_jolie); repeat to mix several people")
    command.add_argument("--prompt", required=True, help='with the trigger word after the class word: "a photo of a man img"')
    command.add_argument("--num-ref", type=int, action="append", metavar="N",
                         help="reference photos per identity (generate.num_ref); repeat to give each identity its share")
    command.add_argument("--weights", metavar="W1,W2", help="mix identities by weighting their embeddings instead")
    command.add_argument("--seed", type=int, help="generate.seed; image k uses seed + k")
    command.add_argument("--steps", type=int, help="generate.steps")
    command.add_argument("--guidance", type=float, help="generate.guidance")
    command.add_argument("--start-merge-step", type=int, help="generate.start_merge_step: text-only steps before the ID")
    command.add_argument("--num-images", type=int, help="generate.num_images")
    command.add_argument("--base-model", metavar="PATH", help="SDXL in diffusers layout (generate.base_model)")
    command.add_argument("--adapter", metavar="PATH", help="PhotoMaker .bin or .safetensors (generate.adapter)")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config key; repeatable")


def overrides(args: argparse.Namespace) -> list[str]:
    """`--set` strings for the flags given (JSON values are valid YAML, so paths survive quoting)."""
    given = {key: getattr(args, dest) for dest, key in CONFIG_FLAGS.items() if getattr(args, dest) is not None}
    return [f"generate.{key}={json.dumps(value)}" for key, value in given.items()]


def request(args: argparse.Namespace, config: PipelineConfig) -> Request:
    weights = None
    if args.weights:
        try:
            weights = [float(part) for part in args.weights.split(",")]
        except ValueError:
            raise UserError(f"bad --weights {args.weights!r}", "write numbers separated by commas, e.g. 0.7,0.3") from None
        if min(weights) < 0 or sum(weights) <= 0:
            raise UserError(f"bad --weights {args.weights!r}: weights must be >= 0 with a positive sum", "e.g. 0.7,0.3")
    num_refs = args.num_ref or [config.generate.num_ref]
    if min(num_refs) < 1:
        raise UserError("--num-ref must be at least 1", "e.g. --num-ref 4")
    return Request(args.prompt, args.identity, num_refs, weights)
