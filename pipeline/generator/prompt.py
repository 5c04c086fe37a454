"""The trigger word: where the stacked ID embedding goes in the prompt, and the prompt without it.

"a photo of a man img, smiling" with 3 reference images becomes the token sequence of
"a photo of a man man man, smiling": the trigger is removed and the class word's token repeated
once per ID token (PhotoMaker v1 makes one per reference, v2 two); those positions get the fused
ID embeddings. The text-only prompt (what the UNet sees before `start_merge_step`) is the prompt
with the trigger removed and nothing repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError
from stages.class_words import CANONICAL, SYNONYMS, mentions

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

MAX_TOKENS = 77  # CLIP's context, start and end tokens included


@dataclass(frozen=True)
class IDPrompt:
    text_only: str  # the prompt without the trigger word
    class_word: str  # canonical: man | woman | boy | girl | person
    trigger: str


@dataclass(frozen=True)
class IDTokens:
    ids: list[int]  # MAX_TOKENS ids: class token repeated, trigger removed, padded
    positions: list[int]  # indices of the repeated class tokens, one per ID token
    text_only_ids: list[int]  # the text-only prompt's MAX_TOKENS ids


def parse_prompt(prompt: str, trigger: str) -> IDPrompt:
    """Check that the trigger word appears once, right after a class word; refuse the prompt otherwise."""
    found = list(re.finditer(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", prompt, re.IGNORECASE))
    example = f'e.g. "a photo of a man {trigger}, smiling"'
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} times the"
        raise UserError(f"the prompt holds {what} trigger word {trigger!r}", f"write it once, after the class word: {example}")
    before = prompt[: found[0].start()]
    previous = re.search(r"([\w'-]+)\s+$", before)
    words = mentions(previous.group(1)) if previous else []
    if not words or words[0].start != 0 or words[0].end != len(previous.group(1)):
        where = f"after {previous.group(1)!r}" if previous else "without a word before it"
        raise UserError(f"the trigger word {trigger!r} comes {where}, not right after a class word",
                        f"put it right after one of {', '.join(CANONICAL)} (or a synonym): {example}")
    text_only = re.sub(r"\s+", " ", before + prompt[found[0].end():]).strip()
    return IDPrompt(text_only, SYNONYMS[previous.group(1).lower()], trigger)


def add_trigger(tokenizer: CLIPTokenizer, trigger: str) -> int:
    """Make the trigger one token of its own (it is removed before the text encoder sees the ids)."""
    tokenizer.add_tokens([trigger], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(trigger)


def id_tokens(tokenizer: CLIPTokenizer, prompt: str, trigger: str, repeats: int) -> IDTokens:
    """Token ids of the ID prompt and of the text-only prompt, for one tokenizer with the trigger added."""
    trigger_id = tokenizer.convert_tokens_to_ids(trigger)
    raw = tokenizer(_exact_trigger(prompt, trigger)).input_ids
    if raw.count(trigger_id) != 1:
        raise ValueError(f"tokenizer does not keep {trigger!r} as one token: call add_trigger first")
    at = raw.index(trigger_id)
    ids = raw[: at - 1] + [raw[at - 1]] * repeats + raw[at + 1:]
    positions = list(range(at - 1, at - 1 + repeats))
    if positions[-1] >= MAX_TOKENS - 1:
        raise UserError(f"the class word lands past CLIP's {MAX_TOKENS} tokens repeated for {repeats} ID tokens",
                        "move the class word and trigger earlier in the prompt or use fewer references")
    return IDTokens(_fit(tokenizer, ids), positions, _fit(tokenizer, raw[:at] + raw[at + 1:]))


def _exact_trigger(prompt: str, trigger: str) -> str:
    """The trigger as written in any case, spelled exactly as the added token."""
    return re.sub(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", trigger, prompt, flags=re.IGNORECASE)


def _fit(tokenizer: CLIPTokenizer, ids: list[int]) -> list[int]:
    """Truncate (keeping the end token) and pad to MAX_TOKENS, as SDXL's prompt encoding does."""
    if len(ids) > MAX_TOKENS:
        ids = ids[: MAX_TOKENS - 1] + [tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (MAX_TOKENS - len(ids))
