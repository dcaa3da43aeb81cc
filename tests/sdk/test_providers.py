"""Workspace providers through the `portkey-ai` SDK's `providers` methods: a
second provider made from a provisioned integration, with its own slug,
note and limits, used through the `openai` SDK, then updated and deleted."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from portkey_ai import Portkey
from portkey_ai.api_resources import exceptions as pk_errors

from conftest import MOCK_REPLY, Gateway, unique

MESSAGES = [{"role": "user", "content": "hi"}]


def admin(gw: Gateway) -> Portkey:
    return Portkey(api_key=gw.tg.org_key, base_url=gw.tg.v1, max_retries=0)


def ask(gw: Gateway, model: str, trace: str | None = None) -> str:
    headers = {"x-portkey-trace-id": trace} if trace else None
    r = OpenAI(base_url=gw.tg.v1, api_key=gw.key, max_retries=0).chat.completions.create(
        model=model, messages=MESSAGES, extra_headers=headers
    )
    return r.choices[0].message.content


def test_providers_create_list_retrieve_update_delete(gateway: Gateway) -> None:
    pk = admin(gateway)
    ws = gateway.workspace_id
    integration = gateway.slugs["openai"]
    slug = unique("team-a")
    created = pk.providers.create(
        name="Team A",
        integration_id=integration,
        workspace_id=ws,
        slug=slug,
        note="for team A's batch jobs",
        usage_limits={"type": "tokens", "credit_limit": 1_000_000, "alert_threshold": 900_000,
                      "periodic_reset": "monthly"},
        rate_limits={"type": "requests", "unit": "rpm", "value": 1000},
    )
    assert created.slug == slug
    assert created.id

    listed = pk.providers.list(workspace_id=ws)
    by_slug = {p.slug: p for p in listed.data}
    # The provisioned integration's own provider and the new one.
    assert {integration, slug} <= set(by_slug)
    item = by_slug[slug]
    assert item.note == "for team A's batch jobs"
    assert item.rate_limits == {"type": "requests", "unit": "rpm", "value": 1000}
    assert item.usage_limits["credit_limit"] == 1_000_000

    got = pk.providers.retrieve(slug=slug, workspace_id=ws)
    assert (got.slug, got.name, got.note, got.workspace_id) == (slug, "Team A", "for team A's batch jobs", ws)
    assert got.integration_id in (integration, pk.integrations.retrieve(slug=integration).id)
    assert got.usage_limits["type"] == "tokens"
    assert got.usage_limits["periodic_reset"] == "monthly"
    assert got.rate_limits == [{"type": "requests", "unit": "rpm", "value": 1000}]
    assert got.status == "active"

    # The new provider is callable under its own slug, and logged under it.
    trace = unique("sdk-provider")
    assert ask(gateway, f"@{slug}/gpt-4o", trace) == MOCK_REPLY
    [rec] = gateway.tg.wait_for_logs(1, trace_id=trace)
    assert rec["provider"] == slug
    assert rec["integration"] == integration

    pk.providers.update(slug=slug, workspace_id=ws, name="Team A (batch)", note="renamed")
    got = pk.providers.retrieve(slug=slug, workspace_id=ws)
    assert (got.name, got.note) == ("Team A (batch)", "renamed")

    # A usage limit, once set, cannot be edited.
    with pytest.raises(pk_errors.ConflictError):
        pk.providers.update(slug=slug, workspace_id=ws,
                            usage_limits={"type": "tokens", "credit_limit": 5_000, "alert_threshold": 4_000})

    pk.providers.delete(slug=slug, workspace_id=ws)
    with pytest.raises(pk_errors.NotFoundError):
        pk.providers.retrieve(slug=slug, workspace_id=ws)
    assert slug not in {p.slug for p in pk.providers.list(workspace_id=ws).data}
    with pytest.raises(openai.NotFoundError):
        ask(gateway, f"@{slug}/gpt-4o")
    # The integration's own provider is untouched.
    assert ask(gateway, f"@{integration}/gpt-4o") == MOCK_REPLY


def test_provider_rate_limit_is_enforced(gateway: Gateway) -> None:
    pk = admin(gateway)
    slug = unique("one-a-day")
    pk.providers.create(
        name="One a day",
        integration_id=gateway.slugs["anthropic"],
        workspace_id=gateway.workspace_id,
        slug=slug,
        rate_limits={"type": "requests", "unit": "rpd", "value": 1},
    )
    assert ask(gateway, f"@{slug}/claude-3-5-haiku-20241022") == MOCK_REPLY
    with pytest.raises(openai.RateLimitError) as e:
        ask(gateway, f"@{slug}/claude-3-5-haiku-20241022")
    assert e.value.status_code == 429
    assert e.value.body["type"] == "provider_rate_limit_error"
    assert e.value.response.headers.get("retry-after")
    pk.providers.delete(slug=slug, workspace_id=gateway.workspace_id)


def test_provider_needs_a_provisioned_integration(gateway: Gateway) -> None:
    pk = admin(gateway)
    # The other workspace's integration is not provisioned to this workspace.
    with pytest.raises(pk_errors.APIStatusError) as e:
        pk.providers.create(name="x", integration_id=gateway.other_slug, workspace_id=gateway.workspace_id,
                            slug=unique("nope"))
    assert e.value.status_code in (400, 403, 404), e.value.response.text
