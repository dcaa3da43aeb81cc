"""Fixtures for the SDK suite: a real `tollgate serve` process on a free port
with its own temporary data directory, `tollgate mock-upstream` processes for
the protocols under test, and the objects (workspaces, keys, integrations)
the gateway tests share.

Nothing is built here: the binary is `$TOLLGATE_BIN`, or
`target/debug/tollgate` under the repository root (`tests/sdk/run` builds it).
Readiness is awaited by polling (`GET /health`, the mock's start-up line),
never by fixed sleeps, and every process is stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]

# The fixed test credentials `tollgate mock-upstream` accepts (see
# docs/SDK_TESTS.md); the mocks print them on start-up.
ANTHROPIC_MOCK_KEY = "sk-ant-test"
BEDROCK_MOCK = {
    "aws_region": "us-east-1",
    "aws_access_key_id": "AKIATOLLGATETEST0001",
    "aws_secret_access_key": "tollgate/test+secret/AAAAAAAAAAAAAAAAAAAAAAAA",
}
AZURE_MOCK_KEY = "azure-test-key"
GEMINI_MOCK_KEY = "gemini-test-key"
VERTEX_MOCK = {"vertex_project_id": "test-project", "vertex_region": "us-central1"}
# The OpenAI mock accepts any key; the gateway still needs one to send.
OPENAI_MOCK_KEY = "sk-openai-mock-0123456789"

# The mocks' deterministic answer (tollgate_testkit::control defaults).
MOCK_REPLY = "Hello from the mock upstream."
MOCK_PROMPT_TOKENS = 12
MOCK_COMPLETION_TOKENS = 7

START_TIMEOUT_S = 30.0


def binary() -> Path:
    path = Path(os.environ.get("TOLLGATE_BIN") or REPO / "target" / "debug" / "tollgate")
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.exit(f"tollgate binary not found at {path}: build it or set TOLLGATE_BIN", returncode=2)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A slug-safe name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class LineReader:
    """Drains a process's stderr on a thread (so the pipe never fills) and
    hands lines to whoever waits for one."""

    def __init__(self, stream) -> None:
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.seen.append(line)
            self.lines.put(line)
        stream.close()

    def wait_for(self, pattern: re.Pattern, proc: subprocess.Popen, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line matching {pattern.pattern!r}; output so far: {self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if proc.poll() is not None:
                    raise RuntimeError(f"process exited with {proc.returncode}: {self.seen[-20:]}")
                continue
            m = pattern.search(line)
            if m:
                return m


@dataclass
class Mock:
    protocol: str
    url: str  # http://127.0.0.1:PORT
    line: str  # what the mock printed: base URL and credentials
    proc: subprocess.Popen


def start_mock(protocol: str) -> Mock:
    proc = subprocess.Popen(
        [str(binary()), "mock-upstream", "--protocol", protocol, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    reader = LineReader(proc.stderr)
    m = reader.wait_for(re.compile(rf"mock-upstream {protocol}: base_url=(http://127\.0\.0\.1:\d+)"), proc, START_TIMEOUT_S)
    return Mock(protocol=protocol, url=m.group(1), line=m.string, proc=proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tollgate:
    url: str  # http://127.0.0.1:PORT
    org_key: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def call(self, method: str, path: str, key: Optional[str] = None, body: Any = None, **kw) -> httpx.Response:
        headers = {"x-portkey-api-key": key or self.org_key}
        headers.update(kw.pop("headers", {}))
        return self.http.request(method, f"{self.url}{path}", headers=headers, json=body, **kw)

    def ok(self, method: str, path: str, body: Any = None, key: Optional[str] = None) -> Dict[str, Any]:
        r = self.call(method, path, key, body)
        assert r.status_code == 200, f"{method} {path} {body} -> {r.status_code} {r.text}"
        return r.json()

    def logs(self, key: Optional[str] = None, **query: str) -> Dict[str, Any]:
        r = self.call("GET", "/v1/logs", key, params=query)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for_logs(self, count: int, key: Optional[str] = None, timeout: float = 15.0, **query: str) -> List[Dict]:
        """The request log is written in batches off the response path:
        polls until `count` records match `query`."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.logs(key, **query)
            if body["total"] >= count or time.monotonic() > deadline:
                return body["data"]
            time.sleep(0.05)


def start_tollgate(tmp: Path) -> Tollgate:
    data_dir = tmp / "data"
    # Only `serve` creates a data directory; `admin-key create` needs one.
    data_dir.mkdir(mode=0o700)
    env = {**os.environ, "TOLLGATE_MASTER_KEY": secrets.token_hex(32), "NO_COLOR": "1"}
    # Create the organisation key before the server starts: `admin-key
    # create` prints only the key, and the server loads it with everything else.
    created = subprocess.run(
        [str(binary()), "admin-key", "create", "--data-dir", str(data_dir), "--name", "sdk tests"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    org_key = created.stdout.strip()
    assert org_key and "\n" not in org_key, created.stdout
    log = tmp / "tollgate.log"
    # A port picked in advance can be taken before the server binds it;
    # try again with another in that (rare) case.
    last_error = ""
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return Tollgate(url=url, org_key=org_key, data_dir=data_dir, proc=proc, log=log)
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        stop(proc)
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"tollgate did not become ready:\n{last_error}")


# The server's log, shown at the end of a failed run.
_SERVER_LOGS: List[Path] = []


def pytest_terminal_summary(terminalreporter, exitstatus) -> None:
    if exitstatus == 0:
        return
    for log in _SERVER_LOGS:
        if log.exists():
            terminalreporter.section(f"tollgate log ({log})")
            terminalreporter.write_line("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


@pytest.fixture(scope="session")
def tollgate(tmp_path_factory) -> Tollgate:
    tg = start_tollgate(tmp_path_factory.mktemp("tollgate"))
    _SERVER_LOGS.append(tg.log)
    yield tg
    tg.http.close()
    stop(tg.proc)


def mocks_of(*protocols: str):
    started: Dict[str, Mock] = {}
    try:
        for protocol in protocols:
            started[protocol] = start_mock(protocol)
        yield started
    finally:
        for m in started.values():
            stop(m.proc)


@pytest.fixture(scope="session")
def mocks() -> Dict[str, Mock]:
    """The mocks every test file uses."""
    yield from mocks_of("openai", "anthropic", "bedrock")


@pytest.fixture(scope="session")
def other_mocks() -> Dict[str, Mock]:
    """The remaining protocols' mocks, for the smoke test of each."""
    yield from mocks_of("azure", "gemini", "vertex")


def vertex_service_account(mock: Mock) -> Dict[str, Any]:
    """The key file the Vertex mock printed (its `token_uri` is the mock's)."""
    marker = "vertex_service_account_json="
    start = mock.line.index(marker) + len(marker)
    account, _ = json.JSONDecoder().raw_decode(mock.line, start)
    return account


def integration_body(protocol: str, slug: str, mock: Mock) -> Dict[str, Any]:
    """An integration pointing at `mock` with the credentials it accepts."""
    if protocol == "openai":
        return {"name": slug, "slug": slug, "ai_provider_id": "openai", "key": OPENAI_MOCK_KEY,
                "configurations": {"custom_host": f"{mock.url}/v1"}}
    if protocol == "anthropic":
        return {"name": slug, "slug": slug, "ai_provider_id": "anthropic", "key": ANTHROPIC_MOCK_KEY,
                "configurations": {"custom_host": f"{mock.url}/v1"}}
    if protocol == "bedrock":
        return {"name": slug, "slug": slug, "ai_provider_id": "bedrock",
                "configurations": {"aws_auth_type": "accessKey", "custom_host": mock.url, **BEDROCK_MOCK}}
    if protocol == "azure":
        return {"name": slug, "slug": slug, "ai_provider_id": "azure-openai", "key": AZURE_MOCK_KEY,
                "configurations": {"custom_host": mock.url, "azure_resource_name": "tollgate-test",
                                   "azure_api_version": "2024-10-21",
                                   "azure_deployment_config": [{"azure_deployment_name": "gpt4o-prod",
                                                                "azure_model_slug": "gpt-4o", "is_default": True}]}}
    if protocol == "gemini":
        return {"name": slug, "slug": slug, "ai_provider_id": "google", "key": GEMINI_MOCK_KEY,
                "configurations": {"custom_host": f"{mock.url}/v1beta"}}
    if protocol == "vertex":
        return {"name": slug, "slug": slug, "ai_provider_id": "vertex-ai",
                "configurations": {"custom_host": mock.url, **VERTEX_MOCK,
                                   "vertex_service_account_json": vertex_service_account(mock)}}
    raise ValueError(protocol)


# A model each protocol's integration is called with.
MODELS = {
    "openai": "gpt-4o",
    "anthropic": "claude-3-5-sonnet-20241022",
    "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "azure": "gpt-4o",
    "gemini": "gemini-1.5-flash",
    "vertex": "gemini-1.5-pro",
}


@dataclass
class Gateway:
    """A workspace with one integration per mock protocol provisioned to it
    (slugs in `slugs`), a workspace key allowed to call the gateway, and a
    second workspace with its own key and provider."""

    tg: Tollgate
    workspace_id: str
    key: str
    key_id: str
    slugs: Dict[str, str]
    other_workspace_id: str
    other_key: str
    other_slug: str

    def model(self, protocol: str) -> str:
        return f"@{self.slugs[protocol]}/{MODELS[protocol]}"


def create_workspace(tg: Tollgate, name: str) -> str:
    return tg.ok("POST", "/v1/admin/workspaces", {"name": name})["id"]


def create_workspace_key(tg: Tollgate, workspace_id: str, scopes: List[str]) -> Dict[str, Any]:
    return tg.ok("POST", "/v1/api-keys/workspace/service",
                 {"name": unique("key"), "workspace_id": workspace_id, "scopes": scopes})


def provision(tg: Tollgate, slug: str, workspace_ids: List[str]) -> None:
    tg.ok("PUT", f"/v1/integrations/{slug}/workspaces",
          {"workspaces": [{"id": w, "enabled": True} for w in workspace_ids]})


@pytest.fixture(scope="session")
def gateway(tollgate: Tollgate, mocks: Dict[str, Mock]) -> Gateway:
    ws = create_workspace(tollgate, unique("Gateway"))
    key = create_workspace_key(tollgate, ws, ["completions.write", "logs.view"])
    slugs = {}
    for protocol, mock in mocks.items():
        slug = unique(protocol)
        tollgate.ok("POST", "/v1/integrations", integration_body(protocol, slug, mock))
        provision(tollgate, slug, [ws])
        slugs[protocol] = slug
    other_ws = create_workspace(tollgate, unique("Other"))
    other_key = create_workspace_key(tollgate, other_ws, ["completions.write"])
    other_slug = unique("other")
    tollgate.ok("POST", "/v1/integrations", integration_body("openai", other_slug, mocks["openai"]))
    provision(tollgate, other_slug, [other_ws])
    return Gateway(tg=tollgate, workspace_id=ws, key=key["key"], key_id=key["id"], slugs=slugs,
                   other_workspace_id=other_ws, other_key=other_key["key"], other_slug=other_slug)
