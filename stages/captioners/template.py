"""The `template` backend (the `cpu` profile, where no captioning model can be had): every caption is
"a photo of a <class word>", recorded as `caption_source = template`, never as a model's caption. A group photo's
labelled people are all named, left to right: "a photo of a man and a woman" (stages/caption_people.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.config import PipelineConfig
from stages.backends import Backend

from .base import CAPTIONERS, Captioner

LEAD = "a photo of "


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

    def write_people(self, words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """"a photo of a man, a woman and a boy": one class word a person, in order, and each word's span."""
        text, spans = LEAD, []
        for number, word in enumerate(words):
            if number:
                text += " and " if number == len(words) - 1 else ", "
            text += "a "
            spans.append((len(text), len(text) + len(word)))
            text += word
        return text, spans

    def versions(self) -> dict[str, str]:
        return {"captioner": self.name}
