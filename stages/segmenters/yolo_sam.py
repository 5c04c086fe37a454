"""Default backend (GPU machines): an ultralytics YOLO person box around the target face, then a
segment-anything mask prompted by that box; of SAM's three candidate masks, the one covering the face.

Both load from local files only (`YOLO_OFFLINE=1`: ultralytics never reaches for its hub), read as data
(`checkpoints`: a file that would run code is refused). The SAM image encoder, the costly part, runs on the
whole batch at once, its attention through torch's fused kernel (`sdpa_attention`: the same arithmetic), and
`torch.compile`d where `segment.sam_compile` asks (its batches then padded to one shape).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np

from pipeline.core.config import PipelineConfig, SegmentSection
from pipeline.core.errors import ModelNotFound, UserError
from stages.backends import Backend
from stages.devices import checked_module, fast_matmuls, torch_device

from .base import SEGMENTERS, Box, PersonMask, Prompt, Segmenter, face_pixels, near_best
from .checkpoints import SAM_URL, YOLO_URL, read_state_dict, yolo_detector, yolo_globals

PERSON = 0  # COCO class id
MIN_FACE_HELD = 0.5  # a person box holds at least half of the face box, or it is someone else's
HELD_TOLERANCE = 0.1  # person boxes holding the face about equally: the one centred on the face wins
COVERAGE_TOLERANCE = 0.05  # masks covering the face about equally: SAM's own quality estimate decides
# torch.compile's mode per device type. CUDA autotunes its matrix products, without CUDA graphs: those are kept per
# thread, and Ray calls an actor on another thread than its setup's, which would record them twice and hold the
# first pool for nothing (at batch 8 the encoder's kernels are long, so launches cost little). The CPU (tests, CPU
# machines) compiles plainly, as autotuning there costs minutes for little.
COMPILE_MODES = {"cuda": "max-autotune-no-cudagraphs", "cpu": "default"}


def held_share(face: Box, boxes: np.ndarray) -> np.ndarray:
    """For each (n, 4) box, the share of the face box's area inside it."""
    x0, y0 = np.maximum(boxes[:, 0], face[0]), np.maximum(boxes[:, 1], face[1])
    x1, y1 = np.minimum(boxes[:, 2], face[2]), np.minimum(boxes[:, 3], face[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / max((face[2] - face[0]) * (face[3] - face[1]), 1e-6)


def pick_person(face: Box, boxes: np.ndarray) -> int | None:
    """The person box holding the face best; among near-equals (people overlapping in depth), the one
    whose horizontal centre is nearest the face's, as a body sits below its own head."""
    if len(boxes) == 0:
        return None
    held = held_share(face, boxes)
    if held.max() < MIN_FACE_HELD:
        return None
    centre = (face[0] + face[2]) / 2
    offset = np.abs((boxes[:, 0] + boxes[:, 2]) / 2 - centre) / np.maximum(boxes[:, 2] - boxes[:, 0], 1)
    return near_best(held, HELD_TOLERANCE, -offset)


def pick_mask(face: Box, masks: np.ndarray, scores: np.ndarray) -> int:
    """Of (C, H, W) candidate masks, the one covering the face box best (SAM's score breaks near-ties)."""
    rows, cols = face_pixels(face, masks.shape[1:])
    region = masks[:, rows, cols].reshape(len(masks), -1)
    coverage = region.mean(axis=1) if region.shape[1] else np.zeros(len(masks))
    return near_best(coverage, COVERAGE_TOLERANCE, scores)


# The files segment-anything's authors publish, per model; a user's copy keeps the name.
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}


def weight_paths(settings: SegmentSection) -> tuple[Path, Path]:
    """The YOLO and SAM checkpoints the config names; relative names live in `weights_dir`."""
    root = settings.weights_dir.expanduser()
    sam = settings.sam_checkpoint or Path(SAM_FILES[settings.sam_model])
    return root / settings.yolo_weights.expanduser(), root / sam.expanduser()


@SEGMENTERS.register
class YoloSamSegmenter(Segmenter, Backend):
    name = "yolo_sam"
    fields = ("device", "weights_dir", "yolo_weights", "person_conf", "sam_model", "sam_checkpoint", "sam_compile")

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        """The official files, where the config keeps them in the model cache; other paths are the user's."""
        settings = config.segment
        if settings.weights_dir.expanduser() != config.models.cache_dir.expanduser():
            return []
        return [*(["yolov8x"] if settings.yolo_weights == Path("yolov8x.pt") else []),
                *([f"sam_{settings.sam_model}"] if settings.sam_checkpoint is None else [])]

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        """The packages and both checkpoints are here, and YOLO's pickle names nothing off the allow-list."""
        settings = config.segment
        for package in ("torch", "ultralytics", "segment_anything"):
            if importlib.util.find_spec(package) is None:
                fix = "pip install torch torchvision ultralytics segment-anything"
                raise ModelNotFound(f"python package {package!r}", ["this environment"], fix)
        yolo, sam = weight_paths(settings)
        if not yolo.is_file():
            fix = f"download {yolo.name} from {YOLO_URL} to {yolo}, or set segment.yolo_weights=PATH"
            raise ModelNotFound(f"YOLO weights {yolo.name!r}", [str(yolo)], fix)
        if not sam.is_file():
            official = SAM_FILES[settings.sam_model]
            fix = f"download {SAM_URL}{official} to {sam}, or set segment.sam_checkpoint=PATH (a {settings.sam_model} file)"
            raise ModelNotFound(f"segment-anything {settings.sam_model} checkpoint {sam.name!r}", [str(sam)], fix)
        yolo_globals(yolo)  # unpickles nothing

    @classmethod
    def load(cls, config: PipelineConfig) -> YoloSamSegmenter:
        cls.check(config)
        settings = config.segment
        yolo, sam = weight_paths(settings)
        compile_batch = settings.resources.batch_size if settings.sam_compile else 0  # the stage's batches
        return cls.from_files(yolo, settings.sam_model, sam, settings.device, settings.person_conf, compile_batch)

    @classmethod
    def from_files(cls, yolo_weights: Path, sam_model: str, sam_checkpoint: Path, device: str = "auto",
                   person_conf: float = 0.25, compile_batch: int = 0) -> YoloSamSegmenter:
        device = torch_device(device)
        sam = build_sam(sam_model, sam_checkpoint, device)
        return cls(yolo_detector(yolo_weights), sam, device, person_conf, f"yolo+sam:{sam_model}", compile_batch)

    def __init__(self, detector: Any, sam: Any, device: str, person_conf: float = 0.25,
                 source: str = "yolo+sam", compile_batch: int = 0) -> None:
        """Around built models (ultralytics' YOLO, segment-anything's Sam): `from_files` reads the real ones,
        benchmarks/gpu_smoke.py builds random ones of the same architecture. `compile_batch`: compile SAM's image
        encoder for batches of this size (every batch padded to it), or 0 to run it as it is."""
        from segment_anything.utils.transforms import ResizeLongestSide

        self.device = device
        fast_matmuls(device)
        self.detector = detector.to(device)
        checked_module(self.detector.model, device, "YOLO")
        self.sam = checked_module(sam.eval(), device, "SAM")
        use_sdpa(self.sam.image_encoder)
        self.autocast = device.startswith("cuda")  # bf16 on CUDA (~5x SAM's fp32 speed); fp32 on the CPU
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)
        self.person_conf = person_conf
        self.source = source
        self.fixed_batch = compile_batch
        if compile_batch:
            # ultralytics sets torch's CPU thread count on its first call, a state compiled code is guarded on
            self.person_boxes([np.zeros((32, 32, 3), np.uint8)])
            self.sam.image_encoder = compiled(self.sam.image_encoder, device, compile_batch, self.autocast)

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt]) -> list[PersonMask | None]:
        found = self.person_boxes(images)
        picks = [pick_person(prompt.face, boxes) for prompt, boxes in zip(prompts, found, strict=True)]
        todo = [k for k, pick in enumerate(picks) if pick is not None]
        boxes = [found[k][picks[k]] for k in todo]
        candidates = self.sam_masks([images[k] for k in todo], boxes, [prompts[k].others for k in todo])
        out: list[PersonMask | None] = [None] * len(images)
        for k, box, (masks, scores) in zip(todo, boxes, candidates, strict=True):
            out[k] = PersonMask(masks[pick_mask(prompts[k].face, masks, scores)], tuple(float(v) for v in box))
        return out

    def person_boxes(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(n, 4) float32 person boxes per image, in its pixels."""
        bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]  # ultralytics reads arrays as OpenCV BGR
        results = self.detector.predict(
            bgr, classes=[PERSON], conf=self.person_conf, device=self.device, verbose=False
        )
        return [result.boxes.xyxy.cpu().numpy().astype(np.float32) for result in results]

    def sam_masks(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], others: Sequence[Sequence[Box]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (3, H, W) bool candidate masks for its box prompt, and SAM's (3,) quality estimates."""
        if not images:
            return []
        import torch

        batch = [self._prompt(*args) for args in zip(images, boxes, others, strict=True)]
        size = self.fixed_batch or len(batch)  # a compiled encoder meets one batch shape only
        device = torch.device(self.device).type
        outputs = []
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=self.autocast):
            for start in range(0, len(batch), size):
                part = batch[start : start + size]
                outputs += self.sam(part + [part[0]] * (size - len(part)), multimask_output=True)[: len(part)]
        return [(out["masks"][0].cpu().numpy(), out["iou_predictions"][0].float().cpu().numpy()) for out in outputs]

    def _prompt(self, image: np.ndarray, box: np.ndarray, others: Sequence[Box]) -> dict:
        """One image and its prompts in the model's input frame (long side = the encoder's input side):
        the person box, and a negative point on every other face inside it (someone in front or behind)."""
        import torch

        size = image.shape[:2]
        prompt = {
            "image": torch.as_tensor(self.transform.apply_image(image), device=self.device).permute(2, 0, 1),
            "original_size": size,
            "boxes": torch.as_tensor(self.transform.apply_boxes(box[None, :], size), device=self.device).float(),
        }
        points = negative_points(box, others)
        if len(points):
            coords = self.transform.apply_coords(points, size)[None]
            prompt["point_coords"] = torch.as_tensor(coords, device=self.device).float()
            prompt["point_labels"] = torch.zeros(coords.shape[:2], device=self.device)
        return prompt


def build_sam(model: str, checkpoint: Path, device: str):  # -> segment_anything.modeling.Sam
    """SAM built straight from its checkpoint on `device`: the modules made on torch's meta device (no
    random init), the file's tensors assigned in place; the normalisation constants, which no checkpoint
    holds (non-persistent buffers), set from SAM's own defaults."""
    import inspect

    import torch
    from segment_anything import sam_model_registry
    from segment_anything.modeling import Sam

    weights = read_state_dict(checkpoint, device)  # not build_sam's torch.load, which leaves weights_only to torch
    with torch.device("meta"):
        sam = sam_model_registry[model]()
    sam.load_state_dict(weights, assign=True)
    defaults = inspect.signature(Sam.__init__).parameters
    for name in ("pixel_mean", "pixel_std"):
        constant = torch.tensor(defaults[name].default, device=device).view(-1, 1, 1)
        sam.register_buffer(name, constant, persistent=False)
    return sam.eval()


def use_sdpa(encoder: Any) -> None:
    """Every attention block of SAM's image encoder (a segment_anything ImageEncoderViT) run by `sdpa_attention`."""
    from segment_anything.modeling.image_encoder import Attention

    for module in encoder.modules():
        if isinstance(module, Attention):
            module.forward = MethodType(sdpa_attention, module)


def sdpa_attention(self: Any, x: Any) -> Any:
    """segment_anything's `Attention.forward`, softmax(q·kᵀ/√d + relative positions)·v, in one fused kernel
    (`scaled_dot_product_attention`, the positions its additive mask) where SAM's own takes three with the scores'
    softmax written out in fp32 between them (8.6 GB for a global block of vit_h at batch 8): the same arithmetic.
    Queries, keys and values go in as (batch, heads, tokens, head dim), the layout CUDA's fused kernels take."""
    import torch

    batch, height, width, _ = x.shape
    q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    positions = relative_positions(self, q, height, width) if self.use_rel_pos else None
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=positions, scale=self.scale)
    return self.proj(out.permute(0, 2, 1, 3).reshape(batch, height, width, -1))


def relative_positions(attention: Any, q: Any, height: int, width: int) -> Any:
    """SAM's decomposed relative-position term (its `add_decomposed_rel_pos`, for (batch, heads, tokens, dim)
    queries) as a (batch, heads, tokens, tokens) additive mask, summed by broadcasting."""
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos

    grid = q.reshape(*q.shape[:2], height, width, -1)
    rows = torch.einsum("bnhwc,hkc->bnhwk", grid, get_rel_pos(height, height, attention.rel_pos_h))
    cols = torch.einsum("bnhwc,wkc->bnhwk", grid, get_rel_pos(width, width, attention.rel_pos_w))
    tokens = height * width
    return (rows[..., :, None] + cols[..., None, :]).reshape(*q.shape[:2], tokens, tokens)


def compiled(encoder: Any, device: str, batch: int, autocast: bool) -> Any:
    """`torch.compile` of SAM's image encoder for batches of `batch`, compiled now (the worker's setup) by one call
    as `sam_masks` makes it: minutes of autotuning on CUDA. A compiler that fails (no C compiler, no Triton for this
    GPU) fails the setup in one line; running out of GPU memory stays what it is."""
    import torch

    kind = torch.device(device).type
    fast = torch.compile(encoder, mode=COMPILE_MODES[kind], dynamic=False)
    try:
        with torch.inference_mode(), torch.autocast(kind, torch.bfloat16, enabled=autocast):
            fast(torch.zeros(batch, 3, encoder.img_size, encoder.img_size, device=device))  # an inference tensor
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # inductor's failures share no base class: any means no compiled SAM here
        problem = f"torch.compile of SAM's image encoder failed: {type(error).__name__}: {str(error).strip()[:300]}"
        raise UserError(problem.splitlines()[0], "set segment.sam_compile=false to run SAM uncompiled "
                        "(docs/models.md: GPU machines)") from error
    return fast


def negative_points(box: np.ndarray, others: Sequence[Box]) -> np.ndarray:
    """(n, 2) centres of the other faces that lie inside the person box."""
    centres = np.array([((o[0] + o[2]) / 2, (o[1] + o[3]) / 2) for o in others], dtype=np.float32).reshape(-1, 2)
    inside_x = (centres[:, 0] >= box[0]) & (centres[:, 0] <= box[2])
    return centres[inside_x & (centres[:, 1] >= box[1]) & (centres[:, 1] <= box[3])]
