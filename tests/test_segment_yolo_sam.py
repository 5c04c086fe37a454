"""The yolo_sam backend with random-weight YOLOv8n and SAM vit_b, loaded from files like real checkpoints.

Random weights say nothing about quality: these tests check loading, shapes, batching and that the
selection logic is wired to the model outputs. Person boxes are controlled where a test needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.rundir import RunDir
from stages.crop import CropStage
from stages.segment import SegmentStage, prompt
from stages.segmenters import decode_mask, face_coverage
from stages.segmenters.checkpoints import import_ultralytics, layer, read_yolo
from stages.segmenters.yolo_sam import YoloSamSegmenter, negative_points, pick_mask
from tests.tiny_segmenters import SAM_FILE, YOLO_FILE, build_weights
from benchmarks.fixtures.verified_rows import verified_table


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_weights(tmp_path_factory.mktemp("weights"))


def config(weights, *overrides: str):
    settings = ["segment.backend=yolo_sam", f"segment.weights_dir={weights}", f"segment.yolo_weights={YOLO_FILE}",
                "segment.sam_model=vit_b", "segment.device=auto", "crop.size=512", *overrides]
    return load_config(resolve_profile("cpu"), settings)


@pytest.fixture(scope="module")
def crops(tmp_path_factory, faces, weights):
    """Crops of a single portrait and of a couple (the other face inside the crop)."""
    run = RunDir(str(tmp_path_factory.mktemp("run")))
    table = verified_table(run, [faces["images"] / "img38.jpg", faces["images"] / "couple.jpg"])
    return run, CropStage(config(weights), run).process(table)


@pytest.mark.slow
def test_checkpoints_load_through_the_configured_paths(weights, crops) -> None:
    SegmentStage.preflight(config(weights))  # the vit_b file is found under its official name
    stage = SegmentStage(config(weights, "segment.person_conf=0"), crops[0])
    stage.setup()
    segmenter = stage.segmenter
    assert isinstance(segmenter, YoloSamSegmenter) and segmenter.source == "yolo+sam:vit_b"
    assert segmenter.device == ("cuda:0" if torch.cuda.is_available() else "cpu")  # auto: CUDA wherever torch has it
    assert segmenter.sam.image_encoder.img_size == 1024 and segmenter.autocast == segmenter.device.startswith("cuda")
    tensors = [*segmenter.sam.parameters(), *segmenter.sam.buffers()]
    assert {t.device for t in tensors} == {torch.device(segmenter.device)}
    images = [np.zeros((300, 200, 3), np.uint8), np.full((256, 384, 3), 90, np.uint8)]
    boxes = segmenter.person_boxes(images)
    assert len(boxes) == 2 and all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4 for b in boxes)
    assert sum(len(b) for b in boxes) > 0  # a zero score cut lets random boxes through
    for found, image in zip(boxes, images):
        assert (found[:, :2] >= 0).all() and (found[:, 2] <= image.shape[1]).all() and (found[:, 3] <= image.shape[0]).all()


class Spy:
    """Wraps a method, remembering each call's arguments and result."""

    def __init__(self, method) -> None:
        self.method, self.calls = method, []

    def __call__(self, *args):
        result = self.method(*args)
        self.calls.append((args, result))
        return result


@pytest.mark.slow
def test_one_batched_sam_call_and_the_selection_wired_to_it(weights, crops) -> None:
    run, table = crops
    # random weights: any non-empty mask is kept, however much of the crop it fills
    stage = SegmentStage(config(weights, "segment.min_face_coverage=0", "segment.max_mask_area=1"), run)
    stage.setup()
    rows = table.to_pylist()
    person = [float(v) for v in (0, 0, 512, 512)]
    decoy = [0.0, 0.0, 40.0, 40.0]  # far from every face: must never be picked
    stage.segmenter.person_boxes = lambda images: [np.array([decoy, person], np.float32) for _ in images]
    spy = stage.segmenter.sam_masks = Spy(stage.segmenter.sam_masks)
    out = stage.process(table).to_pylist()

    ((images, boxes, others), candidates) = spy.calls[0]
    assert len(spy.calls) == 1 and len(images) == 2  # both crops through one encoder batch
    assert [b.tolist() for b in boxes] == [person, person]
    assert len(negative_points(boxes[1], others[1])) == 1  # the couple's other face says "not this one"
    for row, source, (masks, scores) in zip(out, rows, candidates):
        assert masks.shape == (3, 512, 512) and masks.dtype == bool and scores.shape == (3,)
        assert row["mask_source"] == "yolo+sam:vit_b" and row["person_box"] == person
        mask = decode_mask(row["mask"])
        assert np.array_equal(mask, masks[pick_mask(prompt(source).face, masks, scores)])
        assert row["mask_face_coverage"] == pytest.approx(face_coverage(mask, prompt(source).face))
        assert row["status"] == ("ok" if mask.any() else "dropped")


class Payload:
    """Unpickles as a call to `exec`: what a crafted checkpoint hides among real weights (here it only
    creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_unrun(weights, tmp_path) -> None:
    import torch

    marker, folder = tmp_path / "ran", tmp_path / "weights"
    folder.mkdir()
    (folder / SAM_FILE).symlink_to(weights / SAM_FILE)
    _, checkpoint = read_yolo(weights / YOLO_FILE)
    torch.save({**checkpoint, "note": Payload(marker)}, folder / YOLO_FILE)  # a real checkpoint, plus the payload
    torch.save({"note": Payload(marker)}, tmp_path / SAM_FILE)
    torch.load(folder / YOLO_FILE, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UserError, match=f"{YOLO_FILE} refused: its pickle names builtins.exec") as refused:
        SegmentStage.preflight(config(folder))
    assert "official ultralytics detection checkpoint" in refused.value.fix
    with pytest.raises(ModelNotFound, match="builtins.exec"):
        YoloSamSegmenter.from_files(folder / YOLO_FILE, "vit_b", weights / SAM_FILE)
    with pytest.raises(ModelNotFound, match=f"{SAM_FILE} refused: .*GLOBAL exec"):
        YoloSamSegmenter.from_files(weights / YOLO_FILE, "vit_b", tmp_path / SAM_FILE)
    assert not marker.exists()


@pytest.mark.slow
def test_the_training_record_older_ultralytics_wrote_loads(weights, tmp_path) -> None:
    """Args as an IterableSimpleNamespace and metrics as numpy scalars, as older ultralytics versions wrote them."""
    import torch
    from ultralytics.utils import IterableSimpleNamespace

    model, checkpoint = read_yolo(weights / YOLO_FILE)
    model.args = IterableSimpleNamespace(**checkpoint["train_args"])
    metrics = {key: np.float64(value) for key, value in checkpoint["train_metrics"].items()}
    torch.save({**checkpoint, "model": model.half(), "train_metrics": metrics}, tmp_path / YOLO_FILE)
    loaded, record = read_yolo(tmp_path / YOLO_FILE)
    assert isinstance(loaded.args, IterableSimpleNamespace) and type(record["train_metrics"]["fitness"]) is np.float64


def test_a_checkpoint_saved_as_the_published_yolov8x_pt_loads(tmp_path, monkeypatch) -> None:
    """The published yolov8x.pt (ultralytics' assets, first written by ultralytics 8.0.0) pickles its fp16
    DetectionModel with the layers under the single module `ultralytics.nn.modules` of that time
    (`ultralytics.nn.modules.Conv`, `.C2f`, `.SPPF`, `.Detect`, ...: what users' allow-lists for it name, e.g.
    ultralytics issue #19824 and the add_safe_globals lists in code around it), and its checkpoint keys as 8.0.0
    wrote them. The same is written here from a fresh yolov8n, by pickling each layer class under that name."""
    import_ultralytics()
    import torch
    import ultralytics.nn.modules as flat
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False).half().eval()
    for cls in {type(m) for m in model.modules() if type(m).__module__.startswith("ultralytics.nn.modules.")}:
        assert getattr(flat, cls.__name__) is cls
        monkeypatch.setattr(cls, "__module__", "ultralytics.nn.modules")
    checkpoint = {"epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None, "optimizer": None,
                  "train_args": {"task": "detect", "imgsz": 640}, "date": "2023-01-10T00:00:00", "version": "8.0.0"}
    torch.save(checkpoint, tmp_path / "yolov8x.pt")
    monkeypatch.undo()

    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "yolov8x.pt"))
    assert {"ultralytics.nn.modules.Conv", "ultralytics.nn.modules.C2f", "ultralytics.nn.modules.SPPF",
            "ultralytics.nn.modules.Detect", "ultralytics.nn.tasks.DetectionModel"} <= names
    assert not any(name.startswith("ultralytics.nn.modules.conv") for name in names)
    loaded, record = read_yolo(tmp_path / "yolov8x.pt")
    assert record["version"] == "8.0.0" and next(loaded.parameters()).dtype == torch.float32
    ours = model.float().state_dict()
    assert all(torch.equal(value, ours[key]) for key, value in loaded.state_dict().items())


def test_the_allow_list_holds_torch_and_ultralytics_layers_only() -> None:
    import_ultralytics()
    import torch
    from ultralytics.nn.modules.conv import Conv

    assert layer("torch.nn.modules.conv.Conv2d") is torch.nn.Conv2d
    assert layer("ultralytics.nn.modules.Conv") is Conv  # the package re-export early checkpoints name
    for name in ("ultralytics.nn.modules.block.TorchVision", "torch.nn.modules.conv.F", "torch.nn.modulesx.Conv2d",
                 "ultralytics.nn.tasks.torch_safe_load", "os.system", "builtins.exec"):
        assert layer(name) is None, name
