"""Checks of the project's Markdown docs (README.md and docs/*.md): links and commands.

A test helper for ``tests/docs/``; nothing in the package needs it. Two checks:

* **Links** (:func:`check_links`): every relative link (``[text](target)``, ``![alt](target)``
  and reference definitions ``[id]: target``) outside code points to an existing file, and an
  anchor ``#...`` to a heading of the target page under GitHub's slug rules
  (:func:`github_slug`, duplicates numbered ``-1``, ``-2``, ...).
* **Commands** (:func:`check_commands`): every ``python -m dml_study...`` command in a code
  block or inline code span names a module that runs (``python -m <module> [sub] --help``
  exits 0) and uses only ``--flags`` its help text lists; every ``make <target>`` names a
  target of the Makefile. Fenced blocks marked ``text`` hold output and are skipped.

Each check returns a list of problems (``file:line: what is wrong``), empty when all is well.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
PY_CMD = re.compile(
    r"(?:^|[\s;&|(=])(?:\S*/)?(?:python3?|torchrun)(?:\s+-[-\w=:.,]+(?:\s+\S+)?)*?"
    r"\s+-m\s+(dml_study(?:\.\w+)*)(.*)"
)
MAKE_CMD = re.compile(r"(?:^|[\s;&|(])make\s+([\w.-]+)")
SUBCOMMAND = re.compile(r"^[a-z][a-z0-9_-]*$")
FLAG = re.compile(r"^(--[A-Za-z][\w.-]*)")
OUTPUT_INFOS = {"text", "output", "console-output"}


@dataclass(frozen=True)
class CodeLine:
    """One line of code in a Markdown file: a code-block line or one inline code span."""

    path: Path
    lineno: int
    text: str


def doc_files(root: Path) -> list[Path]:
    """README.md and every docs/*.md of the project at ``root``, in a stable order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _split(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """Prose lines and code lines of ``text``.

    Returns ``(prose, code)``: prose as ``(lineno, line)``; code as ``(lineno, line, info)``
    with ``info`` the fence's info string (``""`` for indented blocks). Indented code
    (4 spaces after a blank line, outside a list) counts as code with an empty info string.
    """
    prose: list[tuple[int, str]] = []
    code: list[tuple[int, str, str]] = []
    fence: str | None = None
    info = ""
    prev_blank = True
    in_list = False
    indented = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if fence is not None:
            m = FENCE.match(line)
            if m and m.group(2).startswith(fence[0]) and len(m.group(2)) >= len(fence) \
                    and not m.group(3):
                fence = None
            else:
                code.append((lineno, line, info))
            continue
        m = FENCE.match(line)
        if m:
            fence, info = m.group(2), m.group(3).lower()
            indented = False
            continue
        blank = not line.strip()
        if not blank and re.match(r"^\s{0,3}(?:[-*+]|\d+[.)])\s", line):
            in_list = True
        elif not blank and not line.startswith(" "):
            in_list = False
        if line.startswith("    ") and not blank and (indented or (prev_blank and not in_list)):
            indented = True
            code.append((lineno, line[4:], ""))
        else:
            if not blank:
                indented = False
            prose.append((lineno, line))
        prev_blank = blank
    return prose, code


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: ``"## The `so_lambda` key"`` → ``the-so_lambda-key``.

    Markdown links keep their text, inline code its content; the text is lower-cased, every
    character other than a letter, digit, ``_``, ``-`` or space is dropped and spaces become
    ``-`` (one each: two spaces give ``--``).
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def heading_anchors(text: str) -> set[str]:
    """Every anchor of a Markdown text's headings, duplicates numbered as GitHub does."""
    prose, _ = _split(text)
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for _, line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def links(text: str) -> list[tuple[int, str]]:
    """``(lineno, target)`` of every link and reference definition outside code."""
    prose, _ = _split(text)
    found: list[tuple[int, str]] = []
    for lineno, line in prose:
        bare = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        found.extend((lineno, m.group(1)) for m in LINK.finditer(bare))
        m = REF_DEF.match(bare)
        if m:
            found.append((lineno, m.group(1)))
    return found


def check_links(files: list[Path], root: Path) -> list[str]:
    """Problems with the relative links of ``files``; ``[]`` when every one resolves."""
    problems: list[str] = []
    anchors_cache: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        if path not in anchors_cache:
            anchors_cache[path] = heading_anchors(path.read_text(encoding="utf-8"))
        return anchors_cache[path]

    for path in files:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        for lineno, target in links(path.read_text(encoding="utf-8")):
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel}:{lineno}: link {target!r}"
            if not dest.exists():
                problems.append(f"{where}: no file {file_part!r} (relative to {rel.parent}/)")
                continue
            if anchor and dest.suffix == ".md" and dest.is_file() \
                    and anchor.lower() not in anchors_of(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in "
                                f"{dest.relative_to(root) if dest.is_relative_to(root) else dest}")
    return problems


def code_lines(path: Path) -> list[CodeLine]:
    """Code a reader may copy from ``path``: code-block lines (not ``text`` blocks) and
    inline code spans; backslash-continued lines are joined."""
    prose, code = _split(path.read_text(encoding="utf-8"))
    out: list[CodeLine] = []
    pending: CodeLine | None = None
    for lineno, line, info in code:
        if info in OUTPUT_INFOS:
            continue
        if pending is not None:
            line, lineno = pending.text + " " + line.strip(), pending.lineno
            pending = None
        if line.rstrip().endswith("\\"):
            pending = CodeLine(path, lineno, line.rstrip()[:-1])
            continue
        out.append(CodeLine(path, lineno, line))
    for lineno, line in prose:
        out.extend(CodeLine(path, lineno, m.group(2)) for m in INLINE_CODE.finditer(line))
    return out


@dataclass(frozen=True)
class PyCommand:
    """One ``python -m dml_study...`` command: module, argument words, where it was found."""

    where: CodeLine
    module: str
    args: tuple[str, ...]


def python_commands(line: CodeLine) -> list[PyCommand]:
    """The ``python -m dml_study...`` commands in one code line (comments cut off)."""
    cmds = []
    for m in PY_CMD.finditer(line.text):
        rest = re.split(r"\s#|\s&&|\s\|\|?|;|\)", m.group(2), maxsplit=1)[0]
        try:
            words = shlex.split(rest.replace("[", " ").replace("]", " "))
        except ValueError:
            words = rest.replace("[", " ").replace("]", " ").split()
        cmds.append(PyCommand(line, m.group(1), tuple(words)))
    return cmds


def make_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines (rule lines ``name ...:``, not variables)."""
    targets: set[str] = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([\w.-]+(?:\s+[\w.-]+)*)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


# Runs in one child process: ``python -m <module> [sub] --help`` for every key, sharing the
# imports (torch, timm, ...) between modules, which separate processes would pay each time.
_HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys, warnings
keys = json.loads(sys.stdin.read())
out = []
for key in keys:
    buf = io.StringIO()
    code = 0
    sys.argv = ["python -m " + key[0], *key[1:], "--help"]
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            runpy.run_module(key[0], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # a module that fails to import or run
            code = 1
            buf.write(f"{type(exc).__name__}: {exc}\n")
    out.append([code, buf.getvalue()])
sys.__stdout__.write(json.dumps(out))
"""


class HelpCache:
    """``python -m <module> [sub] --help`` once per (module, sub), in one child process.

    ``env`` is the environment of the child (``PYTHONPATH`` pointing at the checkout). Every
    key is run as ``runpy.run_module(module, run_name="__main__")`` with ``sys.argv`` set,
    which is what ``python -m`` does, so a module that does not exist or fails to import
    answers with exit code 1 and its error.
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = env
        self._cache: dict[tuple[str, ...], tuple[int, str]] = {}

    def prefetch(self, keys: set[tuple[str, ...]]) -> None:
        """Run the ``--help`` of every key not yet cached, all in one child process."""
        todo = sorted(k for k in keys if k not in self._cache)
        if not todo:
            return
        proc = subprocess.run(
            [sys.executable, "-c", _HELP_RUNNER], input=json.dumps(todo), cwd=self.root,
            env=self.env, capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the --help runner failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        for key, (code, text) in zip(todo, json.loads(proc.stdout), strict=True):
            self._cache[key] = (code, text)

    def get(self, key: tuple[str, ...]) -> tuple[int, str]:
        """(exit code, help text) of ``python -m <key...> --help``."""
        if key not in self._cache:
            self.prefetch({key})
        return self._cache[key]


def _usage_line(text: str) -> str:
    m = re.search(r"usage:(.*?)(?:\n\n|\Z)", text, re.S)
    return m.group(1) if m else ""


def _maybe_subcommand(cmd: PyCommand, helps: HelpCache) -> bool:
    """Whether the command's first word may be a subcommand: a bare word its module's help
    names (``{download,verify}``, or prose such as ``tune --config ...``)."""
    if not cmd.args or not SUBCOMMAND.match(cmd.args[0]):
        return False
    code, text = helps.get((cmd.module,))
    return code == 0 and re.search(rf"(?<![\w./-]){re.escape(cmd.args[0])}(?![\w/-])",
                                   text) is not None


def _flag_in_help(flag: str, text: str) -> bool:
    """Whether ``--flag`` is one the help lists; a dotted ``--section.key`` may also be named
    by its config key (``optim.betas`` beside ``--betas``), as the train CLI's help does."""
    if flag in re.findall(r"--[A-Za-z][\w.-]*", text):
        return True
    key = flag[2:]
    return "." in key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text) is not None


def check_commands(files: list[Path], root: Path, helps: HelpCache) -> list[str]:
    """Problems with the ``python -m dml_study...`` and ``make`` commands of ``files``."""
    problems: list[str] = []
    targets = make_targets(root / "Makefile")
    commands: list[PyCommand] = []
    for path in files:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        for line in code_lines(path):
            commands.extend(python_commands(line))
            for m in MAKE_CMD.finditer(line.text):
                if m.group(1) not in targets:
                    problems.append(f"{rel}:{line.lineno}: `make {m.group(1)}`: no such target "
                                    f"in the Makefile (targets: {', '.join(sorted(targets))})")
    helps.prefetch({(c.module,) for c in commands})
    # a first bare word may be a subcommand (`data download`) or a positional (`embed exports`)
    helps.prefetch({(c.module, c.args[0]) for c in commands if _maybe_subcommand(c, helps)})
    for cmd in commands:
        path = cmd.where.path
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        where = f"{rel}:{cmd.where.lineno}: `python -m {cmd.module}`"
        code, text = helps.get((cmd.module,))
        if code != 0:
            last = text.strip().splitlines()[-1:] or ["(no output)"]
            problems.append(f"{where}: `python -m {cmd.module} --help` exited {code}: {last[0]}")
            continue
        args = cmd.args
        if _maybe_subcommand(cmd, helps):
            sub_code, sub_text = helps.get((cmd.module, args[0]))
            if sub_code == 0 and re.search(rf"\b{re.escape(args[0])}\b", _usage_line(sub_text)):
                text, args = sub_text, args[1:]
        for word in args:
            m = FLAG.match(word)
            if m and not _flag_in_help(m.group(1), text):
                problems.append(f"{where}: option {m.group(1)} is not in its --help")
    return problems
