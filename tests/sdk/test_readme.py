"""The README as a new user meets it: `cargo run` picks the `tollgate`
binary, the quick start runs as one block, the Python snippet prints the
answer, and the lost-key command prints a key.

The quick start block is run through bash exactly as the README has it,
with two substitutions only: `cargo run --release --` becomes the already
built binary (a release build would take minutes; `cargo metadata` checks
separately that `cargo run` picks that binary without `--bin`), and the
README's ports 8787 and 9090 become free ones, so that the test never meets
another process on a fixed port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from conftest import MOCK_REPLY, REPO, binary, free_port

README = (REPO / "README.md").read_text()
CARGO_RUN = "cargo run --release --"


def fenced_blocks(lang: str) -> List[Tuple[str, str]]:
    """(the heading above, the text) of every ```lang block."""
    blocks = []
    heading = ""
    lines = README.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == f"```{lang}":
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((heading, "\n".join(body) + "\n"))
        i += 1
    return blocks


def quick_start() -> str:
    found = [text for heading, text in fenced_blocks("sh") if heading == "Quick start"]
    assert len(found) == 1, "the README has one quick start block"
    return found[0]


def cargo_run_lines() -> List[str]:
    """Every `cargo run ... -- <subcommand>` the README shows, in blocks or inline."""
    return re.findall(r"cargo run --release -- [^`\n&>]+", README)


def test_cargo_run_picks_the_tollgate_binary_without_bin():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    default_bins = [
        t["name"]
        for pid in meta["workspace_default_members"]
        for t in packages[pid]["targets"]
        if "bin" in t["kind"]
    ]
    assert default_bins == ["tollgate"], default_bins
    # ...and `cargo build --workspace` still builds every binary.
    all_bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    assert {"tollgate", "tollgate-loadgen"} <= all_bins
    # Every command the README runs through `cargo run` exists.
    lines = cargo_run_lines()
    assert {l.split("--", 2)[-1].split()[0] for l in lines} >= {"serve", "mock-upstream", "admin-key"}, lines
    for line in lines:
        words = shlex.split(line.split(" -- ", 1)[1])
        sub = [w for w in words if not w.startswith("-")][:2]
        if sub[0] == "admin-key":
            sub = sub[:2]
        else:
            sub = sub[:1]
        r = subprocess.run([str(binary()), *sub, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{line}: {r.stderr}"


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def json_objects(text: str) -> List[Dict]:
    """Every top-level JSON object printed in `text`."""
    out, i, dec = [], 0, json.JSONDecoder()
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        try:
            obj, end = dec.raw_decode(text, i)
            out.append(obj)
            i = end
        except ValueError:
            i += 1


def test_the_quick_start_and_the_python_snippet_run_as_written(tmp_path: Path):
    assert shutil.which("jq"), "the quick start needs jq (./scripts/test installs it)"
    assert shutil.which("curl"), "the quick start needs curl"
    tollgate_port, mock_port = free_port(), free_port()

    def ports(text: str) -> str:
        return text.replace(":8787", f":{tollgate_port}").replace("9090", str(mock_port))

    script = ports(quick_start()).replace(CARGO_RUN, shlex.quote(str(binary())))
    assert CARGO_RUN not in script
    # What the rest of this test needs from the shell: the workspace key.
    script = "set -e\n" + script + "printf '\\nQUICKSTART_KEY=%s\\n' \"$KEY\"\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update({"TOLLGATE_LISTEN": f"127.0.0.1:{tollgate_port}", "NO_COLOR": "1"})
    out_file, err_file = tmp_path / "quickstart.out", tmp_path / "quickstart.err"
    with open(out_file, "w") as out_fh, open(err_file, "w") as err_fh:
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
            stdout=out_fh, stderr=err_fh,
        )
    try:
        # bash ends after the last line; the server and the mock it started
        # in the background keep running until kill_group.
        try:
            code = shell.wait(timeout=180)
        except subprocess.TimeoutExpired:
            code = None
        out, err = out_file.read_text(), err_file.read_text()
        assert code == 0, f"the quick start failed ({code}):\n{out}\n{err}"
        last = out.strip().splitlines()[-1]
        assert last.startswith("QUICKSTART_KEY="), out
        key = last.split("=", 1)[1]
        assert re.fullmatch(r"tg-[0-9a-f]{64}", key), out

        # The admin key went to stdout (tollgate.out), alone on its line.
        first = (tmp_path / "tollgate.out").read_text()
        assert re.search(r"^\s*tg-[0-9a-f]{64}\s*$", first, re.M), first

        objects = json_objects(out)
        completions = [o for o in objects if o.get("object") == "chat.completion"]
        assert completions and completions[0]["choices"][0]["message"]["content"] == MOCK_REPLY, out
        assert any("data" in o and "total" in o for o in objects), f"no request log printed: {out}"
        assert not any("error" in o or o.get("success") is False for o in objects), out

        # The Python snippet, verbatim but for the port, with KEY from the shell.
        # The quick start's snippet is the README's first Python block; later
        # sections show other clients.
        snippet = [text for _, text in fenced_blocks("python")][0]
        assert "from openai import OpenAI" in snippet, snippet
        r = subprocess.run(
            [sys.executable, "-c", ports(snippet)], env={**env, "KEY": key},
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == MOCK_REPLY, r.stdout

        # "Lost the admin key?": the command as written, beside the running server.
        (lost,) = [l for l in cargo_run_lines() if "admin-key create" in l]
        r = subprocess.run(
            shlex.split(lost.replace(CARGO_RUN, shlex.quote(str(binary()))).strip()),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(r"tg-[0-9a-f]{64}\n", r.stdout), r.stdout
    finally:
        kill_group(shell)
