"""`python -m pipeline generate`: references from the shards -> PhotoMaker generation -> sanity score.

Identities mix in one of two ways. By the pool (default): each identity gives its `num_ref`
photos and all of them are stacked, so an identity's share of the pool sets its share of the
result. By weights: every identity gives the same number k of photos, and slot j of the stack is
the weighted sum of the identities' j-th image embeddings (for v2, token by token).
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

from pipeline.core.config import PipelineConfig, TrainingSection
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, IdentityIndex, run_identities
from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import INDEX
from pipeline.generator import record
from pipeline.generator.checkpoint import ADAPTER_SOURCE, build_encoder, load_adapter
from pipeline.generator.cli import Request
from pipeline.generator.id_encoder import IDEncoder
from pipeline.generator.pipeline import (
    BASE_SOURCE,
    Generator,
    condition,
    generate_image,
    image_embeddings,
    load_generator,
)
from pipeline.generator.prompt import parse_prompt
from pipeline.generator.references import IdentityRows, Reference, load_identity, sample_references
from pipeline.generator.score import open_scorer, score_images
from stages.faces import FaceBackend


def required_paths(config: PipelineConfig) -> tuple[Path, Path]:
    settings = config.generate
    missing = [f"{what} ({flag} or generate.{key}; get {source})" for what, flag, key, source, value in (
        ("the SDXL base model", "--base-model", "base_model", BASE_SOURCE, settings.base_model),
        ("the PhotoMaker adapter", "--adapter", "adapter", ADAPTER_SOURCE, settings.adapter),
    ) if value is None]
    if missing:
        raise UserError(f"generate needs {' and '.join(missing)}", "no weights can be downloaded for you: pass local paths")
    return settings.base_model.expanduser(), settings.adapter.expanduser()


def plan(
    request: Request, run: RunDir, seed: int, training: TrainingSection
) -> tuple[list[IdentityRows], list[list[Reference]]]:
    counts = request.num_refs * len(request.identities) if len(request.num_refs) == 1 else request.num_refs
    if len(counts) != len(request.identities):
        raise UserError(f"{len(request.num_refs)} --num-ref values for {len(request.identities)} identities",
                        "give one value, or one per --identity")
    if request.weights is not None and (len(request.weights) != len(request.identities) or len(set(counts)) > 1):
        raise UserError("--weights needs one weight per identity and the same --num-ref for all", "e.g. --weights 0.7,0.3")
    rng = random.Random(seed)
    rows = [load_identity(run, identity) for identity in resolve(run, request.identities)]
    return rows, [sample_references(identity, count, rng, _copy_paste_max(training, identity))
                  for identity, count in zip(rows, counts)]


def _copy_paste_max(training: TrainingSection, identity: IdentityRows) -> float:
    try:
        return training.resolved(identity.copy_paste_max)
    except ValueError as exc:
        raise UserError(f"{identity.identity}: {exc}") from exc


def resolve(run: RunDir, given: list[str]) -> list[str]:
    """The slugs of the identities named: those of the run's names list (run.json), and any the shards hold
    beside them (by slug: shards copied without their run, or from an earlier names list)."""
    if not run.exists(INDEX):
        return given  # load_identity says there are no shards
    listed = run_identities(run)
    known = {identity.slug for identity in listed}
    held = [Identity(slug, slug) for slug in run.read_table(INDEX, ["identity"])["identity"].to_pylist()
            if slug not in known]
    index = IdentityIndex([*listed, *held])
    return [index.resolve(name).slug for name in given]


def check_faces(encoder: IDEncoder, rows: list[IdentityRows], adapter: Path) -> None:
    """v2 makes ID tokens from each reference's face embedding: they must be the raw ArcFace vectors it expects."""
    if encoder.face_dim is None:
        return
    references = [ref for identity in rows for ref in identity.references]
    widths = {len(ref.embedding) for ref in references}
    if widths != {encoder.face_dim}:
        backends = ", ".join(sorted({identity.face_backend for identity in rows}))
        raise UserError(f"{adapter} is a PhotoMaker v2 file: it needs {encoder.face_dim}-d insightface ArcFace "
                        f"embeddings, the shards hold {'/'.join(map(str, sorted(widths)))}-d ones ({backends})",
                        "use a run made with face.backend=insightface, or a PhotoMaker v1 file")
    if any(ref.embedding_norm is None for ref in references):
        raise UserError(f"{adapter} is a PhotoMaker v2 file: it needs raw ArcFace embeddings, but these shards were "
                        "written before filter stored their norm (embedding_norm)",
                        "re-run the pipeline from filter onward: python -m pipeline run --stage all")


def stack(gen: Generator, refs: list[list[Reference]], weights: list[float] | None) -> torch.Tensor:
    """(slots, tokens, D): the ID tokens of each slot of the stacked ID embedding."""
    per_identity = [image_embeddings(gen, group) for group in refs]
    if weights is None:
        return torch.cat(per_identity)
    total = sum(weights)
    return sum(embeds * (weight / total) for embeds, weight in zip(per_identity, weights))


def run_generate(config: PipelineConfig, run: RunDir, request: Request) -> str:
    """Generate, score and record; returns the record's path relative to the run directory."""
    started, settings = time.monotonic(), config.generate
    base_model, adapter_path = required_paths(config)
    prompt = parse_prompt(request.prompt, settings.trigger_word)
    rows, refs = plan(request, run, settings.seed, config.training)
    adapter = load_adapter(adapter_path)
    encoder = build_encoder(adapter)
    check_faces(encoder, rows, adapter_path)
    scorer = open_scorer(config, {identity.face_backend for identity in rows})
    gen = load_generator(base_model, adapter, encoder, settings)
    cond = condition(gen, request.prompt, stack(gen, refs, request.weights))
    seeds = [settings.seed + k for k in range(settings.num_images)]
    images = [generate_image(gen, cond, settings, seed) for seed in seeds]
    return write_record(config, run, request, rows, refs, images, seeds, scorer, {
        "prompt_text_only": prompt.text_only, "class_word": prompt.class_word, "device": str(gen.device),
        "dtype": str(gen.id_encoder.visual_projection.weight.dtype).removeprefix("torch."),
        "base_model": str(base_model), "adapter": str(adapter_path), "adapter_version": adapter.version,
        "id_tokens": len(cond.positions),
        "seconds": round(time.monotonic() - started, 2),
    })


def write_record(config: PipelineConfig, run: RunDir, request: Request, rows: list[IdentityRows],
                 refs: list[list[Reference]], images: list[Image.Image], seeds: list[int], scorer: FaceBackend,
                 facts: dict) -> str:
    """Score the images, write them, the reference crops and record.json; returns the record's path."""
    settings = config.generate
    run_id = record.new_run_id()
    out = record.folder(run_id)
    scores = score_images(scorer, images, [ref for group in refs for ref in group],
                          {identity.identity: identity.centroid() for identity in rows})
    for k, (image, seed, score) in enumerate(zip(images, seeds, scores)):
        record.save_image(run, f"{out}/images/{k:03d}.png", image)
        score.update({"file": f"images/{k:03d}.png", "seed": seed})
    for ref in (ref for group in refs for ref in group):
        run.write_bytes(f"{out}/references/{ref.image_id}.jpg", ref.crop_image)
    run.write_json(f"{out}/{record.RECORD}", {
        "run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(),
        "prompt": request.prompt, **facts,
        **{key: getattr(settings, key) for key in ("negative_prompt", "trigger_word", "seed", "steps", "guidance",
                                                   "start_merge_step", "width", "height", "lora_scale")},
        "mix": "pool" if request.weights is None else "weights",
        "face_backend": config.face.backend, "versions": record.versions(),
        "identities": [{
            "identity": identity.identity, "class_word": identity.class_word, "photos": len(identity.references),
            "weight": None if request.weights is None else request.weights[i],
            "references": [{"image_id": r.image_id, "dup_group": r.dup_group, "file": f"references/{r.image_id}.jpg"}
                           for r in refs[i]],
        } for i, identity in enumerate(rows)],
        "images": scores,
        "summary": record.summary(scores, [identity.identity for identity in rows]),
    })
    return f"{out}/{record.RECORD}"
