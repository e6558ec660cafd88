"""How much a demo model uses its caption (held-out eps MSE with the right vs another caption).

    python scripts/caption_gain.py                                   # the bundled demo model
    python scripts/caption_gain.py --ckpt outputs/cpu_demo2/model.safetensors --threads 2

Prints a markdown table, one row per timestep; see pww_ldm/train/caption_gain.py.
"""

import argparse
import sys
from pathlib import Path

from pww_ldm.allocator import tune_malloc

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Parse options, run caption_gain, print the table."""
    tune_malloc()
    import torch

    import pww_ldm
    from pww_ldm.train.caption_gain import caption_gain

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default=str(REPO / "models" / "pww-demo" / "model.safetensors"))
    p.add_argument("--n", type=int, default=128, help="held-out images")
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--size", type=int, default=128, help="image size the model was trained on")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pww_ldm.load_model(args.ckpt, device="cpu").float().eval()
    print("| t | right caption | another caption | empty caption | gain |")
    print("| --- | --- | --- | --- | --- |")
    for r in caption_gain(model, n=args.n, seed=args.seed, size=args.size):
        print(f"| {r['t']} | {r['right']:.4f} | {r['wrong']:.4f} | {r['empty']:.4f} | {r['gain']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
