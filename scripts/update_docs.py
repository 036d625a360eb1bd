"""Regenerate the documentation derived from code: docs/configuration.md, the settings
table in README.md and docs/cdm.md (the common data model).
Run: .venv/bin/python scripts/update_docs.py"""

from __future__ import annotations

import re
from pathlib import Path

from contracts.markdown import cdm_document
from hub.settings import settings_markdown, settings_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    (ROOT / "docs" / "configuration.md").write_text(settings_markdown())
    (ROOT / "docs" / "cdm.md").write_text(cdm_document())
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = re.sub(
        r"(<!-- settings:start -->\n).*?(<!-- settings:end -->)",
        lambda m: m.group(1) + settings_table() + m.group(2),
        text,
        flags=re.S,
    )
    readme.write_text(text)


if __name__ == "__main__":
    main()
