"""Token counters: the bundled MiniLM WordPiece tokenizer and the chars/4 fallback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.tokens import (
    CharCounter,
    TokenCounter,
    TokenCounterError,
    UnknownTokenCounter,
    WordPieceCounter,
    available_counters,
    get_counter,
    register_counter,
)

STORY = (
    "Below, the innkeeper finds his iron chest standing open and the Magpie crouched over it with "
    "the ledger in his hands. They grapple among the brine barrels; the smuggler's knife finds "
    "Bram's ribs, and the old man dies on the flagstones with his candle still burning beside him."
)


@pytest.fixture(scope="module")
def wordpiece() -> WordPieceCounter:
    counter = get_counter("wordpiece")
    assert isinstance(counter, WordPieceCounter)
    return counter


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_defaults_and_caching() -> None:
    assert get_counter().name == "wordpiece"
    assert get_counter() is get_counter(" WordPiece ")
    assert get_counter("chars").name == "chars"
    assert {"chars", "wordpiece"} <= set(available_counters())
    for name in ("chars", "wordpiece"):
        assert isinstance(get_counter(name), TokenCounter)


def test_unknown_counter_names_the_available_ones() -> None:
    with pytest.raises(UnknownTokenCounter) as info:
        get_counter("gpt-9")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "unknown token counter 'gpt-9'; available: chars, wordpiece"


def test_register_counter() -> None:
    class Words:
        name = "test-words"

        def count(self, text: str) -> int:
            return len(text.split())

        def truncate(self, text: str, max_tokens: int) -> str:
            return " ".join(text.split()[: max(max_tokens, 0)])

    register_counter("test-words", Words)
    assert get_counter("test-words").count("a b c") == 3
    with pytest.raises(ValueError, match="already registered"):
        register_counter("test-words", Words)
    register_counter("test-words", CharCounter, replace=True)
    assert get_counter("test-words").name == "chars"
    with pytest.raises(ValueError, match="empty"):
        register_counter("  ", Words)


def test_missing_or_corrupt_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(TokenCounterError, match="cannot load tokenizer"):
        WordPieceCounter(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenCounterError, match="cannot load tokenizer"):
        WordPieceCounter(bad)


# --------------------------------------------------------------------------------------------------
# WordPiece
# --------------------------------------------------------------------------------------------------


def test_wordpiece_counts_without_special_tokens(wordpiece: WordPieceCounter) -> None:
    assert wordpiece.count("") == 0
    assert wordpiece.count("   \n\t ") == 0
    assert wordpiece.count("Bram") == 1
    assert wordpiece.count("Bram's key") == 4  # bram ' s key
    # Subwords: "unbelievably" is five WordPiece tokens.
    assert wordpiece.count("unbelievably") == 5


def test_wordpiece_is_not_truncated_at_the_embedders_128_tokens(wordpiece: WordPieceCounter) -> None:
    # The shipped tokenizer.json truncates and pads to 128; a counter must do neither.
    assert wordpiece.count("salt " * 1000) == 1000
    assert wordpiece.count("salt") == 1


def test_wordpiece_truncate_cuts_at_token_boundaries(wordpiece: WordPieceCounter) -> None:
    assert wordpiece.truncate(STORY, 10_000) == STORY
    assert wordpiece.truncate(STORY, 0) == ""
    assert wordpiece.truncate("  \n Bram", 0) == "  \n "  # zero tokens still fit in a budget of 0
    assert wordpiece.truncate(STORY, -5) == ""
    head = wordpiece.truncate(STORY, 5)
    assert head == "Below, the innkeeper "  # below , the inn ##keeper
    assert wordpiece.count(head) == 5
    # A cut inside a word keeps whole subword pieces.
    assert wordpiece.truncate("unbelievably good", 2) == "unbel"


def test_wordpiece_truncate_is_the_largest_prefix(wordpiece: WordPieceCounter) -> None:
    for n in range(1, wordpiece.count(STORY)):
        head = wordpiece.truncate(STORY, n)
        assert STORY.startswith(head)
        assert wordpiece.count(head) == n
        # One more character would cost another token.
        assert wordpiece.count(STORY[: len(head) + 1]) > n


def test_wordpiece_truncates_huge_text_quickly(wordpiece: WordPieceCounter) -> None:
    text = (STORY + "\n") * 4_000  # ~1 MB
    head = wordpiece.truncate(text, 300)
    assert wordpiece.count(head) == 300
    full = wordpiece.truncate(text[:5_000], 300)
    assert head == full  # the head-only fast path agrees with encoding everything


def test_wordpiece_handles_lone_surrogates_and_odd_unicode(wordpiece: WordPieceCounter) -> None:
    for text in ("a\ud800b", "\x00", "İstanbul ǅ ß ﬁ 東京 🙂", "\u200b\u2028\x85"):
        n = wordpiece.count(text)
        assert n >= 0
        assert wordpiece.count(wordpiece.truncate(text, 1)) <= 1


def test_wordpiece_is_thread_safe(wordpiece: WordPieceCounter) -> None:
    texts = [f"{STORY} {i}" * (1 + i % 5) for i in range(16)]
    expected = [wordpiece.count(t) for t in texts]
    errors: list[BaseException] = []
    results: dict[int, list[int]] = {}
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            start.wait()
            got = []
            for _ in range(20):
                got = [wordpiece.count(t) for t in texts]
                wordpiece.truncate(texts[worker], 50)
            results[worker] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(got == expected for got in results.values())
    assert len(results) == 8


# --------------------------------------------------------------------------------------------------
# Chars
# --------------------------------------------------------------------------------------------------


def test_char_counter() -> None:
    chars = CharCounter()
    assert [chars.count("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert chars.truncate("abcdefghij", 2) == "abcdefgh"
    assert chars.truncate("abc", 2) == "abc"
    assert chars.truncate("abc", 0) == ""


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400), n=st.integers(min_value=-3, max_value=120))
@pytest.mark.parametrize("name", ["wordpiece", "chars"])
def test_property_truncate_fits_and_is_a_prefix(name: str, text: str, n: int) -> None:
    counter = get_counter(name)
    head = counter.truncate(text, n)
    assert text.startswith(head)
    assert counter.count(head) <= max(n, 0)
    if counter.count(text) <= n:
        assert head == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=300))
def test_property_wordpiece_fast_path_matches_full_encoding(words: list[str]) -> None:
    # Long texts take the head-only path; the result must equal cutting the full encoding.
    wordpiece = get_counter("wordpiece")
    text = " ".join(words) * 20
    for n in (1, 7, 64):
        head = wordpiece.truncate(text, n)
        assert wordpiece.count(head) <= n
        assert text.startswith(head)
        if wordpiece.count(text) > n:
            # Largest prefix: adding the rest of the next token would exceed the budget.
            assert wordpiece.count(text[: len(head) + 1]) > n or not text[len(head) :].strip()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=600))
def test_property_wordpiece_count_equals_the_tokens_of_the_full_encoding(text: str) -> None:
    # count() encodes without offsets; it must count exactly the tokens truncate() cuts between.
    wordpiece = get_counter("wordpiece")
    assert isinstance(wordpiece, WordPieceCounter)
    assert wordpiece.count(text) == (len(wordpiece._encode(text).ids) if text else 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.text(max_size=120), min_size=1, max_size=40), repeat=st.integers(1, 3))
def test_property_line_memo_counts_exactly_like_one_encoding(lines: list[str], repeat: int) -> None:
    # Long texts are counted line by line from a memo; the sum must equal encoding the whole text,
    # whatever the lines hold (empty ones, lone surrogates, accents, CJK, spaces at either end).
    wordpiece = get_counter("wordpiece")
    assert isinstance(wordpiece, WordPieceCounter)
    text = "\n".join(lines * repeat) + " padding words" * 40
    assert len(text) >= 512
    for _ in range(2):  # the second time from the memo
        assert wordpiece.count(text) == len(wordpiece._encode(text).ids)
