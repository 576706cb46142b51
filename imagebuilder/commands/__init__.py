"""Groups of click commands kept out of cli.py so that cli.py stays a short table of contents.

Each module exposes ``COMMANDS``, a list of click commands that cli.py registers with
``cli.add_command``. Modules here import only click at load time; the library is imported when
a command runs, as in cli.py.
"""
