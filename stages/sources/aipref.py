"""AI usage preferences (IETF AIPREF): the `Content-Usage` HTTP header and robots.txt `Content-Usage` rules.

Follows draft-ietf-aipref-vocab-06 (the vocabulary: categories `train-ai`, `ai-use`, `search`, each
`y` or `n`, written as an RFC 9651 Dictionary) and draft-ietf-aipref-attach-05 (where it is found):

- the `Content-Usage` response header, a Dictionary about the content of that response;
- a `Content-Usage: <path> <preference>` rule in a robots.txt group (RFC 9309 groups, our product
  token's groups, else `*`'s); the rule with the longest matching path applies (robots.txt
  patterns, `*` and a final `$`), rules of equal length are combined.

Training a generator on the image is the vocabulary's AI Training (`train-ai`); `train-genai`, the
generative-training label of drafts -03 to -05, counts too (refusing errs toward the site). Several
statements combine as the vocabulary says: any `n` refuses. A value that is not the token `y` or `n`,
a key in upper case, or text that does not parse as a Dictionary says nothing (unknown), as the
vocabulary's processing rules require; an unknown preference does not refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import http_sf

from pipeline.core.reasons import AI_USAGE_REFUSED
from stages.sources.consent import (
    ABSENT,
    PASS,
    REFUSED,
    Evidence,
    PathPattern,
    Refusal,
    decode_unreserved,
    path_and_query,
)

TRAINING = ("train-ai", "train-genai")
ALLOW, DISALLOW = "y", "n"


def training_preference(expression: str) -> str | None:
    """`n`, `y` or None (unknown) for training, from one preference expression."""
    try:
        parsed = http_sf.parse(expression.encode("ascii", "replace"), tltype="dictionary")
    except http_sf.StructuredFieldError:
        return None
    found = [value for label in TRAINING if (value := _token(parsed.get(label))) is not None]
    return combine(found)


def _token(entry: object) -> str | None:
    value = entry[0] if isinstance(entry, tuple) else None
    return str(value) if isinstance(value, http_sf.Token) and str(value) in (ALLOW, DISALLOW) else None


def combine(preferences: Iterable[str | None]) -> str | None:
    """The vocabulary's rule for several statements: any disallow wins, then any allow, else unknown."""
    known = set(preferences) - {None}
    return DISALLOW if DISALLOW in known else ALLOW if ALLOW in known else None


def header_refusal(values: list[str], evidence: Evidence) -> Refusal | None:
    """The response's `Content-Usage` header(s); repeated fields are one Dictionary, joined by commas."""
    preference = training_preference(", ".join(values)) if values else None
    evidence["content_usage_header"] = REFUSED if preference == DISALLOW else PASS if values else ABSENT
    if preference != DISALLOW:
        return None
    return AI_USAGE_REFUSED, f"the response says Content-Usage: {', '.join(values)[:200]}"


@dataclass(frozen=True)
class UsageRule:
    path: str
    pattern: PathPattern
    preference: str | None


@dataclass(frozen=True)
class RobotsUsage:
    """The Content-Usage rules of a robots.txt, per group (its user agents, lower case, and its rules)."""

    groups: tuple[tuple[frozenset[str], tuple[UsageRule, ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> RobotsUsage:
        groups: list[tuple[set[str], list[UsageRule]]] = []
        previous_agent = False
        for line in text.splitlines():
            key, colon, value = line.split("#", 1)[0].partition(":")
            key, value = key.strip().lower(), value.strip()
            if not colon:
                continue
            if key == "user-agent":
                if not previous_agent:
                    groups.append((set(), []))
                groups[-1][0].add(value.lower())
            elif key == "content-usage" and groups:
                path, _, expression = value.replace("\t", " ").partition(" ")
                if path.startswith("/"):
                    preference = training_preference(expression.strip())
                    groups[-1][1].append(UsageRule(path, PathPattern.parse(path), preference))
            previous_agent = key == "user-agent"
        return cls(tuple((frozenset(agents), tuple(rules)) for agents, rules in groups))

    def rules_for(self, token: str) -> list[UsageRule]:
        """RFC 9309 2.2.1: the groups naming our token, combined; none: the `*` groups."""
        ours = [rules for agents, rules in self.groups if token in agents]
        chosen = ours or [rules for agents, rules in self.groups if "*" in agents]
        return [rule for rules in chosen for rule in rules]

    def refusal(self, url: str, token: str, evidence: Evidence) -> Refusal | None:
        path = decode_unreserved(path_and_query(url))
        covering = [rule for rule in self.rules_for(token) if rule.pattern.matches(path)]
        if not covering:
            evidence["content_usage_robots"] = ABSENT
            return None
        longest = max(len(rule.path) for rule in covering)
        deciding = [rule for rule in covering if len(rule.path) == longest]
        refused = combine(rule.preference for rule in deciding) == DISALLOW
        evidence["content_usage_robots"] = REFUSED if refused else PASS
        if not refused:
            return None
        return AI_USAGE_REFUSED, f"robots.txt says Content-Usage: {deciding[0].path} ... train-ai=n for {path[:200]}"
