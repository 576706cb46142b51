"""The one exception hierarchy.

The library never prints and never exits; it raises one of these. The command line turns them
into a single ``ERROR: ...`` line and an exit code: 2 for a user's mistake (they can fix their
input), 1 for a failure of the environment (network, mirror, host tools). Anything else is a bug
and keeps its traceback.
"""


class ImageBuilderError(Exception):
    """Base of every error imagebuilder raises on purpose. Exit code 1."""

    exit_code = 1


class UserError(ImageBuilderError):
    """The user's input is wrong: a bad option, config, reference or file. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """imagebuilder.toml (or the options standing in for it) is invalid."""


class NotFoundError(UserError):
    """A named thing (image reference, environment, package, file) does not exist."""


class HostError(ImageBuilderError):
    """The host cannot do what is asked: a tool is missing, a port is busy, a command failed."""


class FetchError(ImageBuilderError):
    """The archive could not be reached or did not give what was asked for."""


class IntegrityError(FetchError):
    """A signature or digest did not verify; the data was discarded."""


class DamagedError(ImageBuilderError):
    """Stored data (a blob of the image store, a cache entry) is missing or no longer matches its
    digest: the disk or someone changed it. Nothing built from it is written or trusted."""
