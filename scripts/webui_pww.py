#!/usr/bin/env python
"""Paint-with-Words web UI: `python scripts/webui_pww.py [--ckpt model.ckpt] [--host 127.0.0.1]
[--port 7860] [--auth user:pass] [--models-dir models/]`. With no --ckpt, the bundled demo model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pww_ldm.webui.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
