"""Typed configs: profiles, overrides, errors naming the full key, stage fingerprints."""

from __future__ import annotations

import re

import pytest

from pipeline.core.config import CONFIG_DIR, PipelineConfig, load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.engine.registry import check_backends


@pytest.mark.parametrize("profile", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_validates(profile) -> None:
    assert isinstance(load_config(profile), PipelineConfig)


@pytest.mark.parametrize("profile", ["cpu", "gpu", "cluster"])
def test_web_crawl_profiles_keep_the_papers_values(profile: str) -> None:
    config = load_config(resolve_profile(profile))
    assert (config.filter.min_short_side, config.filter.min_face_size) == (512, 256)
    assert config.crawl.allow_private_addresses is False


def test_the_default_profile_is_the_example_that_runs_anywhere() -> None:
    config = load_config(resolve_profile(None))
    assert (config.crawl.source, config.face.backend, config.segment.backend) == ("local", "sface", "modnet")
    assert config.crawl.local_root is not None and config.crawl.local_root.is_dir()


def test_overrides_are_typed_and_nested() -> None:
    config = load_config(
        resolve_profile("cpu"),
        ["filter.min_short_side=256", "crawl.allow_private_addresses=true", "filter.resources.concurrency=3"],
    )
    assert config.filter.min_short_side == 256
    assert config.crawl.allow_private_addresses is True
    assert config.filter.resources.concurrency == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("filter.min_short_sid=3", "unknown config key 'filter.min_short_sid'"),
        ("filter.resources.concurency=3", "unknown config key 'filter.resources.concurency'"),
        ("nonsense.key=1", "unknown config key 'nonsense'"),
        ("filter.min_short_side=abc", "bad value for 'filter.min_short_side'"),
        ("filter.min_short_side", "bad --set"),
        ("filter=3", "bad --set"),
    ],
)
def test_mistakes_name_the_full_key(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_config(resolve_profile("cpu"), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("crawl.source=altavista", "unknown crawl.source 'altavista' (choose one of: baidu, bing, "),
        ("face.backend=facenet", "unknown face.backend 'facenet' (choose one of: dlib, insightface"),
        ("segment.backend=rembg", "unknown segment.backend 'rembg'"),
        ("caption.backend=llava", "unknown caption.backend 'llava' (choose one of: blip, smolvlm, template)"),
        ("caption.gender_model=deepface", "unknown caption.gender_model 'deepface'"),
    ],
)
def test_backend_names_are_checked_against_their_registries(override: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        check_backends(load_config(resolve_profile("cpu"), [override]))


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as error:
        load_config(resolve_profile("cpu"), ["filter.min_short_sid=3"])
    assert "min_short_side" in error.value.fix


def test_unknown_profile_lists_the_shipped_ones() -> None:
    with pytest.raises(UserError, match="config file not found") as error:
        resolve_profile("nope")
    assert "cpu" in error.value.fix


def test_invalid_yaml_is_a_user_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("filter: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_fingerprint_follows_the_stage_sections_but_not_resources() -> None:
    base = load_config(resolve_profile("cpu"))
    stricter = load_config(resolve_profile("cpu"), ["filter.min_short_side=1024"])
    busier = load_config(resolve_profile("cpu"), ["filter.resources.concurrency=8"])
    assert base.fingerprint(("filter",), 1) != stricter.fingerprint(("filter",), 1)
    assert base.fingerprint(("crawl",), 1) == stricter.fingerprint(("crawl",), 1)
    assert base.fingerprint(("filter",), 1) == busier.fingerprint(("filter",), 1)
    assert base.fingerprint(("filter",), 1) != base.fingerprint(("filter",), 2)


def test_download_politeness_is_not_part_of_the_crawl_fingerprint() -> None:
    base = load_config(resolve_profile("cpu"))
    polite = load_config(resolve_profile("cpu"), ["crawl.download.user_agent=me", "crawl.download.retries=5"])
    assert base.fingerprint(("crawl",), 1) == polite.fingerprint(("crawl",), 1)


def test_invalid_yaml_in_set_is_a_user_error() -> None:
    with pytest.raises(UserError, match="bad --set 'run.names=@foo': not a YAML value"):
        load_config(resolve_profile("cpu"), ["run.names=@foo"])


@pytest.mark.parametrize("out", ["runs/trial #1", "@foo", "null", "2024-01-01", "~"])
def test_typed_values_are_taken_as_given_not_as_yaml(out: str) -> None:
    """The CLI's paths: `--out "runs/trial #1"` is not `runs/trial`, `--out null` not the default."""
    config = load_config(resolve_profile("cpu"), [], {"run.out": out, "run.names": out})
    assert config.run.out == out and str(config.run.names) == out


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
filter: {min_short_side: *g}
"""


def test_yaml_aliases_are_refused_in_a_short_error(tmp_path) -> None:
    """A "billion laughs" profile: one short error, not a message that quotes the expanded input."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    with pytest.raises(UserError, match=r"aliases \(\*name\) are not allowed") as error:
        load_config(bomb)
    assert len(str(error.value)) < 500


def test_aliases_are_refused_in_set_values_too() -> None:
    with pytest.raises(UserError, match="not a YAML value"):
        load_config(resolve_profile("cpu"), ["filter.min_short_side=*a"])


def test_a_bad_value_quotes_at_most_a_short_excerpt_of_it(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("filter:\n  min_short_side: [" + ", ".join(["1"] * 100_000) + "]\n")
    with pytest.raises(UserError, match="bad value for 'filter.min_short_side'") as error:
        load_config(big)
    assert len(str(error.value)) < 500


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00bad"], ids=["a folder", "not utf-8"])
def test_an_unreadable_config_file_is_a_user_error(tmp_path, content: bytes | None) -> None:
    path = tmp_path / "profile.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(UserError, match="cannot read config"):
        load_config(path)
