"""Identity slugs and names files."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import UserError
from pipeline.core.names import identity_slug, read_names

SAFE = re.compile(r"[a-z0-9_-]{1,80}")


@given(st.text(min_size=1, max_size=400))
@settings(max_examples=300)
def test_slug_is_a_safe_bounded_path_component(name: str) -> None:
    slug = identity_slug(name)
    assert SAFE.fullmatch(slug), slug
    assert slug not in (".", "..")


@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=30, unique=True))
def test_distinct_names_never_share_a_slug(names: list[str]) -> None:
    assert len({identity_slug(name) for name in names}) == len(names)


@pytest.mark.parametrize(
    ("name", "readable"),
    [
        ("angelina_jolie", "angelina_jolie"),
        ("Angelina Jolie", "angelina_jolie-"),
        ("Zoë Saldaña", "zoe_saldana-"),
        ("Björk Guðmundsdóttir", "bjork_gudmundsdottir-"),
        ("محمد صلاح", "mhmd_slh-"),
        ("周杰伦", "zhou_jie_lun-"),
        ("../../etc", "etc-"),
        ("a/b", "a_b-"),
        ("😀", "id-"),
    ],
)
def test_slug_stays_recognisable(name: str, readable: str) -> None:
    assert identity_slug(name).startswith(readable)


def test_names_that_differ_only_in_case_get_two_slugs() -> None:
    assert identity_slug("John Smith") != identity_slug("john smith")


def test_long_names_are_bounded() -> None:
    assert len(identity_slug("x" * 300)) <= 80


def test_names_file_skips_blanks_comments_duplicates_and_spaces(tmp_path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("# header\n\n  Angelina   Jolie  \nMatt Damon # actor\nAngelina Jolie\n\t\nmatt damon\n")
    names = [identity.name for identity in read_names(path)]
    assert names == ["Angelina Jolie", "Matt Damon", "matt damon"]


def test_missing_or_empty_names_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_names(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no names"):
        read_names(tmp_path / "empty.txt")
