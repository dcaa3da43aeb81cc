"""Analytics through the `portkey-ai` SDK's `client.analytics`: requests sent
through the gateway in a workspace of their own, then the graphs, groups and
cache summary read with that workspace's key (confined to it), with numbers
checked against what the test sent and what the request log recorded."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from openai import OpenAI
from portkey_ai import Portkey

from conftest import (
    MOCK_COMPLETION_TOKENS,
    MOCK_PROMPT_TOKENS,
    MODELS,
    Mock,
    Tollgate,
    create_workspace,
    create_workspace_key,
    integration_body,
    provision,
    unique,
)

WHOLE = 3
STREAMED = 1


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def traffic(tollgate: Tollgate, mocks: dict[str, Mock]):
    """A fresh workspace whose only traffic is this module's requests."""
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    ws = create_workspace(tollgate, unique("Analytics"))
    slug = tollgate.ok("GET", f"/v1/admin/workspaces/{ws}")["slug"]
    key = create_workspace_key(tollgate, ws, ["completions.write", "analytics.view", "logs.view"])
    provider = unique("openai")
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", provider, mocks["openai"]))
    provision(tollgate, provider, [ws])
    client = OpenAI(base_url=tollgate.v1, api_key=key["key"], max_retries=0)
    model = f"@{provider}/{MODELS['openai']}"
    for i in range(WHOLE):
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=32,
            extra_headers={"x-portkey-metadata": json.dumps({"env": "prod" if i else "staging"})},
        )
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    ):
        pass
    logs = tollgate.wait_for_logs(WHOLE + STREAMED, key=key["key"], workspace_id=ws)
    assert len(logs) == WHOLE + STREAMED
    window = {"time_of_generation_min": iso(started), "time_of_generation_max": iso(datetime.now(timezone.utc) + timedelta(seconds=1))}
    return {
        "tg": tollgate,
        "ws": ws,
        "slug": slug,
        "key": key,
        "provider": provider,
        "logs": logs,
        "window": window,
        "sdk": Portkey(api_key=key["key"], base_url=tollgate.v1, max_retries=0),
    }


def test_graphs_count_what_was_sent(traffic) -> None:
    sdk, w = traffic["sdk"], traffic["window"]
    n = WHOLE + STREAMED
    req = sdk.analytics.graphs.requests(**w, interval="minute")
    assert req.object == "analytics-graph"
    assert sum(p["total"] for p in req.data) == n
    assert req.summary == {"total": n, "successful": n, "failed": 0}
    tokens = sdk.analytics.graphs.tokens(**w)
    assert tokens.summary["total"] == n * (MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS)
    assert tokens.summary["prompt"] == n * MOCK_PROMPT_TOKENS
    assert tokens.summary["completion"] == n * MOCK_COMPLETION_TOKENS
    users = sdk.analytics.graphs.users(**w)
    assert users.summary["total"] == 1
    errors = sdk.analytics.graphs.errors_rate(**w)
    assert errors.summary["rate"] == 0
    cost = sdk.analytics.graphs.cost(**w)
    logged = sum(Decimal(r["cost_exact"]) for r in traffic["logs"] if r["cost_exact"] is not None)
    assert Decimal(cost.summary["total_exact"]) == logged
    latency = sdk.analytics.graphs.latency(**w)
    assert latency.summary["max"] >= latency.summary["p50"] > 0
    for graph in (sdk.analytics.graphs.users_requests, sdk.analytics.graphs.errors, sdk.analytics.graphs.errors_status_codes,
                  sdk.analytics.graphs.requests_rescued, sdk.analytics.graphs.cache_hit_rate, sdk.analytics.graphs.cache_latency):
        assert graph(**w).object == "analytics-graph"


def test_groups_and_metadata(traffic) -> None:
    sdk, w = traffic["sdk"], traffic["window"]
    models = sdk.analytics.groups.ai_models(**w)
    assert models.total == 1
    assert models.data[0]["ai_org_model"] == f"openai__{MODELS['openai']}"
    assert models.data[0]["requests"] == WHOLE + STREAMED
    users = sdk.analytics.groups.users(**w)
    assert [u["api_key_id"] for u in users.data] == [traffic["key"]["id"]]
    env = sdk.analytics.groups.metadata(metadata_key="env", **w, order_by="metadata_value", order_by_type="asc")
    assert [(g["metadata_value"], g["requests"]) for g in env.data] == [("prod", WHOLE - 1), ("staging", 1)]
    by_provider = sdk.analytics.groups.group_by(group_by="provider", **w)
    assert [(g["provider"], g["requests"]) for g in by_provider.data] == [(traffic["provider"], WHOLE + STREAMED)]
    by_status = sdk.analytics.groups.group_by(group_by="status_code", **w)
    assert [(g["status_code"], g["requests"]) for g in by_status.data] == [(200, WHOLE + STREAMED)]
    ws = sdk.analytics.groups.workspaces(**w, workspace_slug=traffic["slug"])
    assert ws.data[0]["workspace_id"] == traffic["ws"]


def test_cache_summary_and_full_summary(traffic) -> None:
    sdk, w = traffic["sdk"], traffic["window"]
    cache = sdk.analytics.summary.cache(**w)
    assert cache.data["hits"] == 0
    assert cache.data["disabled"] == WHOLE + STREAMED
    r = traffic["tg"].call("GET", "/v1/analytics/summary", traffic["key"]["key"], params=w)
    assert r.status_code == 200, r.text
    s = r.json()["data"]
    assert s["requests"] == WHOLE + STREAMED
    assert s["streamed"] == STREAMED
    assert s["ttft_p50_ms"] is not None
    assert s["unique_workspaces"] == 1
    assert s["total_tokens"] == sum(rec["usage"]["total_tokens"] for rec in traffic["logs"])


def test_csv_and_confinement(traffic) -> None:
    tg, w = traffic["tg"], traffic["window"]
    r = tg.call("GET", "/v1/analytics/groups/model", traffic["key"]["key"], params={**w, "format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["model"] == MODELS["openai"]
    assert int(rows[0]["requests"]) == WHOLE + STREAMED
    # Another workspace is out of reach of this key; the SDK raises.
    with pytest.raises(Exception) as e:
        traffic["sdk"].analytics.graphs.requests(**w, workspace_slug=f"not-{uuid.uuid4().hex[:6]}")
    assert "AB03" in str(e.value) or "403" in str(e.value)
