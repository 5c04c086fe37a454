"""Reference-generator results: `generate/<run id>/record.json`, written by `python -m pipeline generate`.

The newest records are shown: prompt and settings, the mean similarity of the generated faces to
each identity, and thumbnails (under report/thumbs/, so the report folder stays self-contained)
of the reference crops and of the generated images. Records are read defensively and every
value is escaped: a half-written or foreign file shows as unreadable, never breaks the page.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from pipeline.core.rundir import RunDir
from pipeline.report.gallery import tiles
from pipeline.report.html import cell, esc, table
from pipeline.report.sheets import Tile
from pipeline.report.thumbs import Thumbs

GENERATE = "generate"
RECORD = "record.json"
MAX_RECORDS = 10
MAX_REFERENCES = 6
SETTINGS = ("created_at", "prompt", "class_word", "mix", "seed", "steps", "guidance", "start_merge_step",
            "base_model", "adapter", "device", "seconds")


def read_records(run: RunDir) -> list[tuple[str, dict]]:
    """(run id, record) of every generation, newest first (run ids start with their UTC time)."""
    selector = pafs.FileSelector(run.path(GENERATE), allow_not_found=True)
    run_ids = sorted((info.base_name for info in run.fs.get_file_info(selector)
                      if info.type == pafs.FileType.Directory), reverse=True)
    records = []
    for run_id in run_ids:
        rel = f"{GENERATE}/{run_id}/{RECORD}"
        if run.exists(rel):
            try:
                data = json.loads(run.read_bytes(rel))
            except ValueError as exc:
                data = {"unreadable": str(exc)}
            records.append((run_id, data if isinstance(data, dict) else {"unreadable": "not a JSON object"}))
    return records


def _settings_table(data: dict) -> str:
    rows = [[cell(esc(key)), cell(esc(data[key]))] for key in (*SETTINGS, "unreadable") if key in data]
    for person in data.get("identities") or []:
        if isinstance(person, dict):
            text = f"{person.get('identity')} ({person.get('photos')} photos, weight {person.get('weight')})"
            rows.append([cell("identity"), cell(esc(text))])
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    for key, value in summary.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
        rows.append([cell(esc(key)), cell(esc(text))])
    return table(["field", "value"], rows)


def _image_tiles(run_id: str, data: dict, thumbs: Thumbs) -> list[Tile]:
    images = [image for image in data.get("images") or [] if isinstance(image, dict)]
    found = []
    for image in images:
        sims = image.get("sim_to_centroid") or {}
        label = ", ".join(f"{name} {sim:.3f}" for name, sim in sims.items() if isinstance(sim, (int, float)))
        thumb = thumbs.file(f"{GENERATE}/{run_id}/{image.get('file')}", image.get("face_box"))
        found.append(Tile(thumb, label or "no face found", f"seed {image.get('seed')}"))
    return found


def _reference_tiles(run_id: str, data: dict, thumbs: Thumbs) -> tuple[list[Tile], int]:
    """The first reference crops, and how many there are."""
    references = [(person.get("identity"), ref) for person in data.get("identities") or [] if isinstance(person, dict)
                  for ref in person.get("references") or [] if isinstance(ref, dict)]
    shown = [Tile(thumbs.file(f"{GENERATE}/{run_id}/{ref.get('file')}", None), f"reference · {name}")
             for name, ref in references[:MAX_REFERENCES]]
    return shown, len(references)


def render(records: list[tuple[str, dict]], thumbs: Thumbs) -> str:
    if not records:
        return ('<p class="muted">Not run yet: <code>python -m pipeline generate</code> writes its results to '
                "generate/, and the next report shows them here.</p>")
    parts = [(f'<p class="muted">{min(len(records), MAX_RECORDS)} of {len(records)} generations, newest first; '
              "similarities are cosines of each generated face to the identity's centroid.</p>")]
    for run_id, data in records[:MAX_RECORDS]:
        references, total = _reference_tiles(run_id, data, thumbs)
        generated = _image_tiles(run_id, data, thumbs)
        parts.append(f"<h3>{esc(run_id)}</h3>{_settings_table(data)}"
                     f"<h4>References</h4>{tiles(references, total, 'none recorded')}"
                     f"<h4>Generated</h4>{tiles(generated, len(generated), 'none recorded')}")
    return "".join(parts)


def summaries(records: list[tuple[str, dict]]) -> list[dict]:
    """For summary.json: each generation's prompt and similarity summary."""
    return [{"run_id": run_id, "prompt": data.get("prompt"), "summary": data.get("summary")}
            for run_id, data in records]
