"""The docs stay honest: citations point into the repository, and docs/architecture.md names real modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SCANNED = ("atomic_p2p", "docs", "peers", "protos", "scripts", "tests")

# Split so that this file does not match itself.
STALE = ("DESIGN" + " section", "DESIGN" + ".md")
CITATION = re.compile(r"architecture\.md[`)\]]*\s+sections?\s+(\d+(?:(?:,\s*|\s+and\s+|\s+to\s+)\d+)*)")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [
            path for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts
        ]
    return files


def test_nothing_cites_a_design_page_outside_the_repository() -> None:
    stale = [
        f"{path.relative_to(ROOT)}: {needle!r}"
        for path in scanned_files()
        for needle in STALE
        if needle.encode() in path.read_bytes()
    ]
    assert stale == [], "cite docs/architecture.md (or a more specific doc) instead"


def test_every_module_path_in_the_architecture_page_exists() -> None:
    text = ARCHITECTURE.read_text()
    paths = set(re.findall(r"atomic_p2p/[\w/]*\w\.py", text)) | set(re.findall(r"atomic_p2p/[\w/]*/", text))
    assert paths, "docs/architecture.md names no module paths"
    assert sorted(path for path in paths if not (ROOT / path).exists()) == []


def test_sections_are_numbered_and_every_citation_names_one() -> None:
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", ARCHITECTURE.read_text(), re.M)]
    assert numbers == list(range(1, len(numbers) + 1))
    cited = {
        f"{path.relative_to(ROOT)}: section {number}"
        for path in scanned_files()
        if path.suffix in {".md", ".py", ".proto", ".toml", ".yaml"}
        for match in CITATION.finditer(path.read_text())
        for number in map(int, re.findall(r"\d+", match.group(1)))
        if number not in numbers
    }
    assert cited == set(), "a citation names a section docs/architecture.md does not have"


def _config_keys_section() -> str:
    page = (ROOT / "docs" / "cli.md").read_text()
    return page[page.index("### Config keys") : page.index("## `atomic keygen")]


def test_the_documented_strategies_are_the_registered_ones() -> None:
    from atomic_p2p.peer.strategies import STRATEGIES

    listed = re.search(r"`strategy` \(one of\s+(.*?);", _config_keys_section(), re.S)
    assert listed, "docs/cli.md no longer lists the strategies"
    assert sorted(re.findall(r"`([a-z-]+)`", listed.group(1))) == sorted(STRATEGIES)


def test_every_config_key_is_documented() -> None:
    from atomic_p2p.peer import config

    section = _config_keys_section()
    tables = {key for key in config._MODEL_KEYS if f"`[models.{key}]`" in section}  # a sub-table
    tables |= {key for key in config._PEER_KEYS if f"`[peer.{key}]`" in section}
    missing = sorted(
        key for key in (config._PEER_KEYS | config._MODEL_KEYS) - tables if f"`{key}`" not in section
    )
    assert missing == []
