"""Exception types used by every layer; the CLI turns them into one-line messages and exit codes."""

import operator


def as_integer(value: object) -> int | None:
    """``value`` as an int if it is one integer (Python, numpy, or a 0-d torch or numpy
    tensor), else None: never a bool, a float, a slice or a one-element array."""
    if isinstance(value, bool) or getattr(value, "ndim", 0) != 0 \
            or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def whole_number(value: object, what: str, least: int = 0) -> int:
    """``value`` as an int, else a UsageError naming ``what``: for an argument that counts
    something (a float would fail far from the call, or be cut short without a word)."""
    number = as_integer(value)
    if number is None or number < least:
        raise UsageError(f"{what} must be a whole number, {least} or more; received {value!r}")
    return number


class DsprepError(Exception):
    """Root of every error dsprep raises on purpose."""


class UsageError(DsprepError, ValueError):
    """A bad argument or option value (the CLI exits with code 2)."""


class CorruptImageError(DsprepError, ValueError):
    """A file that is not a decodable image: empty, truncated, garbled or of an unknown format."""


class EmptyImageError(CorruptImageError):
    """A zero-byte file where an image was expected."""


class ImageTooLargeError(CorruptImageError):
    """An image whose pixel count exceeds the limit (a likely decompression bomb)."""


class DatasetFormatError(DsprepError, ValueError):
    """A file that is not in the format a stage expects (not HDF5, not dsprep's schema, ...)."""


class LayoutError(DsprepError, FileNotFoundError):
    """A source or split folder that is missing or does not have the expected layout."""


class SplitError(DsprepError, ValueError):
    """A split that cannot be made as asked (e.g. a class too small for the requested counts)."""


class DestinationExistsError(DsprepError, FileExistsError):
    """An output that already exists and would be overwritten without ``--force``."""


class UnlistedClassError(UsageError):
    """Class folders in ``root`` that the ``classes`` given do not name (``folders``: their
    names); code that passes a split's own classes reports it as a fault of the data."""

    def __init__(self, message: str, root, folders: list[str]) -> None:
        super().__init__(message)
        self.root = root
        self.folders = folders
