#!/usr/bin/env python
"""Paint-with-Words inpainting. `python scripts/inpaint_pww.py --help` for the flags."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

from pww_ldm.inpaint_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
