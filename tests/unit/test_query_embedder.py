"""The query embedder of context requests: the local model on one thread, same vectors."""

from __future__ import annotations

from app.services import build_query_embedder
from rag.embedding import LocalMiniLMEmbedder, OpenAICompatibleEmbedder

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
