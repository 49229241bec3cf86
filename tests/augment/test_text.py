"""Tests for EDA text augmentation (fedaug.augment.text) on real SMS texts and WordNet."""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from fedaug.augment import text as eda
from fedaug.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NLTK_DIR = DATA / "nltk_data"
SMS_FILE = DATA / "sms_spam" / "SMSSpamCollection"

OPS = [eda.synonym_replace, eda.random_insert, eda.random_swap, eda.random_delete]


def split(text: str) -> tuple[list[str], list[str]]:
    """Return (separators, tokens) with text == seps[0] + tokens[0] + seps[1] + ..."""
    seps, words = eda.split_tokens(text)
    assert len(seps) == len(words) + 1
    assert "".join(s + w for s, w in zip(seps, [*words, ""], strict=True)) == text
    return seps, words


@pytest.fixture(scope="module")
def wordnet():
    """Point NLTK at the offline WordNet beside the repository."""
    if not (NLTK_DIR / "corpora" / "wordnet.zip").is_file():
        pytest.skip(f"WordNet data missing: expected {NLTK_DIR}/corpora/wordnet.zip")
    import nltk

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLTK_DATA", str(NLTK_DIR))
        mp.setattr(nltk.data, "path", [str(NLTK_DIR), *nltk.data.path])
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()  # the first load takes seconds; charge it to the fixture
        yield wn


@pytest.fixture(scope="module")
def sms() -> list[str]:
    """The first 200 real SMS texts."""
    if not SMS_FILE.is_file():
        pytest.skip(f"SMS Spam Collection missing: expected {SMS_FILE}")
    with SMS_FILE.open(encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(200)]
    return [line.rstrip("\n").split("\t", 1)[1] for line in lines]


# Written independently of the module's tokenizer: units that must stay whole, and every
# maximal run of digits with the marks between them.
UNIT = re.compile(
    r"(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]"  # URLs and web addresses
    r"|[£$€]\d+(?:[.,]\d+)*"  # amounts: £50, £1.50, £100,000
    r"|\d+(?:[.,:]\d+)+"  # decimals, thousands, times: 1.5, 3,000, 10:30
)
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


@pytest.fixture(scope="module")
def sms_with_units() -> list[str]:
    """The real SMS texts with at least two numbers, amounts or URLs (108 texts)."""
    if not SMS_FILE.is_file():
        pytest.skip(f"SMS Spam Collection missing: expected {SMS_FILE}")
    with SMS_FILE.open(encoding="utf-8") as fh:
        texts = [line.rstrip("\n").split("\t", 1)[1] for line in fh]
    return [t for t in texts if len(UNIT.findall(t)) >= 2]


@pytest.fixture(scope="module")
def long_text(sms: list[str]) -> str:
    return max(sms, key=len)


def eligible(word: str) -> bool:
    return (
        len(word) > 1 and word.isascii() and word.isalpha() and word.lower() not in eda.STOP_WORDS
    )


def same_case(original: str, new: str) -> bool:
    if len(original) > 1 and original.isupper():
        return new.isupper()
    if original[0].isupper():
        return new[0].isupper() and new[1:] == new[1:].lower()
    return new.islower()


def align(wn, original: str, augmented: str) -> list[tuple[str, str]] | None:
    """Match each original word to itself or a valid synonym (a run of spaced words).

    Returns the (original word, new text) pairs, or None when no alignment exists, e.g.
    because a separator changed, a stop word changed or a word is not a synonym.
    """
    o_seps, o_words = split(original)
    a_seps, a_words = split(augmented)

    @functools.cache
    def lemmas(word: str) -> frozenset[str]:
        return frozenset(n.lower() for s in wn.synsets(word) for n in s.lemma_names())

    def allowed(word: str, chunk: str) -> bool:
        if chunk == word:
            return True
        return (
            eligible(word)
            and chunk.lower() != word.lower()
            and chunk.lower().replace(" ", "_") in lemmas(word.lower())
            and same_case(word, chunk)
        )

    @functools.cache
    def solve(j: int, a: int):
        if j == len(o_words):
            return () if a == len(a_words) and a_seps[a] == o_seps[j] else None
        if a_seps[a] != o_seps[j]:
            return None
        for end in range(a + 1, len(a_words) + 1):
            if end > a + 1 and a_seps[end - 1] != " ":
                break
            chunk = " ".join(a_words[a:end])
            if allowed(o_words[j], chunk):
                rest = solve(j + 1, end)
                if rest is not None:
                    return ((o_words[j], chunk), *rest)
        return None

    result = solve(0, 0)
    return None if result is None else list(result)


def test_synonym_replace_swaps_in_wordnet_synonyms_only(wordnet, sms):
    # Prepare
    alpha = 0.2
    changed_total, grown = 0, 0

    for i, text in enumerate(sms):
        # Execute
        out = eda.synonym_replace(text, alpha=alpha, rng=random.Random(i))

        # Assert: every word is itself or a same-case synonym; separators untouched
        pairs = align(wordnet, text, out)
        assert pairs is not None, f"not a valid synonym replacement:\n{text!r}\n{out!r}"
        changed = [(w, c) for w, c in pairs if c != w]
        n_words = len(split(text)[1])
        assert len(changed) <= max(1, round(alpha * n_words))
        assert len(split(out)[1]) - n_words == sum(c.count(" ") for _, c in changed)
        changed_total += len(changed)
        grown += any(" " in c for _, c in changed)
    assert changed_total > 200  # about one word in five of 200 texts
    assert grown > 0  # some multi-word lemmas were used


def test_synonym_replace_keeps_case_and_leaves_stop_words_numbers_symbols(wordnet):
    # Prepare
    text = "The HAPPY dog and 3 Cats ran to the house at 10pm, didn't they? u2 c"

    # Execute
    out = eda.synonym_replace(text, alpha=1.0, rng=random.Random(7))

    # Assert
    pairs = align(wordnet, text, out)
    assert pairs is not None, out
    changed = {w: c for w, c in pairs if c != w}
    assert set(changed) == {"HAPPY", "dog", "Cats", "ran", "house"}
    assert changed["HAPPY"].isupper()
    assert changed["Cats"][0].isupper() and changed["Cats"][1:].islower()
    assert changed["dog"].islower()


def test_synonym_replace_changes_exactly_n_words_when_possible(wordnet):
    # Prepare: six words, all with synonyms -> n = round(0.5 * 6) = 3
    text = "happy dog runs quickly home today"

    # Execute
    outs = [eda.synonym_replace(text, alpha=0.5, rng=random.Random(s)) for s in range(5)]

    # Assert
    for out in outs:
        pairs = align(wordnet, text, out)
        assert pairs is not None, out
        assert sum(c != w for w, c in pairs) == 3


def test_known_answer_does_not_depend_on_set_order(wordnet):
    # Prepare: candidates are sorted, so the output is the same under any hash seed
    text = "The quick dog runs home to get good food"

    # Execute
    replaced = eda.synonym_replace(text, alpha=1.0, rng=random.Random(0))
    inserted = eda.random_insert(text, alpha=0.5, rng=random.Random(0))

    # Assert (WordNet 3.0)
    assert replaced == "The prompt go after pass place to pose in force intellectual nourishment"
    assert inserted == (
        "The quick dog runs internal home to solid food get interior nimble good food"
    )


def test_random_insert_adds_synonyms_and_keeps_original_words(wordnet, sms):
    for i, text in enumerate(sms[:100]):
        # Execute
        out = eda.random_insert(text, alpha=0.2, rng=random.Random(i))

        # Assert: original words are a subsequence; each insertion adds >= 1 word
        words, new_words = split(text)[1], split(out)[1]
        it = iter(new_words)
        assert all(w in it for w in words), f"{text!r} -> {out!r}"
        if any(eligible(w) and wordnet.synsets(w.lower()) for w in words):
            assert len(new_words) >= len(words) + max(1, round(0.2 * len(words)))
        else:
            assert out == text


def test_random_swap_moves_words_and_keeps_separators(sms):
    for i, text in enumerate(sms):
        # Execute
        out = eda.random_swap(text, alpha=0.3, rng=random.Random(i))

        # Assert
        seps, words = split(text)
        out_seps, out_words = split(out)
        assert out_seps == seps
        assert sorted(out_words) == sorted(words)


def test_random_delete_never_empties(sms):
    for i, text in enumerate(sms):
        # Execute
        out_all = eda.random_delete(text, alpha=1.0, rng=random.Random(i))
        out_half = eda.random_delete(text, alpha=0.5, rng=random.Random(i))

        # Assert
        words = split(text)[1]
        kept = split(out_all)[1]
        assert len(kept) == min(1, len(words)) and set(kept) <= set(words)
        it = iter(words)
        assert all(w in it for w in split(out_half)[1])
        assert out_half.strip()


def test_random_delete_keeps_separators_tidy():
    # Prepare / Execute: alpha=1 keeps exactly one word
    outs = {
        eda.random_delete("Hi, how are you?", alpha=1.0, rng=random.Random(s)) for s in range(20)
    }

    # Assert: no leading space or doubled punctuation, the final "?" stays
    assert outs <= {"Hi?", "how?", "are?", "you?"}
    assert len(outs) > 1


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_each_op_changes_a_long_text(wordnet, long_text, op):
    # Execute
    out = op(long_text, alpha=0.2, rng=random.Random(0))

    # Assert
    assert out != long_text
    assert out.strip()


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_each_op_is_deterministic_for_a_seed(wordnet, sms, op):
    # Execute
    first = [op(t, alpha=0.2, rng=random.Random(42)) for t in sms[:50]]
    again = [op(t, alpha=0.2, rng=random.Random(42)) for t in sms[:50]]
    other = [op(t, alpha=0.2, rng=random.Random(43)) for t in sms[:50]]

    # Assert
    assert first == again
    assert first != other


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("text", ["", "  ...!! ", "42"])
def test_text_without_eligible_words_is_returned_unchanged(wordnet, op, text):
    assert op(text, alpha=0.5, rng=random.Random(0)) == text


def test_missing_wordnet_gives_install_hint(wordnet, tmp_path, monkeypatch):
    # Prepare: NLTK searches only an empty folder
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])

    # Execute / Assert
    assert not eda.wordnet_available()
    with pytest.raises(DataError, match=r"python -m nltk\.downloader wordnet"):
        eda.require_wordnet()
    with pytest.raises(DataError, match=r"NLTK_DATA .*corpora/wordnet\.zip"):
        eda.synonym_replace("happy dog", alpha=0.5, rng=random.Random(0))
    with pytest.raises(DataError, match="WordNet data for NLTK was not found"):
        eda.random_insert("happy dog", alpha=0.5, rng=random.Random(0))
    # swap and delete need no WordNet
    assert eda.random_swap("happy dog", alpha=0.5, rng=random.Random(0)) == "dog happy"
    assert eda.random_delete("happy dog", alpha=0.5, rng=random.Random(0))


def test_wordnet_available_with_offline_data(wordnet):
    assert eda.wordnet_available()
    eda.require_wordnet()


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("alpha", [0, -0.1, 1.5, math.nan, math.inf, True, "0.1", None])
def test_alpha_outside_unit_interval_is_rejected(op, alpha):
    with pytest.raises(ConfigError, match=r"alpha .*\(0, 1\].* Got: " + re.escape(repr(alpha))):
        op("happy dog", alpha=alpha, rng=random.Random(0))


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_bad_rng_and_text_are_rejected(op):
    with pytest.raises(ConfigError, match=r"rng must be a random\.Random"):
        op("happy dog", alpha=0.5, rng=random)
    with pytest.raises(DataError, match="needs a str.*bytes"):
        op(b"happy dog", alpha=0.5, rng=random.Random(0))


def test_split_tokens_keeps_numbers_currency_and_urls_whole():
    # Execute
    seps, tokens = eda.split_tokens(
        "Win £50 or 1.5 GB, for 3,000 users at 10:30: http://x.org/a, www.x.com! "
        "Call 0800 169 6031 (50% off) or visit getzed.co.uk."
    )

    # Assert
    assert {"£50", "1.5", "3,000", "10:30", "http://x.org/a", "www.x.com", "0800 169 6031",
            "50%", "getzed.co.uk"} <= set(tokens)
    assert seps[-1] == "." and all(seps[1:-1])


@pytest.mark.parametrize("op", [eda.random_swap, eda.random_insert, eda.random_delete],
                         ids=lambda f: f.__name__)
def test_numbers_currency_and_urls_are_never_split_or_entered(wordnet, sms_with_units, op):
    # Prepare
    assert len(sms_with_units) > 100

    for i, text in enumerate(sms_with_units):
        for seed in range(3):
            # Execute
            out = op(text, alpha=0.5, rng=random.Random(1000 * i + seed))

            # Assert: units move or vanish whole; no fragment of one appears
            units = UNIT.findall(text)
            numbers, out_numbers = Counter(NUMBER.findall(text)), Counter(NUMBER.findall(out))
            if op is eda.random_delete:
                assert out_numbers <= numbers, (text, out)
                assert len(re.findall(r"[£$€](?!\d)", out)) <= len(
                    re.findall(r"[£$€](?!\d)", text)), (text, out)
                for start in re.finditer(r"https?://|www\.", out):
                    assert any(out.startswith(u, start.start()) for u in units), (text, out)
            else:
                assert all(out.count(u) >= text.count(u) for u in units), (text, out)
                assert out_numbers == numbers, (text, out)


def test_policy_needs_wordnet_when_a_synonym_op_can_be_drawn():
    # Prepare
    from fedaug.augment import Policy

    def policy(**extra):
        ops = [{"op": "random_swap", "p": 1.0, "alpha": 0.1}, *extra.pop("ops", [])]
        return Policy.from_dict({"schema_version": 1, "modality": "text", "ops": ops, **extra})

    # Execute / Assert
    assert eda.policy_needs_wordnet(Policy.default("text"))
    assert eda.policy_needs_wordnet(policy(ops=[{"op": "random_insert", "p": 0.01, "alpha": 0.1}]))
    assert not eda.policy_needs_wordnet(policy())
    assert not eda.policy_needs_wordnet(
        policy(ops=[{"op": "synonym_replace", "p": 0.0, "alpha": 0.1}]))
    assert eda.policy_needs_wordnet(
        policy(ops=[{"op": "synonym_replace", "p": 0.0, "alpha": 0.1}],
               sampling={"kind": "randaugment", "num_ops": 1, "magnitude": 9}))
