"""The reference in docs/ is held to the code: every config key has a row in docs/config.md (and
every row names a key), every subcommand and flag has an entry in docs/cli.md (and every entry
exists), every relative link and anchor in README.md and docs/ resolves, and every fenced
`r2p1d` command in README.md and docs/ parses with the CLI's own parser."""
from __future__ import annotations

import argparse
import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from pydantic import BaseModel

from r2p1d_batch.cli import build_parser
from r2p1d_batch.config import Config

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "infra" / "README.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)\n.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
KEY = re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)*)`")


# ---- config keys ------------------------------------------------------------------------------

def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every leaf key of the typed config, dotted (a nested section recurses; a dict-valued key
    such as decode.codec_options is a leaf)."""
    keys = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= config_keys(kind, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def documented_keys(text: str) -> set[str]:
    """Keys named in the first cell of a table row of docs/config.md."""
    keys = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys |= set(KEY.findall(line.split("|")[1]))
    return keys


def test_every_config_key_has_a_row_and_every_row_a_key():
    keys, rows = config_keys(), documented_keys((REPO / "docs" / "config.md").read_text())
    assert len(keys) > 80  # the walk found the sections
    assert keys - rows == set(), "config keys with no row in docs/config.md"
    assert rows - keys == set(), "docs/config.md rows for keys config.py does not have"


def test_documented_keys_reads_rows_not_prose():
    text = "| `a.b`, `a.c_d` | 1 | x `not.this` |\nprose `e.f`\n| key | default |\n"
    assert documented_keys(text) == {"a.b", "a.c_d"}


# ---- CLI subcommands and flags ------------------------------------------------------------------

def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def cli_sections(text: str) -> dict[str, str]:
    """docs/cli.md's sections: '## `r2p1d NAME`' → its text; the options every command shares
    under 'shared'."""
    parts = re.split(r"^## (?:`r2p1d ([a-z-]+)`|(Options every command shares))[^\n]*$", text, flags=re.M)
    return {name or shared: body for name, shared, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def test_every_subcommand_and_flag_has_an_entry():
    sections = cli_sections((REPO / "docs" / "cli.md").read_text())
    commands = subcommands()
    shared = set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)", sections.pop("Options every command shares"), re.M))
    assert set(sections) == set(commands)
    assert shared == {"--log-level", "--config", "--set"}
    for name, parser in commands.items():
        entries = set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)", sections[name], re.M))
        also = set(re.findall(r"`(--[a-z][a-z0-9-]*)`", sections[name].split("\nAlso:")[-1])) & shared
        assert flags(parser) - entries - also == set(), f"r2p1d {name}: flags with no entry in docs/cli.md"
        assert (entries | also) - flags(parser) == set(), f"r2p1d {name}: docs/cli.md names flags it does not have"


# ---- links and anchors ------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slug_matches_github():
    assert slug("Running on a cluster (KubeRay, `ray up`) and keeping it private") == \
        "running-on-a-cluster-kuberay-ray-up-and-keeping-it-private"
    assert slug("GPU decode (NVDEC)") == "gpu-decode-nvdec"
    assert slug("`r2p1d label`") == "r2p1d-label"
    assert slug("Scale (`runs/a_b.py`)") == "scale-runsa_bpy"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert broken == []


def test_a_broken_anchor_is_caught(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n## Two words\n\n[ok](#two-words) [bad](#nope) [gone](missing.md)\n")
    assert anchors(page) == {"top", "two-words"}
    assert links(page) == ["#two-words", "#nope", "missing.md"]


# ---- fenced r2p1d commands ------------------------------------------------------------------------

def fenced_commands(text: str) -> list[str]:
    """`r2p1d ...` command lines in fenced code blocks (backslash continuations and quoted strings
    that span lines joined, comments dropped)."""
    commands = []
    for block in SHELL_FENCE.finditer(text):
        lines = [line.strip().removeprefix("$ ") for line in block.group(0).splitlines()[1:-1]]
        while lines:
            line = lines.pop(0)
            if not (line.startswith("r2p1d ") or line == "r2p1d"):
                continue
            while True:
                if line.endswith("\\") and lines:
                    line = line[:-1] + " " + lines.pop(0)
                    continue
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:  # a quoted string goes on on the next line
                    if not lines:
                        raise
                    line += "\n" + lines.pop(0)
                    continue
                break
            commands.append(shlex.join(words))
    return commands


def test_fenced_commands_are_found():
    text = ("```bash\nr2p1d query OUT \\\n  --report labels   # it's a comment\nls\n"
            "r2p1d query OUT \"SELECT 1\n  FROM clips\"\n```\nr2p1d not fenced\n")
    assert fenced_commands(text) == ["r2p1d query OUT --report labels", "r2p1d query OUT 'SELECT 1\nFROM clips'"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_fenced_r2p1d_commands_parse(page, capsys):
    commands = fenced_commands(page.read_text())
    if page.name == "README.md" and page.parent == REPO:
        assert len(commands) >= 8
    failed = []
    for line in commands:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit as e:
            if e.code:
                failed.append(f"{line}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert failed == []
