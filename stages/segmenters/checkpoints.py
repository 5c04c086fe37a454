"""Model files read as data: torch's `weights_only` unpickler builds only allow-listed classes and calls
nothing else, so a crafted checkpoint cannot run code when it is loaded.

A segment-anything file is a state dict (tensors by name): torch's own list covers it. An ultralytics
checkpoint pickles its whole model, and `ultralytics.YOLO(path)` unpickles it in full
(`weights_only=False`), so it is read here, against the allow-list of what an official detection
checkpoint (yolov8x.pt, yolo11x.pt, ...) holds:

- the model class, `ultralytics.nn.tasks.DetectionModel`;
- its layers: the `nn.Module` classes defined in `torch.nn.modules` and `ultralytics.nn.modules`, found by
  name so every YOLO generation's blocks resolve; not `TorchVision`, whose constructor downloads a model;
- its training record: `IterableSimpleNamespace` (also under its old `ultralytics.yolo.utils` path), numpy
  scalars and dtypes (under numpy 1 and 2 paths).

Nothing else: not `builtins.getattr` (segment, pose and obb checkpoints pickle it, detection ones do not),
not loss classes (released checkpoints are stripped of them). The globals a file names come from a static
scan of its pickle, before any of it is unpickled, so a refused file runs nothing and the error names them.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelNotFound

YOLO_URL = "https://github.com/ultralytics/assets/releases"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
FIXES = {
    "YOLO": f"use an official ultralytics detection checkpoint (e.g. yolov8x.pt from {YOLO_URL}), "
    "or set segment.yolo_weights=PATH",
    "segment-anything": f"use an official checkpoint from {SAM_URL}, or set segment.sam_checkpoint=PATH",
}
LAYER_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
NOT_LAYERS = {"TorchVision"}  # its constructor fetches a torchvision model: never built from a file

SafeGlobals = list[Any]  # entries for torch.serialization.safe_globals: objects, or (object, pickled name)


def refused(path: Path, model: str, why: str) -> ModelNotFound:
    """Reported like a missing file: what was wanted, where, and how to get a good one."""
    return ModelNotFound(f"a {model} checkpoint safe to load ({path.name} refused: {why})", [str(path)], FIXES[model])


def import_ultralytics() -> None:
    """ultralytics with every layer module imported, offline: `YOLO_OFFLINE` must precede its first import
    (no hub checks, no asset downloads)."""
    os.environ["YOLO_OFFLINE"] = "1"
    importlib.import_module("ultralytics.nn.tasks")  # imports every ultralytics.nn.modules submodule


def data_globals() -> dict[str, Any]:
    """The allow-listed names that are not layers, with the objects they stand for."""
    import numpy as np
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]  # numpy._core.multiarray.scalar; numpy 1 wrote numpy.core
    return {
        "ultralytics.nn.tasks.DetectionModel": DetectionModel,
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
    }


def layer(name: str) -> type | None:
    """The torch or ultralytics layer class a pickled name stands for, else None. Only modules already
    imported are searched: no name in a file makes anything import."""
    import torch

    module, _, attr = name.rpartition(".")
    package = next((p for p in LAYER_PACKAGES if inside(module, p)), None)
    found = getattr(sys.modules.get(module), attr, None)
    if package is None or not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        return None
    return found if inside(found.__module__, package) and found.__name__ not in NOT_LAYERS else None


def inside(module: str, package: str) -> bool:
    return f"{module}.".startswith(f"{package}.")


def yolo_globals(path: Path) -> SafeGlobals:
    """The allow-listed objects for every global the YOLO checkpoint names (by a static scan; nothing is
    unpickled); ModelNotFound when one is not on the list."""
    import_ultralytics()
    import numpy as np
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError) as error:  # not a torch.save zip archive, or a damaged one
        raise refused(path, "YOLO", f"not a torch.save checkpoint: {error}") from error
    known = data_globals()
    found = {name: known.get(name) or layer(name) for name in names}
    unknown = sorted(name for name, obj in found.items() if obj is None)
    if unknown:
        raise refused(path, "YOLO", f"its pickle names {', '.join(unknown)}, outside the allow-list")
    # a numpy dtype is built as an instance of its own class, which no scan sees named
    dtypes = [type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]]
    return [(obj, name) for name, obj in found.items()] + dtypes


def read(path: Path, model: str, allowed: SafeGlobals, device: str = "cpu") -> Any:
    """The file's object, unpickled by torch's `weights_only` unpickler with `allowed` on top of its defaults,
    its tensors on `device`."""
    import torch

    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own advice (allow-list the global if trusted) is not ours
        reason = next((line for line in str(error).splitlines() if "WeightsUnpickler" in line), str(error))
        raise refused(path, model, reason.strip().split(". ")[0]) from error


def read_yolo(path: Path) -> tuple[Any, dict]:
    """The checkpoint's DetectionModel (float, eval mode) and the checkpoint, read as data."""
    from ultralytics.nn.tasks import DetectionModel

    checkpoint = read(path, "YOLO", yolo_globals(path))
    model = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(model, DetectionModel):
        raise refused(path, "YOLO", "it holds no ultralytics DetectionModel")
    return model.float().eval(), checkpoint


def read_state_dict(path: Path, device: str = "cpu") -> dict:
    """A segment-anything checkpoint: tensors by name (on `device`), nothing beyond torch's own list."""
    return read(path, "segment-anything", [], device)


def yolo_detector(path: Path) -> Any:
    """ultralytics' YOLO (its predict: letterboxing, NMS, Results) around the model `read_yolo` reads."""
    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.cfg import DEFAULT_CFG_DICT

    class Detector(YOLO):
        def _load(self, weights: str, task: str | None = None) -> None:
            """ultralytics' own `_load` (how a Model turns a .pt path into its model), with the file read as data."""
            self.model, self.ckpt = read_yolo(Path(weights))
            self.task = self.model.task = "detect"
            args = {**DEFAULT_CFG_DICT, **self.ckpt.get("train_args", {})}
            self.overrides = self.model.args = {**self._reset_ckpt_args(args), "model": weights, "task": self.task}
            self.ckpt_path = self.model_name = weights

    return Detector(str(path), task="detect")
