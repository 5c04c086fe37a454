"""The reference generator on a tiny random SDXL + PhotoMaker v1 and v2 adapters saved in the real layouts.

Plumbing only (token positions, embeddings the UNet sees, file formats, records): never quality,
the weights are random. The face scores use the real dlib models on real crops; v2 runs on shards
embedded by insightface's code on a tiny random pack (512-d vectors, like ArcFace's).
"""

from __future__ import annotations

import copy
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.names import identity_slug
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE
from pipeline.generator import checkpoint
from pipeline.generator import pipeline as gp
from pipeline.generator import run as generator_run
from pipeline.generator.cli import Request
from pipeline.generator.id_encoder import IDEncoder
from pipeline.generator.id_encoder_v2 import IDEncoderV2
from pipeline.generator.prompt import add_trigger, id_tokens, parse_prompt
from pipeline.generator.references import IdentityRows, Reference, load_identity, sample_references
from pipeline.generator.run import run_generate, stack
from pipeline.generator.score import open_scorer, score_images
from stages.clip_tokens import clip_tokenizer
from stages.faces.insightface_backend import InsightFaceBackend
from tests import tiny_sdxl
from tests.conftest import run_cli
from tests.generator_shards import SHARD, write_shards
from benchmarks.fixtures.tiny_onnx import write_pack

PEOPLE = {"angelina_jolie": "woman", "mark_zuckerberg": "man"}
TINY = {"width": 32, "height": 32, "steps": 4, "start_merge_step": 2}
TOKENS = {"v1": 1, "v2": 2}  # ID tokens per reference
# the tiny SDXL on the CPU in float32 on any machine: tests compare its tensors with ones made on the CPU
# (`auto` picks CUDA in float16 on a GPU machine)
CPU = "generate.device=cpu"
DET_SIZE = 128  # the tiny insightface pack's detector input: small, so firing everywhere stays cheap

DLIB_RUN = ["--config", "cpu", "--set", "face.backend=dlib"]  # the test shards are embedded with dlib


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
    encoder, encoder_v2, lora = tiny_sdxl.id_encoder_state(), tiny_sdxl.id_encoder_v2_state(), tiny_sdxl.lora_state()
    return {
        "base": tiny_sdxl.save_base_model(root / "sdxl"),
        "v1_bin": tiny_sdxl.save_adapter(root / "photomaker-v1.bin", encoder, lora),
        "v1_st": tiny_sdxl.save_adapter(root / "photomaker-v1.safetensors", encoder, lora),
        "v2_bin": tiny_sdxl.save_adapter(root / "photomaker-v2.bin", encoder_v2, lora),
        "v2_st": tiny_sdxl.save_adapter(root / "photomaker-v2.safetensors", encoder_v2, lora),
        "v2_partial": tiny_sdxl.save_adapter(root / "partial-v2.safetensors", tiny_sdxl.partial_v2(encoder), lora),
        "v1_processor_keys": tiny_sdxl.save_adapter(root / "photomaker-v1-processor-keys.bin", encoder,
                                                     tiny_sdxl.as_attention_processor_keys(lora)),
        "arcface_pack": write_pack(root / "insightface-pack", score_bias=20.0),  # finds "faces" everywhere
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, faces) -> Path:
    return write_shards(tmp_path_factory.mktemp("run"), faces, PEOPLE)


@pytest.fixture(scope="module")
def arcface_run_dir(tmp_path_factory, faces, models) -> Path:
    backend = InsightFaceBackend(str(models["arcface_pack"]), device="cpu", det_size=DET_SIZE)
    return write_shards(tmp_path_factory.mktemp("arcface-run"), faces, PEOPLE, backend=backend)


@pytest.fixture(scope="module")
def gens(models) -> dict[str, gp.Generator]:
    """A generator per adapter version, both on the same tiny SDXL."""
    settings = load_config(resolve_profile("cpu"), [CPU]).generate
    adapters = {version: checkpoint.load_adapter(models[f"{version}_st"]) for version in TOKENS}
    return {version: gp.load_generator(models["base"], adapter, checkpoint.build_encoder(adapter), settings)
            for version, adapter in adapters.items()}


@pytest.fixture(scope="module")
def gen(gens) -> gp.Generator:
    return gens["v1"]


@pytest.fixture(scope="module")
def shard_runs(run_dir: Path, arcface_run_dir: Path) -> dict[str, RunDir]:
    """The shards each version runs on: v1 reads only the crops (dlib rows), v2 also their ArcFace embeddings."""
    return {"v1": RunDir(str(run_dir)), "v2": RunDir(str(arcface_run_dir))}


def tiny_settings(**changes):
    return load_config(resolve_profile("cpu"), [CPU]).generate.model_copy(update={**TINY, **changes})


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


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("refs", [1, 3])
def test_exactly_the_class_word_rows_are_replaced_one_per_id_token(gens, shard_runs, version: str, refs: int) -> None:
    """v1: one class-word copy per reference; v2: two, filled slot by slot (reference 0's tokens, then 1's...)."""
    gen, prompt, copies = gens[version], "a photo of a man img, smiling", TOKENS[version] * refs
    id_embeds = gp.image_embeddings(gen, load_identity(shard_runs[version], "mark_zuckerberg").references[:refs])
    cond = gp.condition(gen, prompt, id_embeds)
    tokens = [id_tokens(tok, prompt, "img", copies) for tok in (gen.pipe.tokenizer, gen.pipe.tokenizer_2)]
    unfused, pooled = gp.encode_ids(gen, [t.ids for t in tokens])
    changed = (cond.with_id[0] != unfused).any(dim=-1)[0].nonzero().flatten().tolist()
    assert id_embeds.shape == (refs, TOKENS[version], sum(tiny_sdxl.WIDTHS))
    assert changed == cond.positions == list(range(5, 5 + copies))
    expected = gen.id_encoder.fuse_module(unfused[0, cond.positions], id_embeds.reshape(copies, -1))
    assert torch.allclose(cond.with_id[0][0, cond.positions], expected, atol=1e-6)
    assert torch.equal(cond.with_id[1], pooled)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_the_unet_sees_the_text_only_prompt_before_the_merge_step(gens, shard_runs, version: str,
                                                                   guidance: float) -> None:
    gen = gens[version]
    refs = load_identity(shard_runs[version], "angelina_jolie").references[:2]
    cond = gp.condition(gen, "a close-up of a woman img", gp.image_embeddings(gen, refs))
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


# the official v2 file's names for the resampler (photomaker/model_v2.py, IP-Adapter's resampler)
V2_KEYS = ["token_proj.0.weight", "token_proj.2.bias", "token_norm.weight", "perceiver_resampler.proj_in.weight",
           "perceiver_resampler.layers.1.0.norm1.bias", "perceiver_resampler.layers.1.0.norm2.weight",
           "perceiver_resampler.layers.1.0.to_q.weight", "perceiver_resampler.layers.1.0.to_kv.weight",
           "perceiver_resampler.layers.1.0.to_out.weight", "perceiver_resampler.layers.1.1.0.weight",
           "perceiver_resampler.layers.1.1.1.weight", "perceiver_resampler.layers.1.1.3.weight",
           "perceiver_resampler.proj_out.bias", "perceiver_resampler.norm_out.weight"]


@pytest.mark.parametrize("layout", ["bin", "st"])
def test_v1_and_v2_files_are_told_apart_and_load_strictly(models: dict[str, Path], layout: str) -> None:
    states = {"v1": tiny_sdxl.id_encoder_state(), "v2": tiny_sdxl.id_encoder_v2_state()}
    for version, expected in states.items():
        adapter = checkpoint.load_adapter(models[f"{version}_{layout}"])
        encoder = checkpoint.build_encoder(adapter)
        assert adapter.version == version and type(encoder) is {"v1": IDEncoder, "v2": IDEncoderV2}[version]
        loaded = encoder.state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert {f"qformer_perceiver.{key}" for key in V2_KEYS} <= states["v2"].keys()


def test_sdxl_with_only_fp16_files_loads_their_variant(models: dict[str, Path], gen, tmp_path: Path) -> None:
    """A base model downloaded as its fp16 variant only (`*.fp16.safetensors`) loads, with the same weights."""
    from diffusers import StableDiffusionXLPipeline

    assert gp.weights_variant(models["base"]) is None
    fp16 = tmp_path / "sdxl-fp16"
    StableDiffusionXLPipeline.from_pretrained(models["base"], dtype=torch.float16).save_pretrained(fp16, variant="fp16")
    assert gp.weights_variant(fp16) == "fp16" and not any((fp16 / "unet").glob("*model.safetensors"))
    adapter = checkpoint.load_adapter(models["v1_st"])
    loaded = gp.load_generator(fp16, adapter, checkpoint.build_encoder(adapter), tiny_settings())
    ours, theirs = dict(gen.pipe.unet.named_parameters()), dict(loaded.pipe.unet.named_parameters())
    assert ours.keys() == theirs.keys() and theirs[next(iter(theirs))].dtype == torch.float32  # in the dtype asked for
    base = [key for key in ours if "lora" not in key]  # the adapter's LoRA comes from its own file, unrounded
    assert base and all(torch.equal(ours[key].half().float(), theirs[key]) for key in base)  # the fp16 values


def test_the_official_lora_key_layout_loads_the_same_unet_weights(models: dict[str, Path], gen) -> None:
    """Official files key their LoRA as diffusers' old attention processors (`...attn1.processor.to_q_lora.down`);
    it must land on the same UNet layers, with the same values, as the peft layout the other tests use."""
    adapter = checkpoint.load_adapter(models["v1_processor_keys"])
    assert any(".processor.to_out_lora.up." in key for key in adapter.lora_weights)
    loaded = gp.load_generator(models["base"], adapter, checkpoint.build_encoder(adapter), tiny_settings())
    expected, actual = unet_lora(gen), unet_lora(loaded)
    assert len(expected) == len(tiny_sdxl.lora_state()) and actual.keys() == expected.keys()
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def unet_lora(generator: gp.Generator) -> dict[str, torch.Tensor]:
    return {key: value for key, value in generator.pipe.unet.state_dict().items() if ".lora_" in key}


def test_a_v1_file_never_reaches_v2_code(models: dict[str, Path], gen, run_dir: Path, monkeypatch) -> None:
    """Built by v1's module, and its references' face embeddings (dlib's 128-d here) are never read."""
    def v2_code(*args: object) -> None:
        raise AssertionError("v2 code ran for a v1 file")

    monkeypatch.setitem(checkpoint.BUILDERS, "v2", v2_code)
    monkeypatch.setattr(IDEncoderV2, "id_tokens", v2_code)
    assert type(checkpoint.build_encoder(checkpoint.load_adapter(models["v1_bin"]))) is IDEncoder
    refs = load_identity(RunDir(str(run_dir)), "mark_zuckerberg").references[:2]
    assert gp.image_embeddings(gen, refs).shape == (2, 1, sum(tiny_sdxl.WIDTHS))


def test_v2_tokens_come_from_both_the_face_embedding_and_the_photo(gens, shard_runs) -> None:
    encoder = gens["v2"].id_encoder
    pixels = torch.randn(2, 3, encoder.image_size, encoder.image_size)
    faces = torch.from_numpy(load_identity(shard_runs["v2"], "angelina_jolie").references[0].embedding).expand(2, -1)
    tokens = encoder.id_tokens(pixels, faces)
    assert not torch.allclose(tokens, encoder.id_tokens(pixels, faces.flip(-1)))
    assert not torch.allclose(tokens, encoder.id_tokens(pixels.flip(-1), faces))
    with pytest.raises(ValueError, match="ArcFace"):
        encoder.id_tokens(pixels)


def test_v2_takes_the_raw_arcface_embedding_the_unit_vector_times_its_norm(gens, arcface_run_dir: Path) -> None:
    """PhotoMaker v2 learnt on insightface's unnormalised `face.embedding`; its token projection is not
    scale-invariant, so the tensor reaching it must be the stored unit vector scaled back by `embedding_norm`."""
    gen = gens["v2"]
    refs = load_identity(RunDir(str(arcface_run_dir)), "angelina_jolie").references[:2]
    stored = {row["image_id"]: row["faces"][row["target_face"]]
              for row in pq.read_table(arcface_run_dir / "shards" / SHARD).to_pylist()}
    raw = np.stack([np.float32(stored[ref.image_id]["embedding_norm"])
                    * np.asarray(stored[ref.image_id]["embedding"], dtype=np.float32) for ref in refs])
    seen: list[torch.Tensor] = []
    hook = gen.id_encoder.qformer_perceiver.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        gp.image_embeddings(gen, refs)
    finally:
        hook.remove()
    assert len(seen) == 1 and torch.allclose(seen[0], torch.from_numpy(raw), rtol=1e-5, atol=1e-5)
    assert all(abs(stored[ref.image_id]["embedding_norm"] - 1) > 0.1 for ref in refs)  # unit vectors would fail


def test_v2_on_shards_from_before_embedding_norm_is_one_clear_error(models, arcface_run_dir: Path, tmp_path: Path,
                                                                    capsys, monkeypatch) -> None:
    """Such shards cannot give v2 its raw ArcFace input: refused before SDXL loads, with the fix (re-run filter on)."""
    def load_generator(*args: object) -> None:
        raise SDXLLoaded

    monkeypatch.setattr(generator_run, "load_generator", load_generator)
    shutil.copytree(arcface_run_dir / "shards", tmp_path / "shards")
    shard = tmp_path / "shards" / SHARD
    table = pq.read_table(shard)
    old_face = pa.list_(pa.struct([field for field in FACE if field.name != "embedding_norm"]))
    faces = [[{k: v for k, v in face.items() if k != "embedding_norm"} for face in row]
             for row in table["faces"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("faces"), "faces", pa.array(faces, old_face)), shard)
    args = ["generate", *DLIB_RUN, "--identity", "angelina_jolie", "--prompt", "a woman img",
            "--base-model", str(models["base"]), "--adapter", str(models["v2_bin"]),
            "--set", "face.backend=insightface", "--set", f"face.model={models['arcface_pack']}",
            "--set", "face.device=cpu", "--set", f"face.det_size={DET_SIZE}"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "written before filter stored their norm (embedding_norm)" in error
    assert "re-run the pipeline from filter onward" in error
    with pytest.raises(SDXLLoaded):  # the same shards with the norm pass the checks
        main([*args, "--out", str(arcface_run_dir)])


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


BAD_ADAPTERS = {  # file -> (its bytes, what the error says)
    "empty.bin": (b"", "is empty (0 bytes)"), "empty.safetensors": (b"", "is empty (0 bytes)"),
    "torn.bin": (b"\x80\x02", "as plain tensors: EOFError"), "html.bin": (b"<html>404</html>", "as plain tensors"),
    "garbage.safetensors": (b"\xff" * 64, "as plain tensors: Error while deserializing header"),
}


@pytest.mark.parametrize("file", sorted(BAD_ADAPTERS))
def test_an_empty_or_garbage_adapter_is_one_clear_error(tmp_path: Path, run_dir: Path, models, capsys,
                                                        file: str) -> None:
    data, says = BAD_ADAPTERS[file]
    (tmp_path / file).write_bytes(data)
    args = ["generate", *DLIB_RUN, "--out", str(run_dir), "--identity", "mark_zuckerberg", "--prompt", "a man img",
            "--base-model", str(models["base"]), "--adapter", str(tmp_path / file)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(tmp_path / file) in error and says in error
    assert "id_encoder and lora_weights" in error  # what was expected


def test_an_adapter_of_another_object_is_refused(tmp_path: Path) -> None:
    torch.save(torch.zeros(2), tmp_path / "tensor.bin")
    with pytest.raises(UserError, match="holds a Tensor, not a dict of tensors"):
        checkpoint.load_adapter(tmp_path / "tensor.bin")


def test_generate_takes_the_name_or_readable_slug_of_a_hashed_identity(run_dir: Path, tmp_path: Path) -> None:
    """`Angelina Jolie` is stored as angelina_jolie-<hash>; mark_zuckerberg is in the shards, not in run.json."""
    slug, out = identity_slug("Angelina Jolie"), tmp_path / "run"
    shutil.copytree(run_dir, out)
    for path in (out / "shards").glob("*.parquet"):
        table = pq.read_table(path)
        renamed = pa.array([slug if value == "angelina_jolie" else value for value in table["identity"].to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("identity"), "identity", renamed), path)
    (out / "run.json").write_text(json.dumps({"identities": [[slug, "Angelina Jolie"]]}))
    training = load_config(resolve_profile("cpu")).training
    for given in ("angelina_jolie", "Angelina Jolie", "ANGELINA  JOLIE", slug):
        request = Request("a woman img", [given, "mark_zuckerberg"], [1], None)
        rows, _ = generator_run.plan(request, RunDir(str(out)), 0, training)
        assert [identity.identity for identity in rows] == [slug, "mark_zuckerberg"]
    with pytest.raises(UserError, match=r"no identity 'Angelina Joli' .*; close: 'Angelina Jolie' \(angelina_jolie-"):
        generator_run.plan(Request("a woman img", ["Angelina Joli"], [1], None), RunDir(str(out)), 0, training)


def test_a_file_with_part_of_v2_is_refused_as_a_broken_v2(models: dict[str, Path]) -> None:
    adapter = checkpoint.load_adapter(models["v2_partial"])
    assert adapter.version == "v2"
    with pytest.raises(UserError, match="id_encoder weights do not fit PhotoMaker v2"):
        checkpoint.build_encoder(adapter)


class SDXLLoaded(Exception):
    pass


def test_a_v2_file_on_dlib_shards_is_one_clear_error_before_sdxl_loads(models, run_dir: Path, capsys,
                                                                        monkeypatch) -> None:
    def load_generator(*args: object) -> None:
        raise SDXLLoaded

    monkeypatch.setattr(generator_run, "load_generator", load_generator)
    args = ["generate", *DLIB_RUN, "--out", str(run_dir), "--identity", "mark_zuckerberg", "--prompt",
            "a man img", "--base-model", str(models["base"]), "--adapter", str(models["v2_bin"])]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "v2 file: it needs 512-d insightface ArcFace embeddings" in error
    assert "the shards hold 128-d ones (dlib)" in error and "face.backend=insightface" in error
    config = load_config(resolve_profile("cpu"), [DLIB_RUN[-1], f"generate.base_model={models['base']}",
                                                   f"generate.adapter={models['v1_bin']}"])
    with pytest.raises(SDXLLoaded):  # the same shards pass the checks with a v1 file
        run_generate(config, RunDir(str(run_dir)), Request("a man img", ["mark_zuckerberg"], [2], None))


def test_missing_base_model_or_adapter_is_one_clear_error(tmp_path: Path, models, capsys) -> None:
    args = ["generate", "--out", str(tmp_path), "--identity", "x", "--prompt", "a man img"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--base-model" in error and "--adapter" in error and "stable-diffusion-xl" in error
    assert main([*args, "--base-model", str(models["base"])]) == 2
    error = capsys.readouterr().err
    assert "--adapter" in error and "--base-model" not in error and "TencentARC/PhotoMaker" in error


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_weighted_mixing_stacks_one_slot_per_reference_of_each_identity(gens, shard_runs, version: str) -> None:
    gen = gens[version]
    refs = [load_identity(shard_runs[version], name).references[:2] for name in PEOPLE]
    first = gp.image_embeddings(gen, refs[0])
    assert first.shape == (2, TOKENS[version], sum(tiny_sdxl.WIDTHS))
    assert torch.allclose(stack(gen, refs, [3.0, 0.0]), first)
    assert stack(gen, refs, [0.5, 0.5]).shape == first.shape and stack(gen, refs, None).shape == (4, *first.shape[1:])


def test_references_prefer_distinct_photos_over_near_duplicates() -> None:
    def ref(image_id: str, group: str) -> Reference:
        return Reference("a", image_id, group, b"", torch.zeros(1).numpy(), None)

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
    scorer = open_scorer(load_config(resolve_profile("cpu"), ["face.backend=dlib"]), {rows.face_backend})
    ref = rows.references[0]
    [score] = score_images(scorer, [Image.open(io.BytesIO(ref.crop_image))], [ref], {"angelina_jolie": rows.centroid()})
    assert score["face_found"] and score["sim_to_references"][ref.image_id] > 0.95
    with pytest.raises(UserError, match="embedded with dlib"):
        open_scorer(load_config(resolve_profile("gpu")), {"dlib"})


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_generate_end_to_end_through_the_cli(models, run_dir: Path, arcface_run_dir: Path, version: str) -> None:
    """v1 on dlib shards, scored with dlib; v2 on insightface shards, scored with the same (tiny) insightface pack."""
    face = {"v1": [], "v2": ["--set", "face.backend=insightface", "--set", f"face.model={models['arcface_pack']}",
                             "--set", "face.device=cpu", "--set", f"face.det_size={DET_SIZE}"]}[version]
    run_dir = {"v1": run_dir, "v2": arcface_run_dir}[version]
    result = run_cli(
        "generate", *DLIB_RUN, "--out", str(run_dir), "--identity", "angelina_jolie", "--identity",
        "mark_zuckerberg", "--num-ref", "2", "--num-ref", "1", "--prompt", "a portrait of a woman img, studio light",
        "--seed", "7", "--steps", "3", "--start-merge-step", "1", "--num-images", "2", "--base-model",
        str(models["base"]), "--adapter", str(models[f"{version}_bin"]), "--set", "generate.width=64",
        "--set", "generate.height=64", *face, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    record_path = Path(result.stdout.strip().splitlines()[-1])
    record = json.loads(record_path.read_text())
    assert record_path.parent.parent == run_dir / "generate" and record["adapter_version"] == version
    assert [len(i["references"]) for i in record["identities"]] == [2, 1] and record["mix"] == "pool"
    assert record["id_tokens"] == 3 * TOKENS[version]
    shard_ids = {r.image_id for name in PEOPLE for r in load_identity(RunDir(str(run_dir)), name).references}
    for identity in record["identities"]:
        assert {ref["image_id"] for ref in identity["references"]} <= shard_ids
        assert all((record_path.parent / ref["file"]).is_file() for ref in identity["references"])
    assert [image["seed"] for image in record["images"]] == [7, 8]
    for image in record["images"]:
        assert Image.open(record_path.parent / image["file"]).size == (64, 64)
        sims = [*(image["sim_to_references"] or {}).values(), *(image["sim_to_centroid"] or {}).values()]
        assert image["face_found"] == bool(sims) and all(-1 <= s <= 1 for s in sims)
    assert record["summary"]["images"] == 2 and record["face_backend"] == {"v1": "dlib", "v2": "insightface"}[version]
