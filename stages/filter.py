"""Filter stage, resolution half: cheap header checks first, then a decode check for survivors."""

from __future__ import annotations

from pipeline.schema import IMAGE_SIZE
from stages.base import Row, RowStage, drop, keep
from stages.imaging import ImageRejected, check_decodes, probe


class FilterStage(RowStage):
    name = "filter"
    sections = ("filter",)
    requires = ("raw_path",)
    produces = IMAGE_SIZE

    def process_row(self, row: Row) -> Row:
        settings = self.config.filter
        data = self.run.read_bytes(row["raw_path"])
        try:
            header = probe(data, settings.max_pixels)
        except ImageRejected as rejected:
            return drop(rejected.reason, rejected.detail)
        size = {"width": header.width, "height": header.height, "exif_orientation": header.orientation}
        short, long = sorted((header.width, header.height))
        if short < settings.min_short_side:
            return drop("low_resolution", f"short side {short} < {settings.min_short_side}", **size)
        if long > settings.max_aspect_ratio * short:
            return drop("extreme_aspect_ratio", f"{header.width}x{header.height}", **size)
        try:
            check_decodes(data, settings.max_pixels)
        except ImageRejected as rejected:
            return drop(rejected.reason, rejected.detail, **size)
        return keep(**size)
