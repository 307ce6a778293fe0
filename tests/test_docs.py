"""Every relative link in the repository's markdown files resolves: the file exists, and a `#anchor`
names a heading of that file (GitHub's heading ids). External links (http, mailto) are not fetched."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    """Tracked markdown files plus new ones not ignored by git (all *.md outside .venv without git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        files = [REPO / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts]
    return sorted(p for p in files if p.is_file())


def slug(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", text)):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """The relative links of one markdown file that do not resolve, as 'file: target (why)'."""
    text = path.read_text(encoding="utf-8")
    body = INLINE_CODE.sub("", FENCE.sub("", text))
    bad = []
    for m in LINK.finditer(body):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}: {target}"
        if file_part and not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{where} (no heading #{anchor} in {dest.name})")
    return bad


def test_every_relative_link_resolves():
    files = markdown_files()
    assert any(p.name == "README.md" for p in files)
    bad = [b for p in files for b in broken_links(p)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Section `two` (b)\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n## A heading, with punctuation!\n\n"
        "[ok](other.md) [ok](other.md#section-two-b) [ok](#a-heading-with-punctuation) "
        "![ok](other.md) [web](https://example.com/x.md)\n"
        "`[in code](missing.md)`\n\n```\n[in a block](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#section-three) [bad here](#nowhere)\n"
    )
    bad = broken_links(doc, root=tmp_path)
    assert bad == [
        "doc.md: missing.md (no such file)",
        "doc.md: other.md#section-three (no heading #section-three in other.md)",
        "doc.md: #nowhere (no heading #nowhere in doc.md)",
    ]


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("Image folders -> VAE latents (`sddit prepare`)", "image-folders---vae-latents-sddit-prepare"),
        ("Releases: `sddit export` and `sddit.load_pretrained`", "releases-sddit-export-and-sdditload_pretrained"),
        (
            "Equal wall-clock at 256 tokens (the paper's token count)",
            "equal-wall-clock-at-256-tokens-the-papers-token-count",
        ),
    ],
)
def test_slug_matches_github(heading, expected):
    assert slug(heading) == expected
