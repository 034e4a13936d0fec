"""The README's links: every relative file it links or shows exists, every #anchor is one
of its headings (GitHub's anchor rule: lower case, punctuation dropped, spaces to -), and
every repository path it names in backquotes exists."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_exist() -> None:
    anchors = {anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    assert targets
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, target
        else:
            assert (ROOT / target).exists(), target


def test_named_repository_files_exist() -> None:
    named = set(re.findall(r"`((?:docker|slurm|hvd_dqn|tests|docs)/[\w./-]+)`", README))
    assert "slurm/train.sbatch" in named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing
