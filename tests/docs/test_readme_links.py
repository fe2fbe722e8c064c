"""The documentation's relative links resolve, and the README stays a short front door.

Every relative link in README.md, CONTRIBUTING.md and docs/*.md must name a file or folder
that exists; a ``#fragment`` must name a heading of the target Markdown file (GitHub's anchor
rules). Links to the web (``http:``, ``https:``, ``mailto:``) are not checked. Code blocks and
inline code are skipped, so shell examples do not count as links.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_README_LINES = 150

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")".
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference definitions)
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks, inline code removed."""
    out, in_fence, prev_blank = [], False, True
    for n, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
            prev_blank = False
            continue
        if in_fence:
            continue
        if prev_blank and (line.startswith("    ") or line.startswith("\t")) and line.strip():
            continue  # an indented code block (only after a blank line; list continuations follow text)
        prev_blank = not line.strip()
        out.append((n, _INLINE_CODE.sub("", line)))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """The relative link targets of one Markdown file, with their line numbers."""
    found = []
    for n, line in _prose_lines(path.read_text(encoding="utf-8")):
        targets = [m.group(1) for m in _LINK.finditer(line)]
        ref = _REF_DEF.match(line)
        if ref:
            targets.append(ref.group(1))
        found += [(n, t) for t in targets if not _EXTERNAL.match(t)]
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and "_" (Unicode too)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (duplicates numbered -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8").replace("`", "")):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        k = seen.get(slug, 0)
        seen[slug] = k + 1
        out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def check(path: Path, root: Path = ROOT) -> list[str]:
    """Problems with the relative links of one file, as 'file:line: message'."""
    problems = []
    for n, target in links(path):
        where = f"{path.relative_to(root)}:{n}"
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: link to {target!r}: {file_part} does not exist")
            continue
        if fragment and dest.suffix == ".md" and dest.is_file():
            if unquote(fragment).lower() not in anchors(dest):
                problems.append(f"{where}: link to {target!r}: no heading #{fragment} in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    problems = check(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_short_front_door():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (at most {MAX_README_LINES}): move details to docs/ or CONTRIBUTING.md"
    )


def test_readme_keeps_the_ci_commands():
    """.ci/run runs the README's set-up and test commands; the two must stay identical."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    setup = "python3 -m venv .venv && .venv/bin/pip install -q -c constraints/cpu.txt -e '.[dev]'"
    test = ".venv/bin/python -m pytest -n 2"
    for command in (setup, test):
        assert command in readme.splitlines(), f"README.md lost {command!r}"
        assert command in ci, f".ci/run lost {command!r}"


# The checker itself, on small inputs.


def test_github_slug():
    assert (
        github_slug("Throughput: loopback Orthanc against a folder") == "throughput-loopback-orthanc-against-a-folder"
    )
    assert github_slug("The networks (--arch, model.arch)") == "the-networks---arch-modelarch"
    assert github_slug("Where to add…") == "where-to-add"
    assert github_slug("Quickstart (cxr-cad demo)") == "quickstart-cxr-cad-demo"


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section: here\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md) [ok](other.md#a-section-here) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [self](#title-here)\n\n"
        "# Title here\n\n```\n[in code](nope.md)\n```\n`[inline](nope.md)`\n",
        encoding="utf-8",
    )
    problems = check(doc, root=tmp_path)
    assert len(problems) == 2, problems
    assert "missing.md does not exist" in problems[0]
    assert "no heading #nowhere" in problems[1]
