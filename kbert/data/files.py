"""Reading the text of data files with errors that name the file and line."""

import os


def read_text(path):
    """Returns the UTF-8 text of `path` (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: `path` is a folder.
        ValueError: bytes that are not UTF-8, naming the file, line and byte.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; expected a file.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
            "save the file as UTF-8."
        ) from None
