"""The data plane through the official `openai` SDK and the `portkey-ai`
SDK's chat completions, against a real Tollgate in front of the OpenAI,
Anthropic and Bedrock mocks (`tollgate mock-upstream`)."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
from openai import OpenAI
from portkey_ai import Portkey

from conftest import (
    MOCK_COMPLETION_TOKENS,
    MOCK_PROMPT_TOKENS,
    MOCK_REPLY,
    MODELS,
    Gateway,
    Mock,
    integration_body,
    provision,
    unique,
)

PROTOCOLS = ["openai", "anthropic", "bedrock"]

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello."},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def client(gw: Gateway, key: str | None = None) -> OpenAI:
    # No retries: a refused request must surface at once, as the typed error.
    return OpenAI(base_url=gw.tg.v1, api_key=key or gw.key, max_retries=0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_whole_chat_completion(gateway: Gateway, protocol: str) -> None:
    trace = f"sdk-whole-{protocol}-{uuid.uuid4().hex[:8]}"
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=gateway.model(protocol),
        messages=MESSAGES,
        max_tokens=64,
        extra_headers={"x-portkey-trace-id": trace},
    )
    assert raw.headers["x-portkey-trace-id"] == trace
    r = raw.parse()
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == MOCK_REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == MOCK_PROMPT_TOKENS
    assert r.usage.completion_tokens == MOCK_COMPLETION_TOKENS
    assert r.usage.total_tokens == MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS

    # The request log (read with the organisation key) has it, with the
    # provider, model, tokens, latency and the trace id the client sent.
    [rec] = gateway.tg.wait_for_logs(1, trace_id=trace)
    assert rec["status_code"] == 200
    assert rec["trace_id"] == trace
    assert rec["provider"] == gateway.slugs[protocol]
    assert rec["model"] == MODELS[protocol]
    assert rec["workspace_id"] == gateway.workspace_id
    assert rec["usage"]["prompt_tokens"] == MOCK_PROMPT_TOKENS
    assert rec["usage"]["completion_tokens"] == MOCK_COMPLETION_TOKENS
    assert rec["latency_ms"] > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_streaming_chat_completion_with_usage(gateway: Gateway, protocol: str) -> None:
    trace = f"sdk-stream-{protocol}-{uuid.uuid4().hex[:8]}"
    stream = client(gateway).chat.completions.create(
        model=gateway.model(protocol),
        messages=MESSAGES,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-portkey-trace-id": trace},
    )
    text, usage, finish, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == MOCK_REPLY
    assert chunks > 2, "the answer arrives in pieces"
    assert finish == "stop"
    assert usage is not None, "stream_options.include_usage relays the usage chunk"
    assert (usage.prompt_tokens, usage.completion_tokens) == (MOCK_PROMPT_TOKENS, MOCK_COMPLETION_TOKENS)
    assert usage.total_tokens == MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS

    [rec] = gateway.tg.wait_for_logs(1, trace_id=trace)
    assert rec["streamed"] is True
    assert rec["usage"]["completion_tokens"] == MOCK_COMPLETION_TOKENS
    assert rec["latency_ms"] > 0


def test_streaming_without_usage_relays_no_usage(gateway: Gateway) -> None:
    stream = client(gateway).chat.completions.create(
        model=gateway.model("openai"), messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MOCK_REPLY
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tool_calls(gateway: Gateway, protocol: str) -> None:
    r = client(gateway).chat.completions.create(
        model=gateway.model(protocol),
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        max_tokens=64,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 1}

    # Streamed, the pieces of the arguments add up to the same call.
    stream = client(gateway).chat.completions.create(
        model=gateway.model(protocol),
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        max_tokens=64,
        stream=True,
    )
    name, args, finish = "", "", None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                if tc.function is not None:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(args) == {"city": "mock", "days": 1}
    assert finish == "tool_calls"


def test_tool_result_round_trip(gateway: Gateway) -> None:
    """Answering a tool call gets text back, on the protocol that checks
    tool_use/tool_result pairing hardest (Anthropic)."""
    c = client(gateway)
    model = gateway.model("anthropic")
    first = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], max_tokens=64
    )
    call = first.choices[0].message.tool_calls[0]
    second = c.chat.completions.create(
        model=model,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert second.choices[0].message.content == MOCK_REPLY
    assert second.choices[0].finish_reason == "stop"


def test_embeddings(gateway: Gateway) -> None:
    r = client(gateway).embeddings.create(
        model=f"@{gateway.slugs['openai']}/text-embedding-3-small", input=["first text", "second"]
    )
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        assert len(d.embedding) > 0
        assert all(isinstance(x, float) for x in d.embedding)
    assert r.data[0].embedding != r.data[1].embedding, "different inputs, different vectors"
    assert r.usage.prompt_tokens > 0


def test_models_list_is_the_workspace_catalogue(gateway: Gateway) -> None:
    ids = [m.id for m in client(gateway).models.list()]
    assert ids, "the workspace has providers, so models"
    assert all(i.startswith("@") and "/" in i for i in ids), ids
    for protocol, slug in gateway.slugs.items():
        assert any(i.startswith(f"@{slug}/") for i in ids), (protocol, ids)
    assert f"@{gateway.slugs['openai']}/gpt-4o" in ids
    # Another workspace's provider is not in this catalogue.
    assert not any(i.startswith(f"@{gateway.other_slug}/") for i in ids)


def test_errors_are_the_sdks_typed_exceptions(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, key="not-a-tollgate-key").chat.completions.create(model=gateway.model("openai"), messages=MESSAGES)
    assert e.value.status_code == 401
    assert e.value.body["type"] == "authentication_error"

    trace = f"sdk-denied-{uuid.uuid4().hex[:8]}"
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(gateway).chat.completions.create(
            model=f"@{gateway.other_slug}/gpt-4o", messages=MESSAGES, extra_headers={"x-portkey-trace-id": trace}
        )
    assert e.value.status_code == 403
    assert e.value.body["type"] == "permission_error"

    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(model="@no-such-provider/gpt-4o", messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.body["type"] == "not_found_error"

    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model=gateway.model("openai"), messages=MESSAGES, max_tokens=-1)
    assert e.value.status_code == 400

    # Embeddings on a protocol without them is refused, not a crash.
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway).embeddings.create(model=gateway.model("anthropic"), input="x")
    assert 400 <= e.value.status_code < 500

    # A refused request is logged with its status and error type.
    [rec] = gateway.tg.wait_for_logs(1, trace_id=trace)
    assert rec["status_code"] == 403
    assert rec["error_type"] == "permission_error"
    assert rec["workspace_id"] == gateway.workspace_id


def test_another_workspace_key_works_on_its_own_provider(gateway: Gateway) -> None:
    r = client(gateway, key=gateway.other_key).chat.completions.create(
        model=f"@{gateway.other_slug}/gpt-4o-mini", messages=MESSAGES
    )
    assert r.choices[0].message.content == MOCK_REPLY


@pytest.mark.parametrize("protocol", ["azure", "gemini", "vertex"])
def test_every_other_mock_protocol(gateway: Gateway, other_mocks: dict[str, Mock], protocol: str) -> None:
    """`tollgate mock-upstream --protocol P` with the credentials it prints
    serves a working integration for the remaining protocols too."""
    slug = unique(protocol)
    gateway.tg.ok("POST", "/v1/integrations", integration_body(protocol, slug, other_mocks[protocol]))
    provision(gateway.tg, slug, [gateway.workspace_id])
    c = client(gateway)
    r = c.chat.completions.create(model=f"@{slug}/{MODELS[protocol]}", messages=MESSAGES, max_tokens=64)
    assert r.choices[0].message.content == MOCK_REPLY
    assert r.usage.completion_tokens == MOCK_COMPLETION_TOKENS
    stream = c.chat.completions.create(
        model=f"@{slug}/{MODELS[protocol]}", messages=MESSAGES, max_tokens=64, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(ch.delta.content or "" for chunk in chunks for ch in chunk.choices) == MOCK_REPLY
    assert any(chunk.usage and chunk.usage.prompt_tokens == MOCK_PROMPT_TOKENS for chunk in chunks)


def test_mocks_print_their_base_url_and_credentials(mocks: dict[str, Mock], other_mocks: dict[str, Mock]) -> None:
    """The start-up line is how a person learns what to configure: it names
    the documented test credentials (docs/SDK_TESTS.md)."""
    every = {**mocks, **other_mocks}
    expected = {
        "openai": ["accepts any key", "ai_provider_id=openai"],
        "anthropic": ["x-api-key=sk-ant-test", "ai_provider_id=anthropic"],
        "azure": ["api-key=azure-test-key", "ai_provider_id=azure-openai"],
        "gemini": ["x-goog-api-key=gemini-test-key", "ai_provider_id=google"],
        "vertex": ["vertex_project_id=test-project", "vertex_region=us-central1", "ai_provider_id=vertex-ai"],
        "bedrock": ["aws_region=us-east-1", "aws_access_key_id=AKIATOLLGATETEST0001",
                    "aws_secret_access_key=tollgate/test+secret/AAAAAAAAAAAAAAAAAAAAAAAA",
                    "aws_role_arn=arn:aws:iam::123456789012:role/tollgate-test", "ai_provider_id=bedrock"],
    }
    for protocol, needles in expected.items():
        line = every[protocol].line
        assert every[protocol].url in line
        for n in needles:
            assert n in line, (protocol, n, line)


# ---- the portkey-ai SDK's chat completions ----


def portkey(gw: Gateway, **kw) -> Portkey:
    return Portkey(api_key=gw.key, base_url=gw.tg.v1, max_retries=0, **kw)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_portkey_chat_whole_and_stream_with_provider(gateway: Gateway, protocol: str) -> None:
    """`Portkey(provider="@slug")` sends the provider as a header; the model
    is the upstream's own name."""
    pk = portkey(gateway, provider=f"@{gateway.slugs[protocol]}")
    r = pk.chat.completions.create(model=MODELS[protocol], messages=MESSAGES, max_tokens=64)
    assert r.choices[0].message.content == MOCK_REPLY
    assert r.usage.prompt_tokens == MOCK_PROMPT_TOKENS
    assert r.usage.completion_tokens == MOCK_COMPLETION_TOKENS

    stream = pk.chat.completions.create(
        model=MODELS[protocol],
        messages=MESSAGES,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices or []:
            text += c.delta.content or ""
    assert text == MOCK_REPLY
    assert usage is not None and usage.completion_tokens == MOCK_COMPLETION_TOKENS


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_portkey_chat_with_model_string(gateway: Gateway, protocol: str) -> None:
    pk = portkey(gateway)
    r = pk.chat.completions.create(model=gateway.model(protocol), messages=MESSAGES, max_tokens=64)
    assert r.choices[0].message.content == MOCK_REPLY
    stream = pk.chat.completions.create(model=gateway.model(protocol), messages=MESSAGES, max_tokens=64, stream=True)
    assert "".join(c.delta.content or "" for chunk in stream for c in chunk.choices or []) == MOCK_REPLY


def test_portkey_trace_id_reaches_the_log(gateway: Gateway) -> None:
    trace = f"sdk-portkey-{uuid.uuid4().hex[:8]}"
    pk = portkey(gateway, provider=f"@{gateway.slugs['openai']}", trace_id=trace)
    r = pk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == MOCK_REPLY
    [rec] = gateway.tg.wait_for_logs(1, trace_id=trace)
    assert rec["provider"] == gateway.slugs["openai"]
    assert rec["usage"]["prompt_tokens"] == MOCK_PROMPT_TOKENS


def test_portkey_errors(gateway: Gateway) -> None:
    with pytest.raises(Exception) as e:
        Portkey(api_key="wrong", base_url=gateway.tg.v1, max_retries=0).chat.completions.create(
            model=gateway.model("openai"), messages=MESSAGES
        )
    assert getattr(e.value, "status_code", None) == 401, repr(e.value)
