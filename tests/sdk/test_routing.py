"""Routing configs as users send them: the `portkey-ai` SDK's `config=`
(an object, and a saved config's id created with `client.configs`), the
`openai` SDK with the `x-portkey-config` header, and plain model names
through a workspace's default config. The failing primaries are an
integration whose upstream is down (nothing listens on its port) and one
whose rate limit in the workspace is 0 (Tollgate refuses it: 429), so that
fallback reaches the mocks behind `tollgate mock-upstream`."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from typing import Dict

import pytest
from openai import OpenAI
from portkey_ai import Portkey

from conftest import (
    MOCK_REPLY,
    Mock,
    Tollgate,
    create_workspace,
    create_workspace_key,
    free_port,
    integration_body,
    provision,
    unique,
)

MESSAGES = [{"role": "user", "content": "Say hello."}]


@dataclass
class Routing:
    tg: Tollgate
    workspace_id: str
    key: str
    live: str  # an OpenAI-compatible integration on the mock
    claude: str  # an Anthropic integration on the mock
    dead: str  # an OpenAI integration whose upstream is down
    blocked: str  # an OpenAI integration with a rate limit of 0 here


@pytest.fixture(scope="module")
def routing(tollgate: Tollgate, mocks: Dict[str, Mock]) -> Routing:
    ws = create_workspace(tollgate, unique("Routing"))
    key = create_workspace_key(tollgate, ws, ["completions.write", "logs.view", "configs.*"])["key"]
    live, claude, dead, blocked = unique("live"), unique("claude"), unique("dead"), unique("blocked")
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", live, mocks["openai"]))
    tollgate.ok("POST", "/v1/integrations", integration_body("anthropic", claude, mocks["anthropic"]))
    down = integration_body("openai", dead, mocks["openai"])
    down["configurations"]["custom_host"] = f"http://127.0.0.1:{free_port()}/v1"
    tollgate.ok("POST", "/v1/integrations", down)
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", blocked, mocks["openai"]))
    for slug in (live, claude, dead):
        provision(tollgate, slug, [ws])
    tollgate.ok("PUT", f"/v1/integrations/{blocked}/workspaces", {"workspaces": [
        {"id": ws, "enabled": True, "rate_limits": {"type": "requests", "unit": "rpm", "value": 0}}]})
    return Routing(tg=tollgate, workspace_id=ws, key=key, live=live, claude=claude, dead=dead, blocked=blocked)


def attempts(r: Routing, trace: str, n: int):
    logs = r.tg.wait_for_logs(n, key=r.key, trace_id=trace)
    assert len(logs) == n, logs
    return sorted(logs, key=lambda l: l["attempt"])


def test_portkey_config_object_falls_back_from_a_dead_upstream(routing: Routing) -> None:
    config = {"strategy": {"mode": "fallback"},
              "targets": [{"provider": f"@{routing.dead}"}, {"provider": f"@{routing.live}"}]}
    trace = f"route-{uuid.uuid4().hex[:8]}"
    pk = Portkey(api_key=routing.key, base_url=routing.tg.v1, max_retries=0, config=config, trace_id=trace)
    r = pk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    headers = r.get_headers()  # Portkey's headers, without their x-portkey- prefix
    assert headers["last-used-option-index"] == "config.targets[1]"
    assert headers["retry-attempt-count"] == "0"
    assert r.choices[0].message.content == MOCK_REPLY
    log = attempts(routing, trace, 2)
    assert [l["provider"] for l in log] == [routing.dead, routing.live]
    assert [l["is_final_attempt"] for l in log] == [False, True]
    assert log[0]["status_code"] == 502 and log[0]["cost"] is None
    assert log[1]["status_code"] == 200 and log[1]["cost"] > 0


def test_portkey_saved_config_by_id(routing: Routing) -> None:
    admin = Portkey(api_key=routing.key, base_url=routing.tg.v1, max_retries=0)
    created = admin.configs.create(name="fallback to claude", config={
        "strategy": {"mode": "fallback"},
        "targets": [{"provider": f"@{routing.blocked}"},
                    {"provider": f"@{routing.claude}", "override_params": {"model": "claude-3-5-sonnet-20241022"}}]})
    assert created.slug.startswith("pc-")
    got = admin.configs.retrieve(slug=created.slug)
    assert got.config["targets"][0]["provider"] == f"@{routing.blocked}"
    assert any(c["slug"] == created.slug for c in admin.configs.list().data)
    updated = admin.configs.update(slug=created.slug, name="fallback to claude (v2)")
    assert updated.version_id and updated.version_id != created.version_id

    trace = f"route-{uuid.uuid4().hex[:8]}"
    pk = Portkey(api_key=routing.key, base_url=routing.tg.v1, max_retries=0, config=created.slug, trace_id=trace)
    r = pk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == MOCK_REPLY
    log = attempts(routing, trace, 2)
    assert log[0]["status_code"] == 429 and log[0]["refusal"] == "rate_limit"
    assert log[1]["provider"] == routing.claude and log[1]["model"] == "claude-3-5-sonnet-20241022"
    admin.configs.delete(slug=created.slug)
    assert all(c["slug"] != created.slug for c in admin.configs.list().data)


def test_openai_sdk_with_the_config_header(routing: Routing) -> None:
    config = {"strategy": {"mode": "fallback", "on_status_codes": [429, 502]},
              "targets": [{"provider": f"@{routing.blocked}"}, {"provider": f"@{routing.dead}"},
                          {"provider": f"@{routing.live}"}]}
    client = OpenAI(base_url=routing.tg.v1, api_key=routing.key, max_retries=0,
                    default_headers={"x-portkey-config": json.dumps(config)})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-portkey-last-used-option-index"] == "config.targets[2]"
    trace = raw.headers["x-portkey-trace-id"]
    log = attempts(routing, trace, 3)
    assert [l["status_code"] for l in log] == [429, 502, 200]

    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == MOCK_REPLY

    bad = OpenAI(base_url=routing.tg.v1, api_key=routing.key, max_retries=0,
                 default_headers={"x-portkey-config": json.dumps({"retry": {"attempts": 9}})})
    with pytest.raises(Exception) as e:
        bad.chat.completions.create(model=f"@{routing.live}/gpt-4o", messages=MESSAGES)
    assert "retry.attempts" in str(e.value)


def test_plain_model_names_through_a_workspace_default_config(tollgate: Tollgate, mocks: Dict[str, Mock]) -> None:
    ws = create_workspace(tollgate, unique("Plain"))
    key = create_workspace_key(tollgate, ws, ["completions.write"])["key"]
    live, claude = unique("plain-oai"), unique("plain-claude")
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", live, mocks["openai"]))
    tollgate.ok("POST", "/v1/integrations", integration_body("anthropic", claude, mocks["anthropic"]))
    provision(tollgate, live, [ws])
    provision(tollgate, claude, [ws])
    tollgate.ok("PUT", f"/v1/admin/workspaces/{ws}", {"default_config": {"provider": f"@{live}"}})
    client = OpenAI(base_url=tollgate.v1, api_key=key, max_retries=0)
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == MOCK_REPLY
    # x-portkey-provider keeps working, and names another provider.
    r = client.chat.completions.create(model="claude-3-5-sonnet-20241022", messages=MESSAGES,
                                       extra_headers={"x-portkey-provider": f"@{claude}"})
    assert r.choices[0].message.content == MOCK_REPLY
    pk = Portkey(api_key=key, base_url=tollgate.v1, max_retries=0)
    assert pk.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content == MOCK_REPLY


# Runs in the LlamaIndex virtualenv: the key and base URL come from the
# environment; prints the two answers as JSON.
LLAMAINDEX_SCRIPT = """
import json, os
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
llm = OpenAI(model="gpt-4o", api_key=os.environ["TG_KEY"], api_base=os.environ["TG_BASE"], max_retries=0)
chat = llm.chat([ChatMessage(role="user", content="Say hello.")]).message.content
print(json.dumps({"chat": chat, "complete": llm.complete("Say hello.").text}))
"""


def test_llamaindex_openai_class_with_a_plain_model_name(tollgate: Tollgate, mocks: Dict[str, Mock]) -> None:
    """LlamaIndex's `OpenAI` class refuses model names it does not know
    (`@slug/model`); through a workspace default config it sends `gpt-4o`.

    `llama-index-llms-openai` needs `openai<3`, which conflicts with the
    suite's pinned `openai`, so it runs in a virtualenv of its own
    (tests/sdk/requirements-llamaindex.txt), which `tests/sdk/run` creates
    and names in LLAMAINDEX_PYTHON; without it the test is skipped."""
    python = os.environ.get("LLAMAINDEX_PYTHON")
    if not python:
        pytest.skip("LLAMAINDEX_PYTHON is not set (tests/sdk/run sets it)")
    ws = create_workspace(tollgate, unique("Llama"))
    key = create_workspace_key(tollgate, ws, ["completions.write"])["key"]
    slug = unique("llama-oai")
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", slug, mocks["openai"]))
    provision(tollgate, slug, [ws])
    tollgate.ok("PUT", f"/v1/admin/workspaces/{ws}", {"default_config": {"provider": f"@{slug}"}})
    env = {**os.environ, "TG_KEY": key, "TG_BASE": tollgate.v1}
    run = subprocess.run([python, "-c", LLAMAINDEX_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    assert answers == {"chat": MOCK_REPLY, "complete": MOCK_REPLY}
    # Both went through the default config to the integration.
    rows = tollgate.wait_for_logs(2, provider=slug)
    assert len(rows) == 2 and all(r["status_code"] == 200 for r in rows), rows
