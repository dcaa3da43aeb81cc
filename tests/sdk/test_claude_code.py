"""Claude Code's print mode (`claude -p`) through Tollgate, offline: against
the Anthropic mock (relayed natively) and the OpenAI mock (translated), with
the setup the README shows (ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN, the
model as `@provider/model`).

It needs Claude Code's native binary: `$CLAUDE_BIN`, or the one `tests/sdk/run`
installs from npm into `.claude-code/`. Without either (no npm on the
machine) the test is skipped and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MOCK_REPLY, REPO, Gateway


def claude_binary() -> str | None:
    if os.environ.get("CLAUDE_BIN"):
        return os.environ["CLAUDE_BIN"]
    installed = sorted((REPO / ".claude-code" / "node_modules" / "@anthropic-ai").glob("claude-code-*/claude"))
    if installed:
        return str(installed[0])
    return shutil.which("claude")


@pytest.mark.parametrize("protocol", ["anthropic", "openai"])
def test_claude_code_print_mode(gateway: Gateway, protocol: str, tmp_path: Path) -> None:
    binary = claude_binary()
    if binary is None:
        pytest.skip("Claude Code is not installed: set CLAUDE_BIN or let tests/sdk/run install it with npm")
    # Claude Code refuses model names it does not know as Claude models; the
    # OpenAI mock serves any name, so both are called with a Claude name.
    model = f"@{gateway.slugs[protocol]}/claude-sonnet-4-5"
    before = gateway.tg.logs(gateway.key, provider=gateway.slugs[protocol])["total"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": gateway.tg.url,
        "ANTHROPIC_AUTH_TOKEN": gateway.key,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        # Offline: no telemetry, update checks or other calls home.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [binary, "-p", "Say hello", "--disallowedTools", "Bash,Edit,Write,NotebookEdit,WebFetch,WebSearch"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert MOCK_REPLY in done.stdout, (done.stdout, done.stderr[-2000:])
    rows = gateway.tg.wait_for_logs(before + 1, key=gateway.key, provider=gateway.slugs[protocol])
    assert any(r["endpoint"] == "messages" and r["status_code"] == 200 for r in rows), rows
