"""The Responses API and the Anthropic Messages API through the official
clients: the `openai` SDK's `responses`, the OpenAI Agents SDK, and the
`anthropic` SDK's `messages`, each against an OpenAI integration and an
Anthropic one (one relayed natively, the other translated), plus
`models.retrieve`. Every call is logged with its endpoint and cost."""

from __future__ import annotations

import asyncio
import json
import uuid

import anthropic
import pytest
from openai import AsyncOpenAI, OpenAI

from conftest import MOCK_COMPLETION_TOKENS, MOCK_PROMPT_TOKENS, MOCK_REPLY, Gateway

PROTOCOLS = ["openai", "anthropic"]

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}

CLAUDE_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def openai_client(gw: Gateway) -> OpenAI:
    return OpenAI(base_url=gw.tg.v1, api_key=gw.key, max_retries=0)


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key and appends /v1/messages itself.
    return anthropic.Anthropic(base_url=gw.tg.url, api_key=gw.key, max_retries=0)


def trace(name: str) -> str:
    return f"sdk-{name}-{uuid.uuid4().hex[:8]}"


def logged(gw: Gateway, trace_id: str, endpoint: str, protocol: str) -> dict:
    rows = gw.tg.wait_for_logs(1, key=gw.key, trace_id=trace_id)
    assert len(rows) == 1, rows
    rec = rows[0]
    assert rec["endpoint"] == endpoint, rec
    assert rec["status_code"] == 200, rec
    assert rec["usage"]["prompt_tokens"] == MOCK_PROMPT_TOKENS, rec
    assert rec["usage"]["completion_tokens"] == MOCK_COMPLETION_TOKENS, rec
    if protocol == "openai":
        # gpt-4o's catalogue price: 12 x $2.50/M + 7 x $10/M (the mock's
        # Claude model has no catalogue price, so its cost is null).
        assert rec["cost_exact"] == "0.0001", rec
    return rec


# ---- the openai SDK's Responses API ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_responses_plain(gateway: Gateway, protocol: str) -> None:
    t = trace("responses")
    r = openai_client(gateway).responses.create(
        model=gateway.model(protocol),
        instructions="Be brief.",
        input="Say hello.",
        max_output_tokens=64,
        metadata={"team": "sdk"},
        extra_headers={"x-portkey-trace-id": t},
    )
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == MOCK_REPLY
    assert r.usage.input_tokens == MOCK_PROMPT_TOKENS
    assert r.usage.output_tokens == MOCK_COMPLETION_TOKENS
    logged(gateway, t, "responses", protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_responses_streamed(gateway: Gateway, protocol: str) -> None:
    t = trace("responses-stream")
    client = openai_client(gateway)
    deltas = []
    with client.responses.stream(
        model=gateway.model(protocol), input="Say hello.", extra_headers={"x-portkey-trace-id": t}
    ) as stream:
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "".join(deltas) == MOCK_REPLY
    assert final.output_text == MOCK_REPLY
    assert final.usage.output_tokens == MOCK_COMPLETION_TOKENS
    logged(gateway, t, "responses", protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_responses_function_tool_round_trip(gateway: Gateway, protocol: str) -> None:
    client = openai_client(gateway)
    first = client.responses.create(model=gateway.model(protocol), input="Weather in Paris?", tools=[WEATHER])
    calls = [i for i in first.output if i.type == "function_call"]
    assert len(calls) == 1, first.output
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "mock"}
    # Streamed, the arguments arrive as function-call events.
    with client.responses.stream(model=gateway.model(protocol), input="Weather in Paris?", tools=[WEATHER]) as s:
        kinds = [e.type for e in s]
        streamed = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [i.type for i in streamed.output] == ["function_call"]
    # The result goes back; the model answers with text.
    second = client.responses.create(
        model=gateway.model(protocol),
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[c.model_dump(exclude_none=True) for c in calls],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == MOCK_REPLY


# Only where the provider supports JSON schemas (the Anthropic adapter does
# not translate `response_format`).
@pytest.mark.parametrize("protocol", ["openai"])
def test_responses_structured_output(gateway: Gateway, protocol: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = openai_client(gateway).responses.create(
        model=gateway.model(protocol),
        input="Largest city of France?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    data = json.loads(r.output_text)
    assert isinstance(data["city"], str) and isinstance(data["population"], int), data


def test_responses_stored_and_previous_response_id(gateway: Gateway) -> None:
    client = openai_client(gateway)
    first = client.responses.create(model=gateway.model("openai"), input="Hello")
    assert client.responses.retrieve(first.id).id == first.id
    second = client.responses.create(model=gateway.model("openai"), input="Again", previous_response_id=first.id)
    assert second.output_text == MOCK_REPLY
    # Elsewhere it is a clear 400.
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=gateway.model("anthropic"), input="x", previous_response_id=first.id)
    assert "stores responses" in str(e.value)


# ---- the OpenAI Agents SDK ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_agents_sdk_with_a_tool(gateway: Gateway, protocol: str) -> None:
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled

    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny"

    set_tracing_disabled(True)
    set_default_openai_client(
        AsyncOpenAI(
            base_url=gateway.tg.v1,
            api_key=gateway.key,
            max_retries=0,
            default_headers={"x-portkey-provider": f"@{gateway.slugs[protocol]}"},
        ),
        use_for_tracing=False,
    )
    # A plain model name: the provider comes from the header.
    agent = Agent(name="weather", instructions="Answer briefly.", model="gpt-4o", tools=[get_weather])

    async def both():
        # One event loop for both runs: the client's connections belong to it.
        whole = await Runner.run(agent, "Weather in Paris?")
        assert seen == ["mock"], "the tool ran with the model's arguments"
        # Streamed, the same run through the Responses stream events.
        run = Runner.run_streamed(agent, "Weather in Paris?")
        kinds = [event.type async for event in run.stream_events()]
        return whole, run, kinds

    result, run, kinds = asyncio.run(both())
    assert result.final_output == MOCK_REPLY
    assert "raw_response_event" in kinds
    assert seen == ["mock", "mock"]
    assert run.final_output == MOCK_REPLY


# ---- the anthropic SDK's Messages API ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_plain(gateway: Gateway, protocol: str) -> None:
    t = trace("messages")
    m = anthropic_client(gateway).messages.create(
        model=gateway.model(protocol),
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers={"x-portkey-trace-id": t},
    )
    assert m.type == "message"
    assert m.content[0].text == MOCK_REPLY
    assert m.stop_reason == "end_turn"
    assert m.usage.output_tokens == MOCK_COMPLETION_TOKENS
    logged(gateway, t, "messages", protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_streamed(gateway: Gateway, protocol: str) -> None:
    t = trace("messages-stream")
    with anthropic_client(gateway).messages.stream(
        model=gateway.model(protocol),
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers={"x-portkey-trace-id": t},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == MOCK_REPLY
    assert final.usage.output_tokens == MOCK_COMPLETION_TOKENS
    assert final.stop_reason == "end_turn"
    logged(gateway, t, "messages", protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_tools_round_trip(gateway: Gateway, protocol: str) -> None:
    client = anthropic_client(gateway)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model=gateway.model(protocol), max_tokens=64, tools=[CLAUDE_WEATHER], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "mock"}
    with client.messages.stream(
        model=gateway.model(protocol), max_tokens=64, tools=[CLAUDE_WEATHER], messages=[question]
    ) as s:
        streamed = s.get_final_message()
    assert [b.type for b in streamed.content] == ["tool_use"]
    assert streamed.content[0].input == {"city": "mock"}
    second = client.messages.create(
        model=gateway.model(protocol),
        max_tokens=64,
        tools=[CLAUDE_WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].text == MOCK_REPLY


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_count_tokens(gateway: Gateway, protocol: str) -> None:
    r = anthropic_client(gateway).messages.count_tokens(
        model=gateway.model(protocol), messages=[{"role": "user", "content": "one two three four"}]
    )
    assert r.input_tokens > 0


def test_messages_errors_are_anthropic_errors(gateway: Gateway) -> None:
    bad = anthropic.Anthropic(base_url=gateway.tg.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=gateway.model("openai"), max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(gateway).messages.create(
            model="@no-such-provider/x", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )


# ---- models ----


def test_models_retrieve(gateway: Gateway) -> None:
    client = openai_client(gateway)
    ids = [m.id for m in client.models.list()]
    assert gateway.model("openai") in ids
    assert client.models.retrieve(gateway.model("openai")).id == gateway.model("openai")
    import openai

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(f"@{gateway.slugs['openai']}/no-such-model")
