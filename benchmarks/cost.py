"""Cost model: machine-hours for the paper's scale from the per-stage throughput measured here."""

from __future__ import annotations

from typing import Any

from benchmarks.overhead import StageTiming

IDENTITIES, PER_IDENTITY = 13_000, 100
IMAGES = IDENTITIES * PER_IDENTITY


def cost_model(timings: list[StageTiming], download_rate: float | None, cores: int) -> dict[str, Any]:
    """CPU core-hours per stage, every stage charged for all images (an upper bound: drops shrink later stages).

    Model stages: one actor on Ray = one core, so rows/s of the one-actor run is the per-core rate
    (start-up, a few seconds per worker and stage, left out). Crawl: the loopback download rate of `cores` workers, so a floor only:
    real downloads are bound by remote servers and bandwidth, not by this machine.
    """
    rates = {t.stage: t.rows_per_s for t in timings}
    stages = {name: {"per_core_images_per_s": round(rate, 2), "core_hours": round(IMAGES / rate / 3600, 1)}
              for name, rate in rates.items()}
    if download_rate:
        stages = {"crawl": {"per_core_images_per_s": round(download_rate / cores, 1),
                            "core_hours": round(IMAGES / (download_rate / cores) / 3600, 1)}, **stages}
    total = sum(stage["core_hours"] for stage in stages.values())
    bound = max(stages, key=lambda name: stages[name]["core_hours"])
    return {
        "images": IMAGES,
        "stages": stages,
        "total_core_hours": round(total, 1),
        "machine_hours_this_2_core_box": round(total / cores, 1),
        "machine_hours_16_core_box": round(total / 16, 1),
        "bounding_stage": bound,
        "assumptions": "cpu profile (YuNet + SFace, MODNet at 512 px, open_nsfw and the age model, template "
                       "captions); linear scaling in cores "
                       "(the scaling figures here were measured on 2 shared cores); GPU figures not measured",
    }


def markdown(cost: dict[str, Any]) -> str:
    lines = ["| stage | images/s per core | core-hours |", "|---|---:|---:|"]
    lines += [f"| {name} | {s['per_core_images_per_s']} | {s['core_hours']:,} |" for name, s in cost["stages"].items()]
    lines.append(f"| **total** | | **{cost['total_core_hours']:,}** |")
    return "\n".join(lines)
