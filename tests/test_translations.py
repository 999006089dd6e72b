"""Every buyer-facing string has its German translation, and the committed .mo is the .po compiled.

A new `_()` without a translation fails here: run `bash scripts/translations.sh`, translate what
it left empty or fuzzy in translations/<language>/LC_MESSAGES/messages.po, run it again to
compile, and commit the .po and the .mo.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from storefront.i18n import DEFAULT_LANGUAGE, LANGUAGES

ROOT = Path(__file__).resolve().parent.parent
TRANSLATED = [language for language in LANGUAGES if language != DEFAULT_LANGUAGE]
HOW_TO_FIX = (
    "Run `bash scripts/translations.sh`, translate the entries left empty or marked `#, fuzzy` "
    "in {po}, run the script again to compile, and commit the .po and the .mo."
)
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def _catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def _placeholders(text: object) -> set[str]:
    return set(PLACEHOLDER.findall(str(text)))


def _po(language: str) -> Path:
    return ROOT / "translations" / language / "LC_MESSAGES" / "messages.po"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The catalog extracted now from the code and templates, as scripts/translations.sh does."""
    pot = tmp_path_factory.mktemp("i18n") / "messages.pot"
    pybabel = Path(sys.executable).parent / "pybabel"
    subprocess.run(
        ["bash", "scripts/translations.sh", "extract", str(pot)],
        cwd=ROOT,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYBABEL": str(pybabel)},
    )
    return _catalog(pot)


def test_the_extracted_catalog_holds_the_buyer_strings(extracted: Catalog) -> None:
    ids = {message.id for message in extracted if message.id}
    # One string from each place that must be translated: a page, a mail, a form, an error.
    assert {"Download Hi-Res", "Your high-resolution image is ready", "Order number"} <= ids
    assert "We couldn't find that page" in ids
    assert len(ids) > 100


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_string_is_translated(extracted: Catalog, language: str) -> None:
    po = _po(language)
    catalog = _catalog(po, language)
    problems = []
    for message in extracted:
        if not message.id:
            continue
        found = catalog.get(message.id, message.context)
        if found is None or not found.string:
            problems.append(f"untranslated: {message.id!r}")
        elif found.fuzzy:
            problems.append(f"fuzzy (a guess to check): {message.id!r}")
        elif _placeholders(message.id) != _placeholders(found.string):
            problems.append(f"placeholders differ: {message.id!r} -> {found.string!r}")
    hint = HOW_TO_FIX.format(po=po.relative_to(ROOT))
    listed = "\n".join(problems[:30])
    assert not problems, f"{len(problems)} message(s) to translate in {language}:\n{listed}\n{hint}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_committed_mo_is_the_po_compiled(tmp_path: Path, language: str) -> None:
    po = _po(language)
    committed = po.with_suffix(".mo")
    fresh = tmp_path / "messages.mo"
    pybabel = str(Path(sys.executable).parent / "pybabel")
    compile_po = [pybabel, "-q", "compile", "-l", language, "-i", str(po), "-o", str(fresh)]
    subprocess.run(compile_po, check=True, timeout=60)
    assert committed.exists(), f"{committed.relative_to(ROOT)} is missing. " + HOW_TO_FIX.format(
        po=po.relative_to(ROOT)
    )
    assert fresh.read_bytes() == committed.read_bytes(), (
        f"{committed.relative_to(ROOT)} is not {po.relative_to(ROOT)} compiled. "
        + HOW_TO_FIX.format(po=po.relative_to(ROOT))
    )
