"""README.md and docs/*.md cannot go stale: every `pvt` command in their code blocks parses with the real
command-line parser (nothing is run), every `make TARGET` exists in the Makefile, and every relative link
reaches a file (and a heading, for links with an anchor)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvtv2.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Blocks of these languages hold program output or Python, not shell commands.
NOT_SHELL = {"text", "python", "yaml", "json"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
# `pvt ARGS`, `python -m pvtv2 ARGS` or `torchrun ... -m pvtv2 ARGS`; the arguments are what the parser gets.
COMMAND = re.compile(r"^(?:\$\s+)?(?:pvt\s|.*\s-m\s+pvtv2\s)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")


@dataclass(frozen=True)
class Page:
    path: Path
    prose: list[tuple[int, str]]  # (line number, text) outside code blocks
    shell: list[tuple[int, str]]  # (first line number, command) in shell blocks, `\` continuations joined


def _read(path: Path) -> Page:
    """A page split into its prose and the lines of its shell code blocks (fenced with ``` or ~~~)."""
    prose: list[tuple[int, str]] = []
    shell: list[tuple[int, str]] = []
    fence, language, pending, start = "", "", "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        opened = FENCE.match(line)
        if not fence:
            if opened:
                fence, language = opened.group(1), opened.group(2).lower()
            else:
                prose.append((number, line))
            continue
        if line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            fence = ""
            continue
        if language in NOT_SHELL:
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        shell.append((start, pending + line))
        pending, start = "", 0
    return Page(path, prose, shell)


PARSED_PAGES = [_read(path) for path in PAGES]


def _where(page: Page, number: int) -> str:
    return f"{page.path.relative_to(ROOT)}:{number}"


def _commands() -> list[tuple[str, list[str]]]:
    """(where, the arguments after ``pvt``) for every pvt command in a shell block."""
    found = []
    for page in PARSED_PAGES:
        for number, line in page.shell:
            if not COMMAND.match(line.strip()):
                continue
            words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            after = 1 if words[0] == "pvt" else next(
                i + 2 for i, word in enumerate(words) if words[i:i + 2] == ["-m", "pvtv2"])
            found.append((_where(page, number), words[after:]))
    return found


COMMANDS = _commands()


def test_the_docs_show_commands():
    # A change that stopped the scan from finding commands would make every test below pass vacuously.
    assert len(COMMANDS) > 50
    assert {args[0] for _, args in COMMANDS} >= {"train", "det-train", "seg-train", "weights", "export", "show"}


def _exact_parser() -> argparse.ArgumentParser:
    """``pvt``'s parser, taking options only as written in full: argparse would otherwise accept a prefix
    (``--top`` for ``--topk``), and a renamed option could leave the docs with a prefix of another."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        current.allow_abbrev = False
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return parser


PARSER = _exact_parser()


@pytest.mark.parametrize("args", [args for _, args in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_command_parses(args: list[str]):
    """An unknown subcommand or option, a missing argument or a value outside an option's choices fails."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            PARSER.parse_args(args)
        except SystemExit as stop:
            pytest.fail(f"pvt {shlex.join(args)}: exit {stop.code}: {errors.getvalue().strip().splitlines()[-1]}")
    for word in args:
        if word.startswith("configs/"):
            assert (ROOT / word).is_file(), f"pvt {shlex.join(args)}: no config file {word}"


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {match.group(1) for match in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, flags=re.MULTILINE)}


def test_make_targets_exist():
    targets = _makefile_targets()
    named = []
    for page in PARSED_PAGES:
        code = [(n, span) for n, text in page.prose for span in INLINE_CODE.findall(text)] + page.shell
        for number, text in code:
            named += [(_where(page, number), target) for target in re.findall(r"\bmake ([a-z][\w-]*)", text)]
    assert {target for _, target in named} >= {"demo", "test", "docs"}
    missing = [f"{where}: make {target}" for where, target in named if target not in targets]
    assert not missing, f"not targets of the Makefile: {missing}"


def _slug(heading: str) -> str:
    """The anchor of a heading, as GitHub and MkDocs's toc make it for plain headings."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"\s+", "-", text)


def _anchors(path: Path) -> set[str]:
    page = next(page for page in PARSED_PAGES if page.path == path)
    return {_slug(match.group(1)) for _, text in page.prose if (match := re.match(r"#{1,6}\s+(.*)", text))}


def test_relative_links_resolve():
    broken = []
    for page in PARSED_PAGES:
        for number, text in page.prose:
            for target in LINK.findall(INLINE_CODE.sub("", text)):
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                path = (page.path.parent / file).resolve() if file else page.path
                if not path.exists():
                    broken.append(f"{_where(page, number)}: {target} (no such file)")
                elif anchor and path in PAGES and anchor not in _anchors(path):
                    broken.append(f"{_where(page, number)}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"
