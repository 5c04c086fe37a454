"""Identity slugs, names files, name keys in every Unicode form, and finding an identity by any of its names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import UserError
from pipeline.core.names import Identity, IdentityIndex, identity_slug, name_key, read_names
from pipeline.core.optout import OptOutList

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


ZOE_NFC, ZOE_NFD = "Zo\u00eb Test", "Zoe\u0308 Test"  # one name: ë as one code point, or e + combining diaeresis


def test_a_name_in_nfd_and_in_nfc_is_one_identity_with_the_nfc_slug(tmp_path) -> None:
    path = tmp_path / "names.txt"
    path.write_text(f"{ZOE_NFD}\n{ZOE_NFC}\n", encoding="utf-8")
    assert read_names(path) == [Identity(identity_slug(ZOE_NFC), ZOE_NFC)]
    assert name_key(ZOE_NFD) == name_key(ZOE_NFC.upper())


def test_a_byte_order_mark_and_invisible_characters_are_no_name(tmp_path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("Angelina Jolie\n\u200b\n\u200bMatt\u200b Damon\u2060\nfa\u200cride\n", encoding="utf-8-sig")
    assert [identity.name for identity in read_names(path)] == ["Angelina Jolie", "Matt Damon", "fa\u200cride"]


def test_an_optout_name_in_one_form_covers_the_name_in_another(tmp_path) -> None:
    path = tmp_path / "optout.txt"
    path.write_text(f"# opt-outs\nname:{ZOE_NFC}\u200b\n\u200b\nurl:local:Matt Damon/\n", encoding="utf-8-sig")
    optout = OptOutList.read([path], 8)
    assert optout.name_listed(ZOE_NFD) and optout.name_listed("zoë  test") and not optout.name_listed("Zoe Test")
    assert optout.url_listed("local:Matt Damon/2019/a.jpg") and not optout.url_listed("local:Matt Damon2/a.jpg")


PEOPLE = [Identity(identity_slug(name), name) for name in ("Angelina Jolie", "John Smith", "john smith", ZOE_NFD)]


@pytest.mark.parametrize(("given", "slug"), [
    ("angelina_jolie", identity_slug("Angelina Jolie")),  # the readable slug
    (identity_slug("Angelina Jolie"), identity_slug("Angelina Jolie")),
    ("  angelina   JOLIE ", identity_slug("Angelina Jolie")),
    ("John Smith", identity_slug("John Smith")),  # the exact name wins over the other spelling
    ("john smith", identity_slug("john smith")),
    (ZOE_NFC, identity_slug(ZOE_NFD)),  # a run.json from before names were normalised holds the NFD name
    ("ZOË TEST", identity_slug(ZOE_NFD)),
])
def test_an_identity_is_found_by_its_name_slug_or_readable_slug(given: str, slug: str) -> None:
    assert IdentityIndex(PEOPLE).resolve(given).slug == slug


def test_a_typed_name_finds_the_identity_listed_by_its_slug() -> None:
    listed = Identity("mark_zuckerberg", "mark_zuckerberg")  # a names list written in slugs
    assert IdentityIndex([*PEOPLE, listed]).resolve("Mark Zuckerberg") == listed


def test_an_ambiguous_or_unknown_identity_names_the_candidates() -> None:
    index = IdentityIndex(PEOPLE)
    with pytest.raises(UserError, match=r"'JOHN SMITH' names 2 identities: 'John Smith' \(john_smith-\w+\), 'john"):
        index.resolve("JOHN SMITH")
    with pytest.raises(UserError, match="names 2 identities"):
        index.resolve("john_smith")
    with pytest.raises(UserError, match=r"no identity 'Angelina Jolei' among the run's 4 identities; close: 'Angel"):
        index.resolve("Angelina Jolei")
