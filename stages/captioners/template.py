"""The `template` backend (the `cpu` profile, where no captioning model can be had): every caption is
"a photo of a <class word>", recorded as `caption_source = template`, never as a model's caption."""

from __future__ import annotations

SOURCE = "template"
PREFIX = "a photo of a "


def template_caption(word: str) -> tuple[str, tuple[int, int]]:
    """The caption and the class word's character span in it."""
    return PREFIX + word, (len(PREFIX), len(PREFIX) + len(word))
