#!/usr/bin/env bash
# Translations of the buyer's pages and mails (Flask-Babel, pybabel).
#
#   bash scripts/translations.sh            extract every _() into translations/messages.pot,
#                                           merge it into each language's messages.po, compile
#                                           the .mo files the app reads
#   bash scripts/translations.sh init fr    start a new language (then add it to LANGUAGES in
#                                           storefront/i18n.py)
#   bash scripts/translations.sh compile    compile only (after editing a .po by hand)
#   bash scripts/translations.sh extract F  extract into the file F only (the tests' check)
#
# After a run, translate the entries `git diff translations/` shows with an empty msgstr or
# marked `#, fuzzy` (a guess from a similar string: check it, then delete the fuzzy line), run
# the script once more to compile, and commit the .po and .mo. tests/test_translations.py fails
# while a string is untranslated or fuzzy, or a .mo is older than its .po.
set -euo pipefail
cd "$(dirname "$0")/.."

PYBABEL="${PYBABEL:-.venv/bin/pybabel}"
[ -x "$PYBABEL" ] || PYBABEL=pybabel
DIR=translations
POT="$DIR/messages.pot"

extract() {
    # File names only, no line numbers: a moved line does not change every catalog.
    "$PYBABEL" -q extract -F babel.cfg -k _l -k lazy_gettext \
        --add-location=file --sort-by-file --no-wrap \
        --project="Sell My Images" --copyright-holder="Sell My Images" \
        -o "${1:-$POT}" .
}

update() {
    # The .po files change only when a message does, not at every extraction.
    "$PYBABEL" -q update -i "$POT" -d "$DIR" --ignore-obsolete --no-wrap --ignore-pot-creation-date
}

compile() {
    "$PYBABEL" compile --statistics -d "$DIR"
}

case "${1:-all}" in
    all)
        extract
        update
        compile
        ;;
    init)
        language="${2:?usage: scripts/translations.sh init <language code>}"
        extract
        "$PYBABEL" init -i "$POT" -d "$DIR" -l "$language" --no-wrap
        ;;
    compile)
        compile
        ;;
    extract)
        extract "${2:?usage: scripts/translations.sh extract <output .pot>}"
        ;;
    *)
        echo "usage: scripts/translations.sh [all | init <language> | compile | extract <file>]" >&2
        exit 2
        ;;
esac
