"""The dashboard in a real browser (headless Debian Chromium driven by
Playwright): the whole admin flow with no curl, then a workspace admin's
confined view. Controls are found by their visible names and labels.
Screenshots of each screen go to docs/screenshots/ (shown in the README).

`tests/sdk/run` installs Debian's `chromium` when /usr/bin/chromium is
missing; without it these tests fail rather than skip."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Dict, List

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import OPENAI_MOCK_KEY, REPO, Mock, Tollgate, create_workspace, create_workspace_key, unique

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Browser:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: tests/sdk/run installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_page(browser: Browser, width: int = 1280, height: int = 800) -> Page:
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    dialogs: List[str] = []
    # Any alert() would be script injected into a page: record it.
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    return page


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, tg: Tollgate, key: str) -> None:
    page.goto(f"{tg.url}/")
    expect(page.get_by_role("heading", name="Sign in to Tollgate")).to_be_visible()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Integrations")).to_be_visible()


def nav(page: Page, name: str):
    """A link of the main navigation."""
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def reload_until(page: Page, check, timeout: float = 15.0) -> None:
    """The request log is written in batches: reloads until `check` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
            page.reload()


def test_the_admin_flow_in_a_browser(browser: Browser, tollgate: Tollgate, mocks: Dict[str, Mock]) -> None:
    tg, mock = tollgate, mocks["openai"]
    page = new_page(browser)

    # 1. Sign in (the key field is a password input; the cookie is HttpOnly).
    page.goto(f"{tg.url}/")
    shot(page, "sign-in")
    sign_in(page, tg, tg.org_key)
    cookies = page.context.cookies()
    session = [c for c in cookies if c["name"] == "tollgate_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert tg.org_key not in str(cookies)
    assert page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"

    # Two workspaces, created in the UI.
    team_a, team_b = unique("Team A"), unique("Team B")
    for name in (team_a, team_b):
        nav(page, "Workspaces").click()
        page.get_by_label("Workspace name").fill(name)
        page.get_by_role("button", name="Create workspace").click()
        expect(page.get_by_role("heading", name=f"Workspace {name}")).to_be_visible()
    nav(page, "Workspaces").click()
    shot(page, "workspaces")

    # 2. Connect an integration to the mock upstream, from the catalogue.
    nav(page, "Integrations").click()
    page.get_by_label("Search providers").fill("openai")
    page.get_by_role("button", name="Search").click()
    shot(page, "integrations-all")
    page.get_by_role("link", name="Connect OpenAI", exact=True).click()
    expect(page.get_by_text("Step 1 of 3: Details and credentials")).to_be_visible()
    slug = unique("mock")
    # A bad custom host is refused by the API, and the message sits by its field.
    page.get_by_label("Name").fill("Mock OpenAI")
    page.get_by_label("Slug").fill(slug)
    page.get_by_label("API key").fill(OPENAI_MOCK_KEY)
    page.get_by_label("Custom host (base URL)").fill("ftp://nowhere")
    page.get_by_role("button", name="Create and continue").click()
    host = page.get_by_label("Custom host (base URL)")
    expect(host).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-custom_host-err")).to_contain_text("custom_host")
    # The secret is never shown back, even in a form being corrected.
    expect(page.get_by_label("API key")).to_have_value("")
    page.get_by_label("API key").fill(OPENAI_MOCK_KEY)
    host.fill(f"{mock.url}/v1")
    shot(page, "create-integration-1-details")
    page.get_by_role("button", name="Create and continue").click()

    # 3. Provision two workspaces: one with a budget, one with a rate limit.
    expect(page.get_by_text("Step 2 of 3: Workspace provisioning")).to_be_visible()
    expect(page.get_by_text("cannot be edited once set")).to_be_visible()
    page.get_by_label("Specific workspaces").check()
    page.get_by_label(f"Provision {team_a}").check()
    page.get_by_label(f"Budget type for {team_a}").select_option("cost")
    page.get_by_label(f"Budget limit for {team_a}").fill("5")
    page.get_by_label(f"Alert threshold for {team_a}").fill("4")
    page.get_by_label(f"Periodic reset for {team_a}").select_option("monthly")
    page.get_by_label(f"Provision {team_b}").check()
    page.get_by_label(f"Rate limit for {team_b}").fill("100")
    shot(page, "create-integration-2-workspaces")
    page.get_by_role("button", name="Save and continue").click()

    # 4. Allow two models, add a custom model with a custom price.
    expect(page.get_by_text("Step 3 of 3: Model provisioning")).to_be_visible()
    page.get_by_label("Only the models picked below").check()
    page.get_by_label("Search models").fill("gpt-4o")
    page.get_by_label("gpt-4o", exact=True).check()
    page.get_by_label("gpt-4o-mini", exact=True).check()
    page.get_by_label("Custom model slug").fill("acme-ft")
    page.get_by_label("Base model").fill("gpt-4o")
    page.get_by_label("Input price (cents per token)").fill("0.0005")
    page.get_by_label("Output price (cents per token)").fill("0.002")
    shot(page, "create-integration-3-models")
    page.get_by_role("button", name="Finish").click()
    expect(page.get_by_role("heading", name="Integration Mock OpenAI")).to_be_visible()
    shot(page, "integration-detail")

    page.get_by_role("link", name="Models", exact=True).click()
    expect(page.get_by_role("cell", name="acme-ft", exact=True)).to_be_visible()
    expect(page.get_by_label("gpt-4o", exact=True)).to_be_checked()
    expect(page.get_by_label("gpt-4o-mini", exact=True)).to_be_checked()

    nav(page, "Integrations").click()
    page.get_by_role("link", name="Connected", exact=True).click()
    row = page.get_by_role("row").filter(has_text=slug)
    expect(row).to_contain_text("2")  # workspaces
    expect(row).not_to_contain_text(OPENAI_MOCK_KEY)
    shot(page, "integrations-connected")

    # 5. A workspace key for Team A, shown once with a copy button.
    nav(page, "API keys").click()
    page.get_by_label("Key name").fill("team-a-app")
    page.get_by_label("Workspace", exact=True).select_option(label=team_a)
    page.get_by_label("logs.view").check()
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("status", name="New key")
    expect(shown).to_contain_text("shown only once")
    expect(shown.get_by_role("button", name="Copy the new key")).to_be_visible()
    key = shown.locator("code").inner_text().strip()
    assert len(key) > 30
    shot(page, "api-keys")

    # 6. A chat through the gateway with the openai SDK.
    client = OpenAI(base_url=tg.v1, api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=f"@{slug}/gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content
    # Models outside the picked list are refused.
    with pytest.raises(Exception):
        client.chat.completions.create(model=f"@{slug}/gpt-4-turbo", messages=[{"role": "user", "content": "Hi"}])

    # 7. The request in Logs, its cost in Analytics, the budget bar moved.
    nav(page, "Logs").click()
    page.get_by_label("Provider", exact=True).fill(slug)
    page.get_by_label("Model", exact=True).fill("gpt-4o")
    page.get_by_label("Status").fill("200")
    page.get_by_role("button", name="Filter").click()
    reload_until(page, lambda: expect(page.get_by_role("cell", name="gpt-4o", exact=True)).to_be_visible(timeout=500))
    shot(page, "logs")
    page.get_by_role("link", name=re.compile(r"^View request")).first.click()
    expect(page.get_by_text(slug).first).to_be_visible()
    shot(page, "log-detail")

    nav(page, "Analytics").click()
    page.get_by_label("Interval").select_option("hour")
    page.get_by_role("button", name="Apply").click()
    cost = page.locator(".summary strong")
    expect(cost).not_to_have_text(re.compile(r"^0(\.0+)? USD$"))
    expect(page.get_by_role("img", name=re.compile("^Cost"))).to_be_visible()
    expect(page.get_by_role("heading", name="By model")).to_be_visible()
    shot(page, "analytics")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Export cost as CSV").click()
    assert dl.value.suggested_filename.endswith(".csv")

    page.goto(f"{tg.url}/ui/integrations/{slug}/workspaces")
    bar = page.get_by_role("meter", name=re.compile(f"^Budget for {team_a}"))
    expect(bar).to_be_visible()
    assert float(bar.get_attribute("value")) > 0
    expect(page.get_by_text(re.compile("next reset"))).to_be_visible()
    shot(page, "integration-workspaces")

    # Audit log and the workspace page (model catalogue, limits, keys).
    nav(page, "Audit log").click()
    page.get_by_label("Object type").fill("integration")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="create", exact=True).first).to_be_visible()
    shot(page, "audit")
    nav(page, "Workspaces").click()
    page.get_by_role("link", name=team_a, exact=True).click()
    expect(page.get_by_text(f"@{slug}/gpt-4o-mini")).to_be_visible()
    expect(page.get_by_role("button", name=f"Copy @{slug}/acme-ft")).to_be_visible()
    expect(page.get_by_role("meter")).to_be_visible()
    shot(page, "workspace")

    # A phone-sized screen still shows the page without sideways scrolling.
    phone = page.context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(page.url)
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(phone, "workspace-phone")
    phone.close()

    # Sign-out ends the session on the server.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to Tollgate")).to_be_visible()
    page.goto(f"{tg.url}/ui/logs")
    expect(page.get_by_role("heading", name="Sign in to Tollgate")).to_be_visible()
    assert page.dialogs == []  # type: ignore[attr-defined]
    page.context.close()


def test_names_show_as_text(browser: Browser, tollgate: Tollgate) -> None:
    tg = tollgate
    evil = "<img src=x onerror=alert(1)>"
    slug = unique("evil")
    tg.ok("POST", "/v1/integrations", {"name": evil, "slug": slug, "ai_provider_id": "openai", "key": "sk-x"})
    page = new_page(browser)
    sign_in(page, tg, tg.org_key)
    page.get_by_role("link", name="Connected", exact=True).click()
    expect(page.get_by_role("link", name=evil)).to_be_visible()
    page.get_by_role("link", name=evil).click()
    expect(page.get_by_role("heading", name=f"Integration {evil}")).to_be_visible()
    assert page.locator("img").count() == 0
    # Delete needs the slug typed back.
    page.get_by_label("Type the slug to confirm deletion").fill("wrong")
    page.get_by_role("button", name="Delete integration").click()
    expect(page.get_by_text(f"Type {slug} exactly")).to_be_visible()
    page.get_by_label("Type the slug to confirm deletion").fill(slug)
    page.get_by_role("button", name="Delete integration").click()
    expect(page.get_by_role("link", name=evil)).to_have_count(0)
    assert page.dialogs == []  # type: ignore[attr-defined]
    page.context.close()


def test_a_workspace_admin_sees_only_its_workspace(browser: Browser, tollgate: Tollgate, mocks: Dict[str, Mock]) -> None:
    tg = tollgate
    own_name, other_name = unique("Own"), unique("Hidden")
    own, other = create_workspace(tg, own_name), create_workspace(tg, other_name)
    other_slug = unique("hidden-int")
    tg.ok("POST", "/v1/integrations", {"name": other_slug, "slug": other_slug, "ai_provider_id": "openai",
                                       "key": "sk-x", "workspace_id": other})
    admin_key = create_workspace_key(tg, own, ["workspace_integrations.*", "providers.*", "logs.view",
                                               "analytics.view", "completions.write"])["key"]
    page = new_page(browser)
    sign_in(page, tg, admin_key)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="My workspace")).to_be_visible()
    for hidden in ("Workspaces", "API keys", "Audit log"):
        expect(nav.get_by_role("link", name=hidden, exact=True)).to_have_count(0)
    page.get_by_role("link", name="Workspace-Created", exact=True).click()
    expect(page.locator("main")).not_to_contain_text(other_slug)
    nav.get_by_role("link", name="My workspace").click()
    expect(page.get_by_role("heading", name=f"Workspace {own_name}")).to_be_visible()
    shot(page, "workspace-admin")
    # Another workspace's page, logs and analytics stay closed.
    resp = page.goto(f"{tg.url}/ui/workspaces/{other}")
    assert resp.status in (403, 404)
    expect(page.locator("body")).not_to_contain_text(other_name)
    page.goto(f"{tg.url}/ui/logs?workspace_id={other}")
    expect(page.locator("body")).not_to_contain_text(other_name)
    page.goto(f"{tg.url}/ui/analytics")
    expect(page.get_by_label("Workspace", exact=True)).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text(other_name)
    # A workspace admin creates integrations only in its own workspace.
    page.goto(f"{tg.url}/ui/integrations/new?provider=anthropic")
    expect(page.get_by_text(f"belong to your workspace ({own})")).to_be_visible()
    page.context.close()
