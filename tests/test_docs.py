"""The README stays short and starts with its two commands; every relative link in it and in docs/ resolves."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    head = "\n".join(lines[:6])
    assert "make run" in head and "make test" in head


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue                                   # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_name_no_module_path_that_is_gone():
    """`ichbench.<module>` and `src/ichbench/<file>` in the docs name modules that exist."""
    stale = []
    for page in PAGES:
        text = page.read_text()
        for mod in set(re.findall(r"`ichbench\.([a-z_][\w.]*)", text)):
            parts = mod.split(".")
            base = ROOT / "src" / "ichbench"
            for i in range(len(parts), 0, -1):              # the longest prefix that is a module or package
                cand = base.joinpath(*parts[:i])
                if cand.with_suffix(".py").exists() or (cand / "__init__.py").exists():
                    break
            else:
                stale.append(f"{page.relative_to(ROOT)}: ichbench.{mod}")
        for path in set(re.findall(r"src/ichbench/[\w/]+\.py", text)):
            if not (ROOT / path).exists():
                stale.append(f"{page.relative_to(ROOT)}: {path}")
    assert not stale, "\n".join(sorted(stale))
