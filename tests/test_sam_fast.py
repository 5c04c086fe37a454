"""SAM's speed settings change how its image encoder runs, never what it computes: SDPA attention gives
segment-anything's own attention's output, and a compiled encoder (batches padded to one shape) gives the
eager model's masks. Checked on segment-anything's real modules at a tiny size with random weights: equal
arithmetic, not mask quality, is what these tests can show."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from segment_anything.modeling.image_encoder import Attention

from benchmarks.gpu_models import crops, tiny_sam
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from stages.segment import SegmentStage
from stages.segmenters.checkpoints import import_ultralytics
from stages.segmenters.yolo_sam import YoloSamSegmenter, use_sdpa

SIDE = 256  # the tiny encoder's input: a 16 x 16 token grid, windows of 4 x 4 and one global block


def twin_sams():
    """Two tiny SAMs with the same random weights, the position embeddings too (SAM initialises them to zeros,
    where a wrong relative-position term would go unseen)."""
    torch.manual_seed(0)
    first, second = tiny_sam(SIDE).eval(), tiny_sam(SIDE).eval()
    with torch.no_grad():
        for name, tensor in first.image_encoder.named_parameters():
            if "pos" in name:
                tensor.normal_(std=0.5)
    second.load_state_dict(first.state_dict())
    return first, second


def yolo():
    import_ultralytics()
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml", task="detect")


def test_sdpa_attention_computes_what_sams_own_attention_does(monkeypatch) -> None:
    own, fused = twin_sams()
    use_sdpa(fused.image_encoder)
    blocks = [m for m in fused.image_encoder.modules() if isinstance(m, Attention)]
    assert len(blocks) == 2 and all("forward" in vars(m) for m in blocks)  # the windowed block and the global one
    assert {m.use_rel_pos for m in blocks} == {True}  # the relative positions go in as SDPA's additive mask
    layouts = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: layouts.append((q.dim(), kw["attn_mask"].dim())) or sdpa(q, k, v, **kw))
    pixels = torch.randn(2, 3, SIDE, SIDE)
    with torch.inference_mode():
        expected, got = own.image_encoder(pixels), fused.image_encoder(pixels)
        with torch.autocast("cpu", torch.bfloat16):  # as on CUDA: both in bf16, each as far from fp32 as the other
            own_bf16, fused_bf16 = own.image_encoder(pixels).float(), fused.image_encoder(pixels).float()
    assert layouts == [(4, 4)] * 4  # (batch, heads, tokens, dim): the only layout CUDA's fused kernels take
    assert expected.abs().max() > 0.1  # a real signal, not zeros matching zeros
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    own_error, fused_error = (own_bf16 - expected).abs().max(), (fused_bf16 - expected).abs().max()
    assert 0 < fused_error < 0.1 and fused_error < 2 * own_error


@pytest.mark.slow
def test_a_compiled_encoder_meets_one_batch_shape_and_gives_the_eager_masks() -> None:
    own, compiled_sam = twin_sams()
    eager = YoloSamSegmenter(yolo(), own, "cpu", person_conf=0.0)
    fast = YoloSamSegmenter(yolo(), compiled_sam, "cpu", person_conf=0.0, compile_batch=4)  # compiles here
    graphs = counters["stats"]["unique_graphs"]
    shapes: list[tuple[int, ...]] = []
    fast.sam.image_encoder.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    images = crops(5, 300)
    boxes = [np.array([30, 20, 250, 300], np.float32)] * 5
    others = [[(200, 20, 240, 60)]] * 5  # a negative point inside the box: every prompt kind goes through
    for count in (5, 3, 1):
        fast.person_boxes(images[:count])  # YOLO first, as `segment` calls them
        want = eager.sam_masks(images[:count], boxes[:count], others[:count])
        got = fast.sam_masks(images[:count], boxes[:count], others[:count])
        assert len(got) == count
        for (masks, scores), (own_masks, own_scores) in zip(got, want, strict=True):
            assert masks.shape == (3, 300, 300) and own_masks.any()
            # the compiler reorders float sums: a pixel at SAM's threshold may flip, nothing more
            assert (masks != own_masks).mean() < 1e-4 and np.allclose(scores, own_scores, atol=1e-5)
    assert shapes == [(4, 3, SIDE, SIDE)] * 4  # 5 images as 4 + 1, then 3 and 1: each call at the compiled shape
    assert counters["stats"]["unique_graphs"] == graphs  # the setup's compile serves them: nothing recompiled


def test_the_gpu_profiles_compile_sam_for_their_batches_and_no_fingerprint_holds_it(monkeypatch) -> None:
    for profile in ("gpu", "cluster"):
        config = load_config(resolve_profile(profile))
        assert config.segment.sam_compile and config.segment.backend == "yolo_sam"
        asked = {}
        monkeypatch.setattr(YoloSamSegmenter, "check", classmethod(lambda cls, config: None))
        monkeypatch.setattr(YoloSamSegmenter, "from_files",
                            classmethod(lambda cls, *args: asked.setdefault("compile_batch", args[-1])))
        YoloSamSegmenter.load(config)
        assert asked["compile_batch"] == config.segment.resources.batch_size == 8
        plain = load_config(resolve_profile(profile), ["segment.sam_compile=false"])
        assert SegmentStage.fingerprint(plain) == SegmentStage.fingerprint(config)  # how SAM runs, not what


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:dynamo_pgo")
def test_a_compiler_that_fails_fails_the_setup_in_one_line() -> None:
    """What a machine without a working C compiler meets: inductor cannot build the encoder's kernels."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    # the config's own patch (monkeypatch's undo would delete its keys); no kernels an earlier test built
    with inductor.patch({"force_disable_caches": True, "cpp.cxx": ("/nonexistent/c++",)}):
        with pytest.raises(UserError) as failed:
            YoloSamSegmenter(yolo(), twin_sams()[0], "cpu", person_conf=0.0, compile_batch=2)
    assert "\n" not in str(failed.value) and "torch.compile of SAM's image encoder failed" in str(failed.value)
    assert "No working C++ compiler" in str(failed.value) and "set segment.sam_compile=false" in str(failed.value)
