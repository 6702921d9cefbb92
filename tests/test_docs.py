"""The documentation stays in step with the code and inside the repository.

* docs/configuration.md is what `scripts/gen_config_doc.py` writes from the settings' own descriptions;
* README.md stays short (the detail lives in docs/);
* every Markdown link in README.md, docs/ and benchmarks/README.md resolves inside the repository: relative
  targets exist (and their #anchors are headings there), nothing climbs out of the checkout or names an
  absolute path on disk.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260
DOCS = sorted({REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("**/*.md")})

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.I)
ALLOWED_SCHEMES = ("http://", "https://", "mailto:")


def _generator():
    """scripts/gen_config_doc.py as a module (scripts/ is not a package)."""
    if (mod := sys.modules.get("gen_config_doc")) is None:
        spec = importlib.util.spec_from_file_location("gen_config_doc", REPO / "scripts" / "gen_config_doc.py")
        mod = sys.modules["gen_config_doc"] = importlib.util.module_from_spec(spec)  # its dataclass needs it there
        spec.loader.exec_module(mod)
    return mod


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (a link shown as code is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE, HTML_LINK) for m in pattern.finditer(body)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def problem(doc: Path, target: str) -> str | None:
    """Why `target`, linked from `doc`, is not a link inside the repository (None: it is)."""
    if not target:
        return "empty link"
    if target.startswith(ALLOWED_SCHEMES):
        return None
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "\\", "~")):
        return "points outside the repository (absolute path or other scheme)"
    path_part, _, anchor = target.partition("#")
    dest = doc if not path_part else (doc.parent / path_part).resolve()
    try:
        dest.relative_to(REPO)
    except ValueError:
        return "points outside the repository"
    if not dest.exists():
        return f"no such file: {dest.relative_to(REPO)}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no heading #{anchor} in {dest.relative_to(REPO)}"
    return None


def test_configuration_doc_is_generated_from_the_code(capsys):
    rc = _generator().main(["--check"])
    assert rc == 0, ("docs/configuration.md differs from what the settings say; run "
                     "`python scripts/gen_config_doc.py`:\n" + capsys.readouterr().err)


def test_configuration_doc_covers_every_setting_and_shows_no_secret():
    from services.config import Settings

    doc = (REPO / "docs" / "configuration.md").read_text()
    gen = _generator()
    for f in gen.model_fields(Settings):
        groups = [(f"VIGIL_{f.name.upper()}__", g) for g in gen.model_fields(f.annotation)] \
            if gen.is_group(f.annotation) else [("VIGIL_", f)]
        for prefix, g in groups:
            row = next((line for line in doc.splitlines() if line.startswith(f"| `{prefix}{g.name.upper()}` |")), None)
            assert row is not None, f"{prefix}{g.name.upper()} has no row in docs/configuration.md"
            if gen.is_secret(g):
                assert row.split(" | ")[2] in ("unset", "set (not shown)"), row
    # no default that depends on the machine that generated the file
    assert str(Path.home()) not in doc and str(REPO) not in doc


def test_readme_is_short():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail into docs/"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_links_stay_inside_the_repository(doc):
    bad = [f"{target}: {why}" for target in links(doc.read_text()) if (why := problem(doc, target))]
    assert not bad, f"{doc.relative_to(REPO)}:\n" + "\n".join(bad)


def test_link_checker_catches_what_it_should():
    readme = REPO / "README.md"
    found = links("see [design](../shared/DESIGN.md), ![x](docs/timeline.png), `[not](a/link)`\n"
                  "```\n[also not](nowhere.md)\n```\n[ref]: https://example.org/x\n")
    assert found == ["../shared/DESIGN.md", "docs/timeline.png", "https://example.org/x"]
    assert problem(readme, "../shared/DESIGN.md") == "points outside the repository"
    assert problem(readme, "/etc/passwd").startswith("points outside")
    assert problem(readme, "file:///etc/passwd").startswith("points outside")
    assert problem(readme, "docs/no-such-page.md").startswith("no such file")
    assert problem(readme, "docs/architecture.md#no-such-heading").startswith("no heading")
    assert problem(readme, "docs/timeline.png") is None
    assert problem(readme, "docs/operations.md#docker-compose") is None
    assert slug("tls: `VIGIL_TLS__*`") == "tls-vigil_tls__"
    assert slug("The redundancy term's cost at ingest (bench_redundancy.py)") == \
        "the-redundancy-terms-cost-at-ingest-bench_redundancypy"
