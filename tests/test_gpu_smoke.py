"""`python -m benchmarks.gpu_smoke` on tiny sizes: the code a GPU machine runs at the profile's sizes, so it
cannot rot. Random weights: only shapes, plumbing and the arithmetic of the estimate are checked."""

from __future__ import annotations

import json

import onnxruntime
import pytest
import torch

from benchmarks.gpu_models import TINY
from benchmarks.gpu_smoke import PUBLISHED, TARGET, WEB_FUNNEL, smoke
from pipeline.engine.registry import STAGES


@pytest.mark.slow
def test_the_gpu_smoke_test_times_every_model_and_reads_the_run(shared_run, tmp_path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = json.loads(json.dumps(smoke(TINY, device, tmp_path, run_dir=shared_run.out)))  # all of it JSON

    environment, models = result["environment"], result["models"]
    assert environment["onnxruntime_build"] in ("cpu", "gpu") and environment["onnxruntime_providers"]
    assert models["sam_bf16_compiled"]["compiled"] and models["sam_bf16_compiled"]["compile_s"] > 0
    for name in ("yolo", "sam_fp32", "sam_bf16", "sam_bf16_compiled", "sam_other_bf16", "segment_other_one_actor",
                 "blip", "blip_resize_cpu", "caption_actor_cpu_before", "caption_actor_cpu_normalise",
                 "caption_actor_cpu_decode"):
        assert models[name]["images_per_s"] > 0 and models[name]["batch"] in (TINY.sam_batch, TINY.blip_batch)
    both = models["segment_two_actors"]
    assert both["batch"] == 2 * TINY.sam_batch and both["images_per_s"] > 0
    choice = result["segment_choice"]  # the faster of the two, named; only the profile's sizes on a GPU decide
    faster = max(("two vit_h actors", both), ("one vit_l actor", models["segment_other_one_actor"]),
                 key=lambda named: named[1]["images_per_s"])[0]
    assert choice["faster"] == faster and choice["decides"] is False
    if device == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        expected = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        assert models["resnet_onnx_b8"]["images_per_s"] > 0 and models["resnet_onnx_b8"]["providers"][0] == expected
    else:  # a GPU machine with the CPU build of onnxruntime: the smoke test says so instead of timing the CPU
        assert "the CPU build of onnxruntime is installed" in models["resnet_onnx"]["error"]

    devices = result["run"]["devices"]  # the shared run is a cpu-profile run: no stage holds a GPU
    assert set(devices) == {stage.name for stage in STAGES} and result["run"]["error"] is None
    assert devices["filter"] and all(set(held) <= {"CPU"} for held in devices.values())

    web = result["estimate_web_funnel"]
    assert web["funnel"] == WEB_FUNNEL and web["target"] == TARGET
    seconds = sum(web["gpu_seconds_per_crawled_image"].values())
    assert web["crawled_images_per_s_per_gpu"] == pytest.approx(1 / seconds, rel=0.01)
    if device == "cpu":  # tiny CPU rates say nothing of a GPU: the estimate rests on the published figures
        used = {name: rate["images_per_s"] for name, rate in result["rates"].items()}
        assert used == {name: value for name, (value, _) in PUBLISHED.items()}
        assert not any(rate["confirmed"] for rate in result["rates"].values())
        eager = result["estimate_web_funnel_sam_not_compiled"]  # the profile compiles SAM; without it, segment grows
        assert 1 < web["sam_padding"] < 1.3 and eager["sam_padding"] == 1  # only a compiled SAM pads its batches
        segment = web["gpu_seconds_per_crawled_image"]["segment"]
        assert eager["gpu_seconds_per_crawled_image"]["segment"] > segment
        assert eager["crawled_images_per_s_per_gpu"] < web["crawled_images_per_s_per_gpu"]
    assert 0 < result["estimate_this_run_funnel"]["funnel"]["segment"] <= 1
