"""The user docs' links: README.md and every docs/*.md. Every relative file a doc links or
shows exists (relative to that doc), every #anchor, in the same doc or in another linked
one, is one of that doc's headings (GitHub's anchor rule: lower case, punctuation dropped,
spaces to -), and every repository path a doc names in backquotes exists. The README stays
a user's guide: under 350 lines, linking every page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; fenced code (a shell comment) is no heading."""
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.M):
        base = anchor(heading)
        name, n = base, 0
        while name in found:  # GitHub numbers a repeated heading: x, x-1, x-2
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path, text: str) -> list[str]:
    """Each relative link or image of `text` (the page at `page`) whose file or anchor is
    missing, as `target: why`."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment:
            if file.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not a page")
            elif fragment not in anchors(file.read_text()):
                broken.append(f"{target}: no heading #{fragment} in {file.name}")
    return broken


def test_docs_pages_exist() -> None:
    names = {p.name for p in DOCS}
    assert {"results.md", "performance.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_exist(page: Path) -> None:
    text = page.read_text()
    assert re.search(r"\]\(", text), f"{page.name} links nothing"
    assert broken_links(page, text) == []


def test_the_link_check_finds_a_broken_link_and_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n")
    text = (
        "# Page\n\n## Two words, here\n\n```sh\n# not a heading\n```\n"
        "[ok](#two-words-here) [ok](other.md#a-part) [ok](other.md)\n"
        "[bad](#not-a-heading) [bad](other.md#no-part) [bad](gone.md) ![bad](gone.png)\n"
    )
    page.write_text(text)
    assert [b.split(":")[0] for b in broken_links(page, text)] == [
        "#not-a-heading",
        "other.md#no-part",
        "gone.md",
        "gone.png",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_files_exist(page: Path) -> None:
    named = set(re.findall(r"`((?:docker|slurm|hvd_dqn|tests|docs)/[\w./-]+)`", page.read_text()))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing


def test_readme_names_the_sbatch_script() -> None:
    assert "`slurm/train.sbatch`" in README.read_text()


def test_readme_is_a_guide_linking_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 350
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)(?:#[^)]*)?\)", text))
    assert linked >= {p.name for p in DOCS}, sorted({p.name for p in DOCS} - linked)
