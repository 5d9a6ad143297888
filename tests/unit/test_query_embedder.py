"""The query embedder of context requests: the local model on one thread, same vectors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.services import build_query_embedder
from rag.embedding import (
    CoalescingQueries,
    EmbeddingUnavailable,
    LocalMiniLMEmbedder,
    OpenAICompatibleEmbedder,
)

QUESTIONS = [
    "Where is Bram now?",
    "What did Captain Elara and the Magpie do together at the Lantern Cellar?",
    "",
    "Who does Oswin trust? " * 40,  # long: several hundred tokens, cut at the model's limit
    "Wer hat den silbernen Schlüssel? ¿Quién lo tiene? 誰が鍵を持っている？",
]


def test_the_query_embedder_gives_the_shared_embedders_vectors_exactly(embedder: LocalMiniLMEmbedder) -> None:
    query = build_query_embedder(embedder)
    assert isinstance(query, LocalMiniLMEmbedder) and query is not embedder
    try:
        assert query.model_id == embedder.model_id and query.dimension == embedder.dimension
        for text in QUESTIONS:
            # Bit for bit: a context bundle must not depend on which instance embedded its question.
            assert query.embed([text]) == embedder.embed([text]), text
    finally:
        query.close()


def test_other_providers_are_shared_as_they_are() -> None:
    remote = OpenAICompatibleEmbedder("http://127.0.0.1:9", "m", 8)
    try:
        assert build_query_embedder(remote) is None
    finally:
        remote.close()


def test_the_query_embedder_uses_one_thread(embedder: LocalMiniLMEmbedder) -> None:
    query = build_query_embedder(embedder)
    assert isinstance(query, LocalMiniLMEmbedder)
    try:
        assert query._session.get_session_options().intra_op_num_threads == 1
    finally:
        query.close()


# --------------------------------------------------------------------------------------------------
# Questions of concurrent requests share model runs
# --------------------------------------------------------------------------------------------------


class _GatedModel:
    """A blocking 'model' whose runs can be held until the test lets them finish."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.runs.append(list(texts))
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise EmbeddingUnavailable("model run failed")
        return [[float(len(t)), float(i)] for i, t in enumerate(texts)]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # at most 5 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def test_a_question_alone_is_embedded_at_once_in_a_run_of_its_own() -> None:
    model = _GatedModel()
    with ThreadPoolExecutor(max_workers=1) as pool:
        queries = CoalescingQueries(model.embed, pool)
        assert await queries(["Where is Bram?"]) == [[14.0, 0.0]]
        assert await queries(["Who?"]) == [[4.0, 0.0]]
    assert model.runs == [["Where is Bram?"], ["Who?"]]
    assert (queries.runs, queries.texts) == (2, 2)


async def test_questions_arriving_during_a_run_share_the_next_one_and_each_gets_its_own_vector() -> None:
    model = _GatedModel()
    model.gate.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:
        queries = CoalescingQueries(model.embed, pool, max_batch=4)
        first = asyncio.ensure_future(queries(["first"]))
        await _until(model.started.is_set)
        later = [asyncio.ensure_future(queries(["q" * n])) for n in range(1, 7)]
        await asyncio.sleep(0.05)
        model.gate.set()
        assert await first == [[5.0, 0.0]]
        results = await asyncio.gather(*later)
    # Six waited during the first run: the next two runs take them, four then two (max_batch).
    assert model.runs == [["first"], ["q", "qq", "qqq", "qqqq"], ["qqqqq", "qqqqqq"]]
    assert [r[0][0] for r in results] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert (queries.runs, queries.texts) == (3, 7)


async def test_a_failed_run_fails_its_callers_only_and_a_cancelled_caller_is_left_out() -> None:
    model = _GatedModel()
    model.gate.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:
        queries = CoalescingQueries(model.embed, pool)
        first = asyncio.ensure_future(queries(["first"]))
        await _until(model.started.is_set)
        waiting = [asyncio.ensure_future(queries([f"waiting {i}"])) for i in range(2)]
        abandoned = asyncio.ensure_future(queries(["abandoned"]))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        model.fail_next = True
        model.gate.set()
        with pytest.raises(EmbeddingUnavailable):
            await first
        # The next run (the two waiting, without the abandoned one) works.
        assert [len(r) for r in await asyncio.gather(*waiting)] == [1, 1]
        assert abandoned.cancelled()
        assert await queries(["after"]) == [[5.0, 0.0]]
    assert model.runs == [["first"], ["waiting 0", "waiting 1"], ["after"]]


async def test_a_shared_run_of_the_local_model_gives_each_question_its_vector_alone_bit_for_bit(
    embedder: LocalMiniLMEmbedder,
) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        queries = CoalescingQueries(embedder.embed, pool)
        shared = await asyncio.gather(*(queries([text]) for text in QUESTIONS))
    assert queries.runs < len(QUESTIONS)  # the first alone, the others together
    for text, vectors in zip(QUESTIONS, shared, strict=True):
        assert vectors == embedder.embed([text]), text
