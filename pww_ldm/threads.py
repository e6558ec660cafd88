"""The torch CPU thread count of a process, set once by its entry point."""

from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads) before any model loads; None keeps torch's own choice.

    On a CPU shared with other work, fewer threads than cores is often faster (demo model, 20
    steps, a busy 2-core machine: 37 s with one thread, 135 s with two). ValueError if < 1.
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    import torch  # here, so that importing this module stays cheap

    torch.set_num_threads(threads)
