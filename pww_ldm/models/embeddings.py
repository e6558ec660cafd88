"""Textual-inversion embeddings, used in prompts by their file name as in A1111.

Formats (A1111's `create_embedding_from_data`):

- A1111 / original textual inversion `.pt`: `{"string_to_param": {"*": (n, C)}, ...}` (a dict,
  or a `torch.nn.ParameterDict` in files of the original textual-inversion code);
- `.safetensors` with `emb_params` (n, C) (kohya, A1111 exports);
- diffusers `learned_embeds.bin` / `.safetensors`: one tensor `{"<token>": (C,) or (n, C)}`.

Pickles are read by `checkpoint.load_file_safely` (weights_only, allow-list): a file that asks to
run code is refused, nothing is executed. The embedding's name is the file name without its
extension; the name is tokenized, and wherever the prompt's tokens contain that sequence the
name's tokens are replaced by the embedding's n vectors (chunking keeps the n vectors together).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_file_safely

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
MAX_VECTORS = 75  # an embedding must fit in one 75-token chunk


class EmbeddingError(ValueError):
    """A file that cannot be used as a textual-inversion embedding (the message names it)."""


class EmbeddingShapeError(EmbeddingError):
    """An embedding made for another text encoder (other width, SDXL's clip_l + clip_g pair)."""


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: `vectors` (n, C) float32 on the CPU."""

    name: str
    vectors: torch.Tensor
    path: Path

    @property
    def n_vectors(self) -> int:
        """How many token positions the embedding takes in the prompt."""
        return int(self.vectors.shape[0])


class EmbeddingDatabase:
    """The embeddings a text encoder knows, looked up by the token ids of their names."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[tuple[int, ...], Embedding]] = {}
        # first token id of a name -> (name ids, embedding), longest names first (A1111's order)
        self._by_first_id: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}

    def add(self, embedding: Embedding, name_ids: Sequence[int]) -> None:
        """Register `embedding` under the token ids of its name; replaces one of the same name."""
        if not name_ids:
            raise EmbeddingError(f"{embedding.path}: the name {embedding.name!r} has no tokens; "
                                 "rename the file")
        self.remove(embedding.name)
        ids = tuple(name_ids)
        self._by_name[embedding.name] = (ids, embedding)
        matches = self._by_first_id.setdefault(ids[0], [])
        matches.append((ids, embedding))
        matches.sort(key=lambda item: len(item[0]), reverse=True)

    def remove(self, name: str) -> None:
        """Forget the embedding called `name` (nothing happens if there is none)."""
        if name not in self._by_name:
            return
        ids, _ = self._by_name.pop(name)
        self._by_first_id[ids[0]] = [m for m in self._by_first_id[ids[0]] if m[1].name != name]

    def find_at(self, ids: Sequence[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's ids start at ids[position], and how many ids the name has."""
        for name_ids, embedding in self._by_first_id.get(ids[position], ()):
            if tuple(ids[position : position + len(name_ids)]) == name_ids:
                return embedding, len(name_ids)
        return None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Embedding:
        return self._by_name[name][1]


def _single_tensor(data: Mapping, path: Path) -> Any:
    params = data["string_to_param"]
    if not hasattr(params, "items"):  # a dict or a ParameterDict
        raise EmbeddingError(f"{path}: string_to_param is a {type(params).__name__}, not a mapping")
    params = dict(params.items())
    if len(params) != 1:
        raise EmbeddingError(f"{path}: string_to_param holds {len(params)} terms "
                             f"({', '.join(map(str, params))}); an embedding file must hold one")
    return next(iter(params.values()))


def embedding_vectors(data: object, path: Path) -> torch.Tensor:
    """The (n, C) float32 vectors of a loaded embedding file's content, whichever format it is.

    Raises EmbeddingShapeError for SDXL (clip_l/clip_g) files, EmbeddingError for content that
    is no embedding (naming the keys found).
    """
    if isinstance(data, Mapping) and "string_to_param" in data:
        vectors = _single_tensor(data, path)
    elif isinstance(data, Mapping) and "clip_l" in data and "clip_g" in data:
        raise EmbeddingShapeError(f"{path}: an SDXL embedding (clip_l + clip_g); this model is SD v1")
    elif isinstance(data, Mapping) and isinstance(data.get("emb_params"), torch.Tensor):
        vectors = data["emb_params"]
    elif isinstance(data, Mapping) and len(data) == 1 and isinstance(
            next(iter(data.values())), torch.Tensor):
        vectors = next(iter(data.values()))  # diffusers: {"<token>": vectors}
    else:
        keys = ", ".join(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise EmbeddingError(
            f"{path}: not a textual-inversion embedding (expected string_to_param, emb_params or a "
            f"single tensor; found {keys})")
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (1, 2) or vectors.numel() == 0:
        raise EmbeddingError(f"{path}: the embedding is not a (vectors, width) tensor")
    vectors = vectors.detach().to(torch.float32).reshape(-1, vectors.shape[-1])
    if vectors.shape[0] > MAX_VECTORS:
        raise EmbeddingError(f"{path}: {vectors.shape[0]} vectors; at most {MAX_VECTORS} fit a prompt")
    return vectors.contiguous()


def read_embedding(path: str | os.PathLike, width: int) -> Embedding:
    """One embedding file -> Embedding named after the file; `width` is the text encoder's C.

    Raises EmbeddingError (EmbeddingShapeError for another model's embedding) naming the file.
    """
    path = Path(path)
    try:
        data = load_file_safely(path, extra_globals=(torch.nn.ParameterDict,))
    except CheckpointError as exc:
        raise EmbeddingError(f"embedding {exc}") from exc
    vectors = embedding_vectors(data, path)
    if vectors.shape[1] != width:
        raise EmbeddingShapeError(f"{path}: vectors of width {vectors.shape[1]}; this model's text "
                                  f"encoder takes {width} (an embedding made for another model)")
    return Embedding(name=path.stem, vectors=vectors, path=path)


def embedding_files(folder_or_file: str | os.PathLike) -> list[Path]:
    """The embedding files of a folder (recursively, sorted) or the one file given."""
    path = Path(folder_or_file)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise EmbeddingError(f"{path}: no such embeddings folder or file (--embeddings-dir)")
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)


def load_embeddings(model: Any, folder_or_file: str | os.PathLike) -> list[str]:
    """Load textual-inversion embeddings into a model's text encoder; returns their names.

    `model` is a LatentDiffusion (its cond_stage_model is used) or a FrozenCLIPEmbedder. A folder
    is searched recursively for .pt / .bin / .safetensors; in a folder, embeddings made for
    another model are skipped with a warning (A1111 skips them too), but a file given by name
    must fit. A file that cannot be read is an EmbeddingError naming it. Names are the file
    names without extension; a later file of the same name replaces the earlier one.
    """
    encoder = getattr(model, "cond_stage_model", model)
    width = encoder.token_embedding.weight.shape[1]
    single = Path(folder_or_file).is_file()
    loaded: list[str] = []
    for path in embedding_files(folder_or_file):
        try:
            embedding = read_embedding(path, width)
        except EmbeddingShapeError as exc:
            if single:
                raise
            warnings.warn(f"skipped: {exc}", stacklevel=2)
            continue
        encoder.embedding_db.add(embedding, encoder.tokenizer.encode(embedding.name))
        loaded.append(embedding.name)
    return loaded
