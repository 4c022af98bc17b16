"""Regenerate the quickstart's emulator data (``dev.json``, ``test.json``, ``prod.json``) deterministically.

    python examples/quickstart/make_data.py            # rewrite the files
    python examples/quickstart/make_data.py --check    # exit 1 if the files differ from what it makes

The builder is ``reconciler.emulator.quickstart``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # runs from a checkout, installed or not

from reconciler.emulator.quickstart import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(default_dir=HERE))
