"""Every ```python block of docs/integrations.md runs as written.

Each block runs as its own `python` process against a fresh server started with default flags
(what the document promises: `mnemo serve`, no authentication, loopback), with env
MNEMO_BASE_URL set to that server; blocks read it with
`os.environ.get("MNEMO_BASE_URL", "http://127.0.0.1:8080")`. A block passes when the process
exits with status 0 (its own `assert`s are the checks). A block whose first line is
`# not run` is skipped (fragments, or code that needs a model provider)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, MnemoServer

DOC = REPO_ROOT / "docs" / "integrations.md"
SKIP_MARK = "# not run"
BLOCK_TIMEOUT = 90.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    heading: str
    code: str

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"L{self.line}-{slug[:40]}"


def python_blocks(text: str) -> list[Block]:
    """The fenced code blocks whose info string's language is `python` or `py`, in order."""
    blocks: list[Block] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = (m["info"].split() or [""])[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) and not close["info"].strip():
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if lang in ("python", "py", "python3"):
            blocks.append(Block(line=i + 1, heading=heading, code="\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _blocks() -> list[Block]:
    return python_blocks(DOC.read_text(encoding="utf-8")) if DOC.exists() else []


def test_block_extraction():
    doc = (
        "# A\n```python\nprint(1)\n```\n## B\n~~~py\nx = '```'\n~~~\n"
        "```sh\necho no\n```\n  ```python\n  if True:\n      pass\n  ```\n````python\n```\n````\n"
    )
    got = python_blocks(doc)
    assert [(b.line, b.heading, b.code) for b in got] == [
        (2, "A", "print(1)\n"),
        (6, "B", "x = '```'\n"),
        (12, "B", "if True:\n    pass\n"),
        (16, "B", "```\n"),
    ]


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: b.name)
def test_example_runs(block: Block, tmp_path: Path):
    first = block.code.lstrip("\n").splitlines()[0].strip() if block.code.strip() else ""
    if first.lower().startswith(SKIP_MARK):
        pytest.skip(f"{DOC.name}:{block.line} is marked '{SKIP_MARK}'")
    script = tmp_path / f"example_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    srv = MnemoServer(name="mnemo-doc")
    try:
        srv.start()
        env = dict(os.environ)
        env.update({
            "MNEMO_BASE_URL": srv.base_url,
            "OPENAI_AGENTS_DISABLE_TRACING": "1",  # examples make no model call; export nothing
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
    finally:
        srv.close()
    assert proc.returncode == 0, (
        f"{DOC.name}:{block.line} ({block.heading}) exited with {proc.returncode}\n"
        f"--- code ---\n{block.code}--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
