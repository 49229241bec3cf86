"""EDA text augmentation (Wei & Zou 2019): synonym replacement, insertion, swap, deletion.

Text is split into tokens and the separators between them (spaces, punctuation); the
operations change tokens only, so every untouched part of the text stays byte-identical.
A token is a word, or a unit that must stay whole: a number with its currency sign,
decimal point, thousands separators or unit (``£50``, ``1.5``, ``3,000``, ``10pm``,
``50%``), a phone number (``0800 169 6031``), a URL, web address or e-mail address
(``http://x.org/a``, ``www.x.com``, ``getzed.co.uk``) or an HTML entity (``&lt;#&gt;``).
Such units move or vanish as a whole: they are never swapped internally, split, or
given a word inside them. Synonyms come from Princeton WordNet through NLTK
(``nltk.corpus.wordnet``), which is imported lazily so that importing this module stays
cheap.
"""

from __future__ import annotations

import functools
import math
import random
import re
from numbers import Real

from fedaug.errors import ConfigError, DataError

__all__ = [
    "STOP_WORDS",
    "WORDNET_OPS",
    "policy_needs_wordnet",
    "random_delete",
    "random_insert",
    "random_swap",
    "require_wordnet",
    "require_wordnet_for",
    "split_tokens",
    "synonym_replace",
    "wordnet_available",
]

_STOP_WORDS_TEXT = """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what
    which who whom this that these those am is are was were be been being have has had
    having do does did doing a an the and but if or because as until while of at by for
    with about against between into through during before after above below to from up
    down in out on off over under again further then once here there when where why how
    all any both each few more most other some such no nor not only own same so than too
    very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn
    hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
"""
#: English stop words never replaced by a synonym (the list used by the EDA reference
#: code, i.e. NLTK's English list, fixed here so that no stopwords corpus is needed).
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())

#: EDA ops that draw WordNet synonyms.
WORDNET_OPS = frozenset({"synonym_replace", "random_insert"})

_URL_END = r"[^\s<>\"'.,;:!?)\]}]"  # a URL does not end in punctuation: "see www.x.com."
_TLDS = "com|net|org|edu|gov|info|biz|mobi|tv|uk|io|eu"
_TOKEN_PATTERNS = (
    # URLs and web addresses: "http://x.org/a", "www.x.com/b?n=1"
    rf"(?i:(?:(?<![\w+.-])[a-z][a-z0-9+.-]*://|(?<![^\W_])www\.)(?:[^\s<>\"']*{_URL_END})?)",
    # e-mail addresses
    r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    # bare domains with a common top-level domain: "getzed.co.uk", "x.org/a"
    rf"(?<![\w.-])(?i:(?:[^\W_][\w-]*\.)+(?:{_TLDS})(?![\w-])(?:/(?:[^\s<>\"']*{_URL_END})?)?)",
    # (the look-behinds start those three only where a run of word characters starts,
    # so that a long run is scanned once, not once per character)
    # HTML entities, and the SMS corpus's number placeholder "&lt;#&gt;"
    r"&lt;#&gt;|&#\d+;|&[A-Za-z]+;",
    # phone numbers in digit groups: "0800 169 6031", "+44 20 7946"
    r"(?:\+|0)\d{2,}(?: \d{2,}(?![^\W_]))+",
    # a word: letters/digits with inner apostrophes ("don't"), and between digits a
    # decimal point, thousands separator, time or date mark ("1.5", "3,000", "10:30",
    # "0871-872-9755"); a currency sign before a digit and a % after one stay attached
    r"(?:[£$€¥](?=\d))?[^\W_]+(?:(?:['\u2019]|(?<=\d)[.,:/-](?=\d))[^\W_]+)*(?:(?<=\d)%)?",
)
_TOKEN = re.compile("|".join(f"(?:{p})" for p in _TOKEN_PATTERNS))
# Lemmas kept as synonyms: letters and single spaces only (after "_" -> " ").
_CLEAN_LEMMA = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
# Search paths (nltk.data.path) on which WordNet was found; failures are not cached.
_FOUND_ON: set[tuple[str, ...]] = set()
_INSTALL_HINT = (
    "Run `python -m nltk.downloader wordnet`, or set NLTK_DATA to a folder holding "
    "corpora/wordnet.zip (offline copy: ../shared/data/nltk_data)."
)


def wordnet_available() -> bool:
    """Tell whether NLTK can find the WordNet corpus.

    Returns
    -------
    bool
        True when ``corpora/wordnet`` (folder or ``.zip``) is on ``nltk.data.path``.
    """
    import nltk

    paths = tuple(nltk.data.path)
    if paths in _FOUND_ON:  # nltk.data.find costs ~2 ms; skip it once it succeeded
        return True
    try:
        nltk.data.find("corpora/wordnet/")
    except LookupError:
        return False
    _FOUND_ON.add(paths)
    return True


def require_wordnet() -> None:
    """Raise a `DataError` with install instructions when WordNet is missing.

    Raises
    ------
    DataError
        If NLTK cannot find ``corpora/wordnet`` on any of its search paths.
    """
    if not wordnet_available():
        import nltk

        raise DataError(
            "WordNet data for NLTK was not found; EDA synonym operations need it "
            "(searched nltk.data.path).",
            value=list(nltk.data.path),
            fix=_INSTALL_HINT,
        )


def policy_needs_wordnet(policy) -> bool:
    """Tell whether applying a text policy can draw an op that needs WordNet.

    Parameters
    ----------
    policy : fedaug.augment.Policy
        A text policy.

    Returns
    -------
    bool
        True when the policy holds ``synonym_replace`` or ``random_insert`` with
        ``p > 0``, or under op sampling (which may draw any of its ops).
    """
    sampled = getattr(policy, "sampling", None) is not None
    return any(
        getattr(op, "op", None) in WORDNET_OPS and (sampled or getattr(op, "p", 0) > 0)
        for op in policy.ops
    )


def require_wordnet_for(policy) -> None:
    """Raise the missing-WordNet `DataError` up front when ``policy`` can need WordNet.

    Checking before any text is augmented makes a run fail the same way whether or not
    the random draws happen to pick a synonym op (``--copies 1`` as ``--copies 4``).

    Raises
    ------
    DataError
        If :func:`policy_needs_wordnet` and NLTK cannot find WordNet.
    """
    if policy_needs_wordnet(policy):
        require_wordnet()


def synonym_replace(text: str, *, alpha: float, rng: random.Random) -> str:
    """Replace ``max(1, round(alpha * words))`` eligible words with a WordNet synonym.

    Eligible words are alphabetic, at least two letters long and not stop words;
    numbers and tokens mixing letters with digits or symbols are left alone. Each
    replacement keeps the case pattern of the word it replaces (lower, Title, UPPER);
    multi-word lemmas such as ``ice_cream`` become spaced words (``ice cream``). A word
    is never replaced by itself. Words without synonyms are skipped, so fewer words may
    change when the text has few eligible words.

    Parameters
    ----------
    text : str
        The text to augment.
    alpha : float
        Fraction of the words to replace, in (0, 1].
    rng : random.Random
        Source of all randomness; the same seed gives the same output.

    Returns
    -------
    str
        The augmented text; unchanged if no eligible word has a synonym.

    Raises
    ------
    ConfigError
        If ``alpha`` is not in (0, 1] or ``rng`` is not a ``random.Random``.
    DataError
        If ``text`` is not a string or WordNet data is missing.
    """
    _check_args(text, alpha, rng)
    require_wordnet()
    seps, words = split_tokens(text)
    target = _count(alpha, len(words))
    order = [i for i, word in enumerate(words) if _eligible(word)]
    rng.shuffle(order)
    replaced = 0
    for i in order:
        if replaced >= target:
            break
        candidates = _synonyms(words[i].lower())
        if candidates:
            words[i] = _match_case(rng.choice(candidates), words[i])
            replaced += 1
    return _join(seps, words)


def random_insert(text: str, *, alpha: float, rng: random.Random) -> str:
    """Insert ``max(1, round(alpha * words))`` synonyms of random eligible words.

    Each insertion picks an eligible word that has synonyms (see `synonym_replace`),
    one of its synonyms, and a random word position (start, between two words or after
    the last word), separated by one space. An inserted synonym is UPPER when its
    source word is UPPER and lower case otherwise.

    Parameters
    ----------
    text : str
        The text to augment.
    alpha : float
        Number of insertions as a fraction of the words, in (0, 1].
    rng : random.Random
        Source of all randomness; the same seed gives the same output.

    Returns
    -------
    str
        The augmented text; unchanged if no eligible word has a synonym.

    Raises
    ------
    ConfigError
        If ``alpha`` is not in (0, 1] or ``rng`` is not a ``random.Random``.
    DataError
        If ``text`` is not a string or WordNet data is missing.
    """
    _check_args(text, alpha, rng)
    require_wordnet()
    seps, words = split_tokens(text)
    target = _count(alpha, len(words))
    sources = [w for w in words if _eligible(w) and _synonyms(w.lower())]
    if not sources:
        return text
    for _ in range(target):
        source = rng.choice(sources)
        synonym = rng.choice(_synonyms(source.lower()))
        if len(source) > 1 and source.isupper():
            synonym = synonym.upper()
        position = rng.randint(0, len(words))
        # Put the new word right before words[position], or after the last word.
        seps.insert(position if position == len(words) else position + 1, " ")
        words.insert(position, synonym)
    return _join(seps, words)


def random_swap(text: str, *, alpha: float, rng: random.Random) -> str:
    """Swap two random words ``max(1, round(alpha * words))`` times.

    Separators and punctuation stay in place; only the words move.

    Parameters
    ----------
    text : str
        The text to augment.
    alpha : float
        Number of swaps as a fraction of the words, in (0, 1].
    rng : random.Random
        Source of all randomness; the same seed gives the same output.

    Returns
    -------
    str
        The augmented text; unchanged if it has fewer than two words.

    Raises
    ------
    ConfigError
        If ``alpha`` is not in (0, 1] or ``rng`` is not a ``random.Random``.
    DataError
        If ``text`` is not a string.
    """
    _check_args(text, alpha, rng)
    seps, words = split_tokens(text)
    if len(words) < 2:
        return text
    for _ in range(_count(alpha, len(words))):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return _join(seps, words)


def random_delete(text: str, *, alpha: float, rng: random.Random) -> str:
    """Delete each word with probability ``alpha``, always keeping at least one word.

    A deleted word takes the punctuation that follows it with it (as in the EDA
    reference code, where punctuation sticks to words), except punctuation that ends
    the text, which stays. If every word is drawn for deletion, one random word is kept.

    Parameters
    ----------
    text : str
        The text to augment.
    alpha : float
        Probability of deleting each word, in (0, 1].
    rng : random.Random
        Source of all randomness; the same seed gives the same output.

    Returns
    -------
    str
        The augmented text; unchanged if it has fewer than two words.

    Raises
    ------
    ConfigError
        If ``alpha`` is not in (0, 1] or ``rng`` is not a ``random.Random``.
    DataError
        If ``text`` is not a string.
    """
    _check_args(text, alpha, rng)
    seps, words = split_tokens(text)
    if len(words) < 2:
        return text
    keep = [rng.random() >= alpha for _ in words]
    if not any(keep):
        keep[rng.randrange(len(words))] = True
    last_kept = max(i for i, k in enumerate(keep) if k)
    out_seps: list[str] = []
    out_words: list[str] = []
    pending = seps[0]
    for i, word in enumerate(words):
        right = seps[i + 1]
        if keep[i]:
            out_seps.append(pending)
            out_words.append(word)
            pending = right
        # A deleted word leaves with the separator after it (if nothing was kept before
        # it, with that separator; if nothing is kept after it, see below).
    if last_kept < len(words) - 1:  # the tail was deleted: keep the text's ending
        ending = seps[-1]
        pending = ending if ending.strip() else pending.rstrip() + ending
    out_seps.append(pending)
    return _join(out_seps, out_words)


def _check_args(text: object, alpha: object, rng: object) -> None:
    if not isinstance(text, str):
        raise DataError(
            "EDA text augmentation needs a str.",
            value=type(text).__name__,
            fix="Pass the text as a Python str (decode bytes first).",
        )
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, Real)
        or not math.isfinite(alpha)
        or not 0 < alpha <= 1
    ):
        raise ConfigError(
            "EDA alpha must be a number in (0, 1].",
            value=alpha,
            fix="Use a fraction such as 0.1 (the EDA paper's default).",
        )
    if not isinstance(rng, random.Random):
        raise ConfigError(
            "EDA rng must be a random.Random.",
            value=type(rng).__name__,
            fix="Pass rng=random.Random(seed).",
        )


def split_tokens(text: str) -> tuple[list[str], list[str]]:
    """Split a text into separators and tokens (words and whole units, see the module).

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    seps, tokens : list of str
        ``text == seps[0] + tokens[0] + seps[1] + ... + tokens[-1] + seps[-1]``, with
        ``len(seps) == len(tokens) + 1``; separators between tokens are never empty
        (touching tokens, as in ``win£50``, form one token).
    """
    seps: list[str] = []
    words: list[str] = []
    start = 0
    for match in _TOKEN.finditer(text):
        if words and match.start() == start:  # "win£50": touching tokens are one unit
            words[-1] += match.group()
        else:
            seps.append(text[start : match.start()])
            words.append(match.group())
        start = match.end()
    seps.append(text[start:])
    return seps, words


def _join(seps: list[str], words: list[str]) -> str:
    parts = [seps[0]]
    for word, sep in zip(words, seps[1:], strict=True):
        parts += [word, sep]
    return "".join(parts)


def _count(alpha: float, n_words: int) -> int:
    return max(1, round(alpha * n_words))


def _eligible(word: str) -> bool:
    return len(word) > 1 and word.isascii() and word.isalpha() and (word.lower() not in STOP_WORDS)


def _match_case(synonym: str, original: str) -> str:
    if len(original) > 1 and original.isupper():
        return synonym.upper()
    if original[0].isupper():
        return synonym[:1].upper() + synonym[1:]
    return synonym


@functools.lru_cache(maxsize=65536)
def _synonyms(word: str) -> tuple[str, ...]:
    """Sorted lower-case WordNet synonyms of ``word`` (never ``word`` itself)."""
    from nltk.corpus import wordnet

    try:
        synsets = wordnet.synsets(word)
    except LookupError as err:  # data vanished after require_wordnet()
        raise DataError(
            "WordNet data for NLTK could not be read.",
            value=str(err),
            fix=_INSTALL_HINT,
        ) from err
    names = {
        lemma.replace("_", " ").lower() for synset in synsets for lemma in synset.lemma_names()
    }
    return tuple(sorted(n for n in names if n != word and _CLEAN_LEMMA.fullmatch(n)))
