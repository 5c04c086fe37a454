"""Where a worker's models run, and the proof that they got that device.

The engine places each worker (`placed`): one that holds a GPU turns every `device: auto` into `cuda`, one that
holds none into `cpu` (a worker Ray gave no GPU still sees every GPU, and must leave them to the workers that
hold them). An explicit `cuda` is then a promise each backend checks when it loads: the onnxruntime session's
first provider (`checked_providers`, after the session is made: onnxruntime falls back to the CPU with only a
log line when the CUDA or cuDNN libraries do not load) and the torch device (`torch_device`). A broken promise
fails the worker's setup with one line naming the cause and the fix, never a silent run on one CPU thread.
Outside Ray (tests, scripts) `auto` is CUDA where the library offers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
# cuDNN's exhaustive search re-runs for every new input shape; the default arena grows by powers of two and
# never gives memory back. Both are onnxruntime's documented settings for serving.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
GPU_GUIDE = "docs/models.md: GPU machines"
CPU_BUILD_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]' "
                 f"({GPU_GUIDE})")
LIBRARIES_FIX = ("pip install 'onnxruntime-gpu[cuda,cudnn]' (CUDA 12 and cuDNN 9 libraries), or put yours on "
                 f"LD_LIBRARY_PATH; the worker's log has onnxruntime's own error ({GPU_GUIDE})")


def placed(config: PipelineConfig, gpu_ids: Sequence[Any]) -> PipelineConfig:
    """The config as a worker holding `gpu_ids` runs it: `auto` devices become `cuda` (required) or `cpu`."""
    device = "cuda" if gpu_ids else "cpu"
    updates = {name: section.model_copy(update={"device": device}) for name, section in config
               if getattr(section, "device", None) == "auto"}
    return config.model_copy(update=updates)


def placement(gpu_ids: Sequence[Any]) -> str:
    """The device a worker holds, as the run summary shows it."""
    return f"GPU {','.join(str(g) for g in gpu_ids)}" if gpu_ids else "CPU"


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda")


def check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not wants_cuda(device):
        raise UserError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")


def onnx_providers(device: str) -> list:
    """onnxruntime's execution providers for `auto | cpu | cuda | cuda:N`: CUDA first (with CUDA_OPTIONS) where
    asked for or (auto) where onnxruntime offers it; an explicit CUDA device on the CPU build is an error."""
    import onnxruntime

    check_device(device)
    available = onnxruntime.get_available_providers()
    has_cuda = CUDA_PROVIDER in available
    if wants_cuda(device) and not has_cuda:
        raise UserError(f"device={device}, but the CPU build of onnxruntime is installed (it offers only "
                        f"{', '.join(available)})", CPU_BUILD_FIX)
    if device == "cpu" or not has_cuda:
        return [CPU_PROVIDER]
    options = {**CUDA_OPTIONS, **({"device_id": int(device.split(":", 1)[1])} if ":" in device else {})}
    return [(CUDA_PROVIDER, options), CPU_PROVIDER]


def checked_providers(got: Sequence[str], device: str, model: str) -> str:
    """The providers a session got, as recorded in a row's model evidence; a CUDA device the session did not
    get first is a setup failure (the CUDA provider is offered, so its libraries failed to load)."""
    if wants_cuda(device) and (not got or got[0] != CUDA_PROVIDER):
        raise UserError(f"device={device}, but onnxruntime ran {model} on {', '.join(got) or 'nothing'}: its CUDA "
                        "provider did not start (CUDA or cuDNN libraries missing, or no such GPU)", LIBRARIES_FIX)
    return ",".join(got)


def onnx_session(model: str, device: str, options: Any = None) -> Any:  # -> onnxruntime.InferenceSession
    """An onnxruntime session on `device`, checked to have got it."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, options, providers=onnx_providers(device))
    checked_providers(session.get_providers(), device, model)
    return session


def torch_device(device: str) -> str:
    """The torch device for `auto | cpu | cuda | cuda:N`; an explicit CUDA device torch cannot reach is an error
    naming why (a CPU build of torch, or no visible GPU)."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if not wants_cuda(device):
        return device
    if torch.version.cuda is None:
        raise UserError(f"device={device}, but torch {torch.__version__} is a CPU build",
                        "pip install torch from the CUDA wheels (https://pytorch.org/get-started/locally/)")
    if not torch.cuda.is_available():
        raise UserError(f"device={device}, but torch sees no CUDA device", "check the NVIDIA driver (nvidia-smi) "
                        "and CUDA_VISIBLE_DEVICES on this node")
    return "cuda:0" if device == "cuda" else device


def checked_module(module: Any, device: str, model: str) -> Any:
    """A torch module whose every parameter sits on `device` (a CUDA worker never runs a model on the CPU)."""
    import torch

    wanted = torch.device(device)
    tensors = [*module.parameters(), *module.buffers()]
    strays = {str(t.device) for t in tensors if t.device.type != wanted.type}
    if strays:
        raise UserError(f"{model} has parameters on {', '.join(sorted(strays))}, not {device}",
                        "report it as a bug: a backend must place every tensor on its device")
    return module


# Batch sizes a CUDA session is fed (ArcFace, open_nsfw): a batch is padded up to the next one, so cuDNN meets
# four shapes, not one per face count. The largest is the backends' own cap per call.
PADDED_BATCHES = (8, 32, 128, 256)


def padded(items: list, sizes: Sequence[int]) -> list:
    """`items` with copies of a blank (zeros like the first) appended up to the next of `sizes`; as they are
    when `sizes` is empty or none is large enough. Each output row depends only on its own input row."""
    import numpy as np

    target = next((size for size in sizes if size >= len(items)), len(items))
    return list(items) + [np.zeros_like(items[0])] * (target - len(items)) if items else list(items)


def fast_matmuls(device: str) -> None:
    """TF32 for float32 matrix products and convolutions on CUDA (Ampere and later): ~8x the fp32 rate, and well
    within what detection and captioning need. Process-wide, as torch's setting is."""
    import torch

    if wants_cuda(device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
