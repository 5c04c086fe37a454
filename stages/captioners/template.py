"""The `template` backend (the `cpu` profile, where no captioning model can be had): every caption is
"a photo of a <class word>", recorded as `caption_source = template`, never as a model's caption."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.config import PipelineConfig
from stages.backends import Backend

from .base import CAPTIONERS, Captioner

PREFIX = "a photo of a "


@CAPTIONERS.register
class TemplateCaptioner(Captioner, Backend):
    name = "template"
    source = "template"
    describes = False

    @classmethod
    def load(cls, config: PipelineConfig) -> TemplateCaptioner:
        return cls()

    def caption(self, images: Sequence[np.ndarray], seed: int | None = None) -> list[str]:
        raise NotImplementedError("the template backend writes captions from the class word only")

    def write(self, word: str) -> tuple[str, tuple[int, int]]:
        return PREFIX + word, (len(PREFIX), len(PREFIX) + len(word))

    def versions(self) -> dict[str, str]:
        return {"captioner": self.name}
