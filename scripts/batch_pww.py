#!/usr/bin/env python
"""Paint-with-Words batch generation from a job file, on one or many processes (Lightning).

`python scripts/batch_pww.py --help` for the flags; see pww_ldm/batch/ for the job file format.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

from pww_ldm.batch.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
