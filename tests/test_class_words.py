"""Class words on real caption strings (BLIP-style), and their positions in SDXL's CLIP tokenization."""

from __future__ import annotations

import pytest

from stages import class_words as cw
from stages.clip_tokens import MAX_LENGTH, clip_tokenizer, token_positions


@pytest.mark.parametrize(
    ("caption", "word"),
    [
        ("a picture of a man in a suit and tie", "man"),
        ("a picture of a Woman with long hair", "woman"),
        ("A MAN standing in front of a wall", "man"),
        ("a picture of a young guy wearing a hat", "man"),
        ("a picture of a lady in a red dress", "woman"),
        ("a picture of a little girl smiling", "girl"),
        ("a picture of a boy on a skateboard", "boy"),
        ("a close up of a woman's face with blue eyes", "woman"),  # possessive: still the person
        ("a picture of a child in a field", "person"),
        ("a picture of a manager at his desk", None),  # contains "man", is not it
        ("a picture of a womanizer poster", None),
        ("a snowman in front of a man-made lake", None),  # compound and hyphenated words
        ("a picture of a spider-man costume", None),
        ("a picture of two men in suits", None),  # plurals are not class words
        ("a picture of a red car parked on the street", None),
        ("", None),
    ],
)
def test_first_class_word(caption: str, word: str | None) -> None:
    assert cw.first_class_word(caption) == word


@pytest.mark.parametrize(
    ("caption", "many"),
    [
        ("a picture of a man in a suit and tie", False),
        ("a picture of a woman and her dog", False),
        ("a close up of a woman's face", False),
        ("a picture of a man and a woman posing", True),
        ("a picture of two men in suits", True),
        ("a group of people standing on a stage", True),
        ("a picture of a man with his wife at a party", True),
        ("a picture of a man holding a baby", True),
        ("a couple posing for a picture", True),
        ("a picture of a man with a couple of cups", False),  # "a couple of" means a few
        ("a crowd watching a concert", True),
    ],
)
def test_many_people(caption: str, many: bool) -> None:
    assert cw.many_people(caption) is many


def test_find_returns_the_span_of_the_wanted_word_only() -> None:
    caption = "a man and a woman sitting on a bench"
    mention = cw.find(caption, "woman")
    assert mention is not None and caption[mention.start : mention.end] == "woman"
    assert cw.find(caption, "girl") is None


@pytest.mark.parametrize(
    ("votes", "fallback", "expected"),
    [
        (["man", "man", "woman", None], [], "man"),
        (["woman", "person", "person", "person"], [], "woman"),  # gendered words outvote "person"
        (["man", "woman"], ["woman", "woman", "man"], "woman"),  # a tie: the gender model decides
        (["man", "woman"], [], "person"),  # a tie nothing breaks
        ([None, "person"], ["girl", "girl", None], "girl"),  # captions without a gendered word
        ([None, None], [None], "person"),
        ([], [], "person"),
    ],
)
def test_majority(votes: list, fallback: list, expected: str) -> None:
    assert cw.majority(votes, fallback) == expected


@pytest.mark.parametrize(
    ("caption", "word", "expected"),
    [
        ("a picture of a person in a suit", "man", "a picture of a man in a suit"),
        ("a picture of an individual in a suit", "woman", "a picture of a woman in a suit"),  # an -> a
        ("A woman with a hat", "man", "A man with a hat"),  # first letter's case kept
        ("a picture of a guy and a dog", "man", "a picture of a man and a dog"),  # synonym -> canonical
        ("a picture of a red car", "woman", "a photo of a woman, a picture of a red car"),
        ("a picture of two men in suits", "man", "a photo of a man, a picture of two men in suits"),
        ("", "girl", "a photo of a girl"),
    ],
)
def test_rewrite_puts_the_class_word_in(caption: str, word: str, expected: str) -> None:
    text, (start, end) = cw.rewrite(caption, word)
    assert text == expected
    assert text[start:end].lower() == word
    assert cw.find(text, word) is not None


CAPTIONS = [
    ("a picture of a man in a suit and tie", "man"),
    ("A Woman's face, smiling at the camera", "woman"),
    ("a photo of a woman, a picture of a red car parked on the street", "woman"),
    ("a picture of a little girl with   curly hair", "girl"),
    ("café scene: a boy naïvely waving — blurry", "boy"),
    ("a picture of a person wearing sunglasses and a black t-shirt", "person"),
    ("a picture of a man-made lake and a man fishing", "man"),
]


@pytest.mark.parametrize(("caption", "word"), CAPTIONS)
def test_token_positions_match_the_tokenizers_own_output(caption: str, word: str) -> None:
    mention = cw.find(caption, word)
    assert mention is not None
    positions = token_positions(caption, (mention.start, mention.end))
    tokenizer = clip_tokenizer()
    ids = tokenizer(caption)["input_ids"]
    before = tokenizer(caption[: mention.start])["input_ids"][:-1]  # start token and the words before, no end token
    assert positions == [len(before)] and positions[0] < MAX_LENGTH - 1
    assert ids[: len(before)] == before
    # every canonical class word is one CLIP token
    assert ids[positions[0]] == tokenizer.convert_tokens_to_ids(f"{word}</w>")


@pytest.mark.slow  # imports open_clip (torch, timm): ~5 s
def test_tokenizer_matches_open_clip_and_trigger_word_follows_the_class_word() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    for caption, word in CAPTIONS:
        ids = clip_tokenizer()(caption)["input_ids"]
        assert ids == [reference.sot_token_id, *reference.encode(caption), reference.eot_token_id]
        mention = cw.find(caption, word)
        (position,) = token_positions(caption, (mention.start, mention.end))
        # PhotoMaker writes its trigger word after the class word: it lands at position + 1
        with_trigger = caption[: mention.end] + " img" + caption[mention.end :]
        assert reference.encode(with_trigger)[position] == reference.encode("img")[0]
