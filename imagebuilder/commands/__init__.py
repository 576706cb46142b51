"""Groups of click commands kept out of cli.py so that cli.py stays a short table of contents.

Each module exposes ``COMMANDS``, a list of click commands that cli.py registers with
``cli.add_command``. Modules here import only click at load time; the library is imported when
a command runs, as in cli.py.
"""


def human_size(size: int) -> str:
    """``31.6 MiB``: a byte count for people."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
