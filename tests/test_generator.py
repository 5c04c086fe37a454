"""The reference generator on a tiny random SDXL + PhotoMaker v1 adapter saved in the real layouts.

Plumbing only (token positions, embeddings the UNet sees, file formats, records): never quality,
the weights are random. The face scores use the real dlib models on real crops.
"""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.config import load_config, resolve_profile
from pipeline.errors import UserError
from pipeline.generator import checkpoint
from pipeline.generator import pipeline as gp
from pipeline.generator.cli import Request
from pipeline.generator.prompt import add_trigger, id_tokens, parse_prompt
from pipeline.generator.references import IdentityRows, Reference, load_identity, sample_references
from pipeline.generator.run import run_generate, stack
from pipeline.generator.score import open_scorer, score_images
from pipeline.rundir import RunDir
from stages.clip_tokens import clip_tokenizer
from tests import tiny_sdxl
from tests.conftest import run_cli
from tests.generator_shards import write_shards

PEOPLE = {"angelina_jolie": "woman", "mark_zuckerberg": "man"}
TINY = {"width": 32, "height": 32, "steps": 4, "start_merge_step": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared, loaded CPU run far faster on one thread (no spin-waiting between threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    encoder, lora = tiny_sdxl.id_encoder_state(), tiny_sdxl.lora_state()
    return {
        "base": tiny_sdxl.save_base_model(root / "sdxl"),
        "v1_bin": tiny_sdxl.save_adapter(root / "photomaker-v1.bin", encoder, lora),
        "v1_st": tiny_sdxl.save_adapter(root / "photomaker-v1.safetensors", encoder, lora),
        "v2_st": tiny_sdxl.save_adapter(root / "photomaker-v2.safetensors", tiny_sdxl.v2_like(encoder), lora),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, faces) -> Path:
    return write_shards(tmp_path_factory.mktemp("run"), faces, PEOPLE)


@pytest.fixture(scope="module")
def gen(models) -> gp.Generator:
    settings = load_config(resolve_profile("cpu")).generate
    return gp.load_generator(models["base"], checkpoint.load_adapter(models["v1_st"]), settings)


def tiny_settings(**changes):
    return load_config(resolve_profile("cpu")).generate.model_copy(update={**TINY, **changes})


@pytest.mark.parametrize("refs", [1, 2, 4])
def test_the_class_token_is_repeated_once_per_reference_and_the_trigger_removed(refs: int) -> None:
    tokenizer = copy.deepcopy(clip_tokenizer())
    trigger_id = add_trigger(tokenizer, "img")
    tokens = id_tokens(tokenizer, "A photo of a man IMG, smiling", "img", refs)
    man = tokenizer("man", add_special_tokens=False).input_ids[0]
    assert tokens.positions == list(range(5, 5 + refs))  # start, a, photo, of, a, man...
    assert [tokens.ids[k] for k in tokens.positions] == [man] * refs and tokens.ids.count(man) == refs
    assert trigger_id not in tokens.ids and len(tokens.ids) == 77
    plain = tokenizer("a photo of a man, smiling", padding="max_length", max_length=77).input_ids
    assert tokens.text_only_ids == plain


@pytest.mark.parametrize("prompt, says", [
    ("a photo of a man, smiling", "holds no trigger word"),
    ("a man img and a woman img", "2 times"),
    ("a photo of a car img", "after 'car', not right after a class word"),
    ("img, a photo of a man", "without a word before it"),
    ("a photo of a man, img", "not right after a class word"),
])
def test_prompts_without_a_trigger_after_a_class_word_are_refused(prompt: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        parse_prompt(prompt, "img")


def test_a_valid_prompt_gives_its_class_word_and_text_only_form() -> None:
    parsed = parse_prompt("portrait of a Gentleman img in a suit", "img")
    assert (parsed.class_word, parsed.text_only) == ("man", "portrait of a Gentleman in a suit")


@pytest.mark.parametrize("refs", [1, 3])
def test_exactly_the_class_word_rows_are_replaced_one_per_reference(gen, run_dir: Path, refs: int) -> None:
    crops = [ref.crop_image for ref in load_identity(RunDir(str(run_dir)), "mark_zuckerberg").references[:refs]]
    cond = gp.condition(gen, "a photo of a man img, smiling", gp.image_embeddings(gen, crops))
    tokens = [id_tokens(tok, "a photo of a man img, smiling", "img", refs) for tok in (gen.pipe.tokenizer, gen.pipe.tokenizer_2)]
    unfused, pooled = gp.encode_ids(gen, [t.ids for t in tokens])
    changed = (cond.with_id[0] != unfused).any(dim=-1)[0].nonzero().flatten().tolist()
    assert changed == cond.positions == list(range(5, 5 + refs))
    assert torch.equal(cond.with_id[1], pooled)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_the_unet_sees_the_text_only_prompt_before_the_merge_step(gen, run_dir: Path, guidance: float) -> None:
    crops = [ref.crop_image for ref in load_identity(RunDir(str(run_dir)), "angelina_jolie").references[:2]]
    cond = gp.condition(gen, "a close-up of a woman img", gp.image_embeddings(gen, crops))
    seen = []
    hook = gen.pipe.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]["text_embeds"])),
        with_kwargs=True)
    try:
        gp.generate_image(gen, cond, tiny_settings(guidance=guidance), seed=0)
    finally:
        hook.remove()
    text, _, pooled, _ = gen.pipe.encode_prompt("a close-up of a woman", device="cpu", do_classifier_free_guidance=False)
    assert len(seen) == TINY["steps"]
    for step, (embeds, pooled_seen) in enumerate(seen):
        expected = (text, pooled) if step < TINY["start_merge_step"] else cond.with_id
        assert torch.equal(embeds[-1:], expected[0]) and torch.equal(pooled_seen[-1:], expected[1])
        assert embeds.shape[0] == (2 if guidance > 1 else 1) and torch.equal(embeds[:-1], seen[0][0][:-1])


def test_v1_and_v2_files_are_told_apart(models: dict[str, Path]) -> None:
    assert checkpoint.load_adapter(models["v1_bin"]).version == "v1"
    assert checkpoint.load_adapter(models["v1_st"]).version == "v1"
    assert checkpoint.load_adapter(models["v2_st"]).version == "v2"


def test_bad_adapter_files_are_refused(tmp_path: Path) -> None:
    torch.save({"lora_weights": {"x": torch.zeros(1)}}, tmp_path / "lora-only.bin")
    with pytest.raises(UserError, match="no id_encoder weights"):
        checkpoint.load_adapter(tmp_path / "lora-only.bin")
    torch.save({"id_encoder": {"x": torch.zeros(1)}, "lora_weights": {"y": Path("code")}}, tmp_path / "pickled.bin")
    with pytest.raises(UserError, match="cannot read .* as plain tensors"):
        checkpoint.load_adapter(tmp_path / "pickled.bin")
    torch.save({"id_encoder": {"x": torch.zeros(1)}, "lora_weights": {"y": torch.zeros(1)}}, tmp_path / "other.bin")
    with pytest.raises(UserError, match="neither PhotoMaker v1 nor v2"):
        checkpoint.load_adapter(tmp_path / "other.bin")


def test_a_v2_file_stops_with_not_supported_before_any_model_loads(models, run_dir: Path) -> None:
    config = load_config(resolve_profile("cpu"), [f"generate.base_model={models['base']}",
                                                   f"generate.adapter={models['v2_st']}"])
    with pytest.raises(UserError, match="v2 file: not supported yet"):
        run_generate(config, RunDir(str(run_dir)), Request("a man img", ["mark_zuckerberg"], [2], None))


def test_missing_base_model_or_adapter_is_one_clear_error(tmp_path: Path, models, capsys) -> None:
    args = ["generate", "--out", str(tmp_path), "--identity", "x", "--prompt", "a man img"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--base-model" in error and "--adapter" in error and "stable-diffusion-xl" in error
    assert main([*args, "--base-model", str(models["base"])]) == 2
    error = capsys.readouterr().err
    assert "--adapter" in error and "--base-model" not in error and "TencentARC/PhotoMaker" in error


def test_weighted_mixing_stacks_one_slot_per_reference_of_each_identity(gen, run_dir: Path) -> None:
    run = RunDir(str(run_dir))
    refs = [load_identity(run, name).references[:2] for name in PEOPLE]
    first = gp.image_embeddings(gen, [ref.crop_image for ref in refs[0]])
    assert torch.allclose(stack(gen, refs, [3.0, 0.0]), first)
    assert stack(gen, refs, [0.5, 0.5]).shape == first.shape and stack(gen, refs, None).shape[0] == 4


def test_references_prefer_distinct_photos_over_near_duplicates() -> None:
    def ref(image_id: str, group: str) -> Reference:
        return Reference("a", image_id, group, b"", torch.zeros(1).numpy())

    rows = IdentityRows("a", "man", "dlib", [ref("1", "g1"), ref("2", "g1"), ref("3", "g1"), ref("4", "g2")])
    for seed in range(10):
        picked = sample_references(rows, 2, random.Random(seed))
        assert {r.dup_group for r in picked} == {"g1", "g2"}
    assert len(sample_references(rows, 4, random.Random(0))) == 4
    with pytest.raises(UserError, match="has 4 photos, 5 references asked"):
        sample_references(rows, 5, random.Random(0))


def test_a_reference_crop_scores_as_its_own_face(run_dir: Path) -> None:
    """Real dlib on a real crop: the sanity score's plumbing, checked where the answer is known."""
    rows = load_identity(RunDir(str(run_dir)), "angelina_jolie")
    scorer = open_scorer(load_config(resolve_profile("cpu")).face, {rows.face_backend})
    ref = rows.references[0]
    [score] = score_images(scorer, [Image.open(io.BytesIO(ref.crop_image))], [ref], {"angelina_jolie": rows.centroid()})
    assert score["face_found"] and score["sim_to_references"][ref.image_id] > 0.95
    with pytest.raises(UserError, match="embedded with dlib"):
        open_scorer(load_config(resolve_profile("default")).face, {"dlib"})


@pytest.mark.slow
def test_generate_end_to_end_through_the_cli(models, run_dir: Path) -> None:
    result = run_cli(
        "generate", "--config", "cpu", "--out", str(run_dir), "--identity", "angelina_jolie", "--identity",
        "mark_zuckerberg", "--num-ref", "2", "--num-ref", "1", "--prompt", "a portrait of a woman img, studio light",
        "--seed", "7", "--steps", "3", "--start-merge-step", "1", "--num-images", "2", "--base-model",
        str(models["base"]), "--adapter", str(models["v1_bin"]), "--set", "generate.width=64",
        "--set", "generate.height=64", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    record_path = Path(result.stdout.strip().splitlines()[-1])
    record = json.loads(record_path.read_text())
    assert record_path.parent.parent == run_dir / "generate" and record["adapter_version"] == "v1"
    assert [len(i["references"]) for i in record["identities"]] == [2, 1] and record["mix"] == "pool"
    shard_ids = {r.image_id for name in PEOPLE for r in load_identity(RunDir(str(run_dir)), name).references}
    for identity in record["identities"]:
        assert {ref["image_id"] for ref in identity["references"]} <= shard_ids
        assert all((record_path.parent / ref["file"]).is_file() for ref in identity["references"])
    assert [image["seed"] for image in record["images"]] == [7, 8]
    for image in record["images"]:
        assert Image.open(record_path.parent / image["file"]).size == (64, 64)
        sims = [*(image["sim_to_references"] or {}).values(), *(image["sim_to_centroid"] or {}).values()]
        assert image["face_found"] == bool(sims) and all(-1 <= s <= 1 for s in sims)
    assert record["summary"]["images"] == 2 and record["face_backend"] == "dlib"
