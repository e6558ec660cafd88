"""Token merging for Stable Diffusion's self-attention (ToMe for SD, Bolya & Hoffman 2023).

Bipartite soft matching with 2D-strided destinations: the layer's h x w tokens are cut into
sy x sx cells, one random token of each full cell is a destination (dst), every other token a
source (src). Each src finds its most cosine-similar dst; the r srcs with the highest similarity
are merged into their dst (the dst becomes the mean of itself and the srcs it received), the
others stay. Attention then runs on N - r tokens, and unmerging copies each dst's output back to
the srcs merged into it. `pww_ldm.approx` holds the settings and when a layer merges.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Merge = Callable[[torch.Tensor], torch.Tensor]


def draw_destinations(h: int, w: int, stride: tuple[int, int], generator: torch.Generator
                      ) -> torch.Tensor:
    """(h // sy, w // sx) int64: the index, row-major within its sy x sx cell, of each cell's dst."""
    sy, sx = stride
    return torch.randint(sy * sx, (h // sy, w // sx), generator=generator, device=generator.device)


def partition(h: int, w: int, stride: tuple[int, int], choice: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) token indices of a row-major h x w grid, ascending: dst holds each full cell's
    chosen token (choice as `draw_destinations` gives it), src every other token, including the
    last rows and columns of a grid that the cells do not divide."""
    sy, sx = stride
    cells_y, cells_x = choice.shape
    ys = torch.arange(cells_y)[:, None] * sy + torch.div(choice.cpu(), sx, rounding_mode="floor")
    xs = torch.arange(cells_x)[None, :] * sx + choice.cpu() % sx
    is_dst = torch.zeros(h, w, dtype=torch.bool)
    is_dst[ys, xs] = True
    is_dst = is_dst.flatten()
    return (~is_dst).nonzero().squeeze(1), is_dst.nonzero().squeeze(1)


def bipartite_soft_matching_2d(metric: torch.Tensor, h: int, w: int, r: int, stride: tuple[int, int],
                               choice: torch.Tensor) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens whose similarity is measured on `metric` (B, N = h*w, C).

    r: tokens to merge away (capped at the number of srcs); choice: each cell's dst
    (`draw_destinations`). merge: (B, N, C') -> (B, N - r, C'), [unmerged srcs; dsts];
    unmerge: (B, N - r, C') -> (B, N, C'), every token given its own or its dst's value.
    The matching is computed once here, on `metric`; merge and unmerge apply it to any tensor.
    """
    b, n, _ = metric.shape
    src, dst = (i.to(metric.device) for i in partition(h, w, stride, choice))
    r = min(r, src.numel())
    unit = metric / metric.norm(dim=-1, keepdim=True)
    scores = unit[:, src] @ unit[:, dst].transpose(-1, -2)  # (B, n_src, n_dst) cosine similarity
    best, best_dst = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)  # the most similar srcs merge first
    moved, kept = order[:, :r], order[:, r:]
    target = best_dst.gather(1, moved)  # (B, r): the dst each merged src goes to
    moved_token, kept_token = src[moved], src[kept]  # (B, r), (B, n_src - r) grid indices

    def along(index: torch.Tensor, c: int) -> torch.Tensor:
        return index[..., None].expand(-1, -1, c)

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        x_src, x_dst = x[:, src], x[:, dst]
        stay = x_src.gather(1, along(kept, c))
        x_dst = x_dst.scatter_reduce(1, along(target, c), x_src.gather(1, along(moved, c)),
                                     reduce="mean")  # include_self: the dst's own value counts
        return torch.cat([stay, x_dst], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        c, n_kept = y.shape[-1], kept.shape[1]
        stay, y_dst = y[:, :n_kept], y[:, n_kept:]
        out = y.new_empty(b, n, c)
        out[:, dst] = y_dst
        out.scatter_(1, along(kept_token, c), stay)
        out.scatter_(1, along(moved_token, c), y_dst.gather(1, along(target, c)))
        return out

    return merge, unmerge
