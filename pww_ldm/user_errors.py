"""The errors a front end reports as one line `error: ...` with exit status 2, and the one way
a user's image file is opened.

Shared by the generation scripts (`pww_ldm.cli`) and batch generation (`pww_ldm.batch.run`).
It imports the error classes from where they are raised and nothing of the network or pipeline.
"""

from __future__ import annotations

import io
import os

from PIL import Image, UnidentifiedImageError

from .checkpoint import CheckpointError
from .config import ConfigError
from .images import ImageSizeError
from .kernels import AttentionKernelError
from .lora.errors import LoraError
from .region.errors import RegionError
from .samplers.errors import SamplerInputError


class UsageError(ValueError):
    """A bad command-line argument or combination of arguments."""


class ImageFileError(OSError):
    """An input image (colour map, init image) that is missing or cannot be decoded."""


USER_ERRORS = (RegionError, CheckpointError, ConfigError, ImageSizeError, SamplerInputError,
               AttentionKernelError, LoraError, UsageError, ImageFileError, FileNotFoundError,
               IsADirectoryError)


def read_image(path: str | os.PathLike, what: str) -> tuple[Image.Image, bytes]:
    """The image at `path`, decoded now (a truncated file fails here, not mid-run), and the
    file's bytes (to hash them, as batch generation does).

    what: the input's name for the message, e.g. "colour map". Raises ImageFileError saying
    which file, which input, and why it cannot be used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        image = Image.open(io.BytesIO(data))
        image.load()
    except FileNotFoundError:
        raise ImageFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ImageFileError(f"{what} {path} is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"{what} {path} is not an image file (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three on broken files
        raise ImageFileError(f"{what} {path} cannot be read: {exc}") from None
    return image, data


def open_image(path: str | os.PathLike, what: str) -> Image.Image:
    """`read_image` without the bytes."""
    return read_image(path, what)[0]
