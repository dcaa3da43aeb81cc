"""The control plane through the `portkey-ai` SDK against a real Tollgate:
workspaces, API keys, integrations (openai and anthropic), their models and
workspace provisioning. Every response is checked for the plain upstream
secret, which must never come back."""

from __future__ import annotations

import json
import re
from typing import Any, Dict

import pytest
from openai import OpenAI
from portkey_ai import Portkey
from portkey_ai.api_resources import exceptions as pk_errors

from conftest import ANTHROPIC_MOCK_KEY, MOCK_REPLY, Mock, Tollgate, unique

OPENAI_SECRET = "sk-sdk-admin-secret-0123456789abcdef"
ROTATED_SECRET = "sk-sdk-admin-rotated-fedcba9876543210"


def admin(tg: Tollgate, key: str | None = None) -> Portkey:
    return Portkey(api_key=key or tg.org_key, base_url=tg.v1, max_retries=0)


def dump(obj: Any) -> str:
    """Everything a response object carries, as text."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    return json.dumps(obj, default=str)


def assert_no_secret(obj: Any, *secrets: str) -> None:
    text = dump(obj)
    for s in secrets:
        assert s not in text, f"a plain secret came back: {text}"


def chat(tg: Tollgate, key: str, model: str) -> str:
    r = OpenAI(base_url=tg.v1, api_key=key, max_retries=0).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return r.choices[0].message.content


# ---- workspaces ----


def test_workspaces_create_list_retrieve_update_delete(tollgate: Tollgate) -> None:
    pk = admin(tollgate)
    name = unique("Team Search")
    ws = pk.admin.workspaces.create(name=name, description="search team")
    assert re.fullmatch(r"ws-[a-z0-9-]+-[0-9a-f]{6}", ws.id), ws.id
    assert ws.name == name
    assert ws.description == "search team"
    assert ws.object == "workspace"
    assert ws.slug

    # The SDK sends pageSize/currentPage (camelCase).
    listed = pk.admin.workspaces.list(page_size=100, current_page=0)
    assert listed.object == "list"
    assert listed.total >= 1
    assert ws.id in [w.id for w in listed.data]
    # Pagination is honoured: a page of one holds one.
    page = pk.admin.workspaces.list(page_size=1, current_page=0)
    assert len(page.data) == 1
    assert page.total == listed.total

    # The SDK's name filters: `name` matches part of it, `exact_name` all.
    assert [w.id for w in pk.admin.workspaces.list(name=name[-8:]).data] == [ws.id]
    assert [w.id for w in pk.admin.workspaces.list(exact_name=name).data] == [ws.id]
    assert pk.admin.workspaces.list(exact_name=name[:-1]).data == []

    got = pk.admin.workspaces.retrieve(workspace_id=ws.id)
    assert (got.id, got.name, got.description, got.slug) == (ws.id, name, "search team", ws.slug)

    updated = pk.admin.workspaces.update(workspace_id=ws.id, name=name + " renamed", description="renamed")
    assert updated.name == name + " renamed"
    got = pk.admin.workspaces.retrieve(workspace_id=ws.id)
    assert (got.name, got.description) == (name + " renamed", "renamed")

    pk.admin.workspaces.delete(workspace_id=ws.id)
    with pytest.raises(pk_errors.NotFoundError):
        pk.admin.workspaces.retrieve(workspace_id=ws.id)


def test_admin_errors_are_typed(tollgate: Tollgate) -> None:
    with pytest.raises(pk_errors.AuthenticationError) as e:
        admin(tollgate, key="tg-not-a-key").admin.workspaces.list()
    assert e.value.response.json()["data"]["errorCode"] == "AB05"
    with pytest.raises(pk_errors.BadRequestError) as e:
        admin(tollgate).integrations.create(name="x", ai_provider_id="no-such-provider", key="k")
    assert e.value.response.json()["data"]["errorCode"] == "AB01"
    with pytest.raises(pk_errors.NotFoundError):
        admin(tollgate).integrations.retrieve(slug=unique("missing"))


# ---- API keys ----


def test_workspace_api_keys(tollgate: Tollgate) -> None:
    pk = admin(tollgate)
    ws = pk.admin.workspaces.create(name=unique("Keys"))
    created = pk.api_keys.create(
        type="workspace",
        sub_type="service",
        name="ci service",
        description="used by CI",
        workspace_id=ws.id,
        scopes=["completions.write", "logs.view"],
    )
    assert created.id
    assert created.key and len(created.key) >= 32
    assert created.object == "api-key"
    assert created.key.startswith("tg-")

    listed = pk.api_keys.list(workspace_id=ws.id)
    assert listed.total >= 1
    entry = next(k for k in listed.data if k["id"] == created.id)
    assert entry["name"] == "ci service"
    assert_no_secret(listed, created.key)

    got = pk.api_keys.retrieve(id=created.id)
    assert got.id == created.id
    assert got.name == "ci service"
    assert got.description == "used by CI"
    assert got.type == "workspace-service"
    assert got.status == "active"
    assert got.workspace_id == ws.id
    assert set(got.scopes) == {"completions.write", "logs.view"}
    assert_no_secret(got, created.key)

    # The new key answers on the gateway (an empty catalogue, but 200).
    r = tollgate.call("GET", "/v1/models", key=created.key)
    assert r.status_code == 200, r.text

    pk.api_keys.update(id=created.id, name="ci service v2", scopes=["completions.write"])
    got = pk.api_keys.retrieve(id=created.id)
    assert got.name == "ci service v2"
    assert got.scopes == ["completions.write"]

    # The key cannot read logs any more, and a workspace key is no admin.
    assert tollgate.call("GET", "/v1/logs", key=created.key).status_code == 403
    with pytest.raises(pk_errors.PermissionDeniedError):
        admin(tollgate, key=created.key).admin.workspaces.create(name=unique("nope"))

    pk.api_keys.delete(id=created.id)
    assert tollgate.call("GET", "/v1/models", key=created.key).status_code == 401
    with pytest.raises(pk_errors.NotFoundError):
        pk.api_keys.retrieve(id=created.id)


# ---- integrations ----


def test_integrations_lifecycle(tollgate: Tollgate, mocks: Dict[str, Mock]) -> None:
    pk = admin(tollgate)
    ws = pk.admin.workspaces.create(name=unique("Integrations"))
    ws_key = pk.api_keys.create(
        type="workspace", sub_type="service", name="k", workspace_id=ws.id, scopes=["completions.write"]
    ).key

    # An organisation-level OpenAI integration ("Connected").
    oai_slug = unique("sdk-openai")
    created = pk.integrations.create(
        name="SDK OpenAI",
        slug=oai_slug,
        ai_provider_id="openai",
        key=OPENAI_SECRET,
        description="through the SDK",
        configurations={"custom_host": f"{mocks['openai'].url}/v1", "openai_organization": "org-test"},
    )
    assert created.slug == oai_slug
    assert created.id
    assert_no_secret(created, OPENAI_SECRET)

    # A workspace-owned Anthropic integration ("Workspace-Created").
    ant_slug = unique("sdk-anthropic")
    pk.integrations.create(
        name="SDK Anthropic",
        slug=ant_slug,
        ai_provider_id="anthropic",
        key=ANTHROPIC_MOCK_KEY,
        workspace_id=ws.id,
        configurations={"custom_host": f"{mocks['anthropic'].url}/v1"},
    )

    org_list = pk.integrations.list(type="organisation")
    org_slugs = [i.slug for i in org_list.data]
    assert oai_slug in org_slugs and ant_slug not in org_slugs
    ws_list = pk.integrations.list(type="workspace")
    ws_slugs = [i.slug for i in ws_list.data]
    assert ant_slug in ws_slugs and oai_slug not in ws_slugs
    by_ws = pk.integrations.list(type="workspace", workspace_id=ws.id)
    assert [i.slug for i in by_ws.data] == [ant_slug]
    everything = pk.integrations.list(type="all")
    assert {oai_slug, ant_slug} <= {i.slug for i in everything.data}
    for listing in (org_list, ws_list, by_ws, everything):
        assert_no_secret(listing, OPENAI_SECRET, ANTHROPIC_MOCK_KEY)

    got = pk.integrations.retrieve(slug=oai_slug)
    assert got.slug == oai_slug
    assert got.name == "SDK OpenAI"
    assert got.description == "through the SDK"
    assert got.ai_provider_id == "openai"
    assert got.status == "active"
    assert got.object == "integration"
    assert got.workspace_id is None
    assert got.configurations["custom_host"] == f"{mocks['openai'].url}/v1"
    assert got.configurations["openai_organization"] == "org-test"
    assert got.endpoint_type == "private", "custom_host makes it private"
    assert got.masked_key and got.masked_key != OPENAI_SECRET
    assert_no_secret(got, OPENAI_SECRET)
    ant = pk.integrations.retrieve(slug=ant_slug)
    assert ant.workspace_id == ws.id
    assert ant.ai_provider_id == "anthropic"
    assert_no_secret(ant, ANTHROPIC_MOCK_KEY)

    # Update: name, description and a new key; the mask changes, the
    # plain key is still never returned.
    pk.integrations.update(slug=oai_slug, name="SDK OpenAI (renamed)", description="renamed", key=ROTATED_SECRET)
    got2 = pk.integrations.retrieve(slug=oai_slug)
    assert (got2.name, got2.description) == ("SDK OpenAI (renamed)", "renamed")
    assert got2.masked_key != got.masked_key
    assert_no_secret(got2, OPENAI_SECRET, ROTATED_SECRET)

    # Models: only gpt-4o and gpt-4o-mini.
    pk.integrations.models.update(
        slug=oai_slug,
        allow_all_models=False,
        models=[{"slug": "gpt-4o", "enabled": True}, {"slug": "gpt-4o-mini", "enabled": True}],
    )
    models = pk.integrations.models.list(slug=oai_slug)
    assert models.allow_all_models is False
    enabled = {m.slug for m in models.models if m.enabled}
    assert enabled == {"gpt-4o", "gpt-4o-mini"}

    # Not provisioned yet: the workspace cannot use it.
    assert tollgate.call("GET", "/v1/models", key=ws_key).status_code == 200
    denied = tollgate.call("POST", "/v1/chat/completions", key=ws_key,
                           body={"model": f"@{oai_slug}/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert denied.status_code in (403, 404), denied.text

    # Provision it to the workspace.
    pk.integrations.workspaces.update(
        slug=oai_slug,
        workspaces=[{"id": ws.id, "enabled": True}],
        global_workspace_access={"enabled": False},
        override_existing_workspaces_access=False,
    )
    access = pk.integrations.workspaces.list(slug=oai_slug)
    entries = access.workspaces if access.workspaces is not None else access.data
    entry = next(w for w in entries if w.id == ws.id)
    assert entry.enabled is True
    assert pk.integrations.retrieve(slug=oai_slug).workspace_count == 1

    # It is now a provider in the workspace, with the provisioned models.
    ids = {m["id"] for m in tollgate.ok("GET", "/v1/models", key=ws_key)["data"]}
    assert {f"@{oai_slug}/gpt-4o", f"@{oai_slug}/gpt-4o-mini"} <= ids
    assert chat(tollgate, ws_key, f"@{oai_slug}/gpt-4o") == MOCK_REPLY
    # The workspace's own Anthropic integration works for it too once provisioned.
    pk.integrations.workspaces.update(slug=ant_slug, workspaces=[{"id": ws.id, "enabled": True}])
    assert chat(tollgate, ws_key, f"@{ant_slug}/claude-3-5-haiku-20241022") == MOCK_REPLY

    # A model outside the allowed list is refused.
    r = tollgate.call("POST", "/v1/chat/completions", key=ws_key,
                      body={"model": f"@{oai_slug}/gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 412, r.text
    assert r.json()["error"]["type"] == "model_not_allowed_error"

    # Revoking access takes effect on the next request.
    pk.integrations.workspaces.update(slug=oai_slug, workspaces=[{"id": ws.id, "enabled": False}])
    r = tollgate.call("POST", "/v1/chat/completions", key=ws_key,
                      body={"model": f"@{oai_slug}/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code in (403, 404), r.text

    # Delete.
    pk.integrations.delete(slug=oai_slug)
    with pytest.raises(pk_errors.NotFoundError):
        pk.integrations.retrieve(slug=oai_slug)
    assert oai_slug not in {i.slug for i in pk.integrations.list(type="all").data}
    pk.integrations.delete(slug=ant_slug)
    r = tollgate.call("POST", "/v1/chat/completions", key=ws_key,
                      body={"model": f"@{ant_slug}/claude-3-5-haiku-20241022",
                            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404, r.text


def test_provider_catalogue(tollgate: Tollgate) -> None:
    r = tollgate.ok("GET", "/v1/ai-providers")
    by_id = {p["id"]: p for p in r["data"]}
    assert {"openai", "anthropic", "bedrock", "vertex-ai", "google", "azure-openai"} <= set(by_id)
    fields = {f["name"]: f for f in by_id["bedrock"]["credential_fields"]}
    assert fields["aws_secret_access_key"]["secret"] is True
