"""The configuration: ``imagebuilder.toml`` in, a frozen, validated spec out.

:mod:`.spec` declares every key once, as a field of its section's dataclass (name, type,
default, check, one-line doc): that table (:data:`.spec.SETTINGS`) is the frozen spec every later
stage takes, what :mod:`.parse` reads the file with and what :mod:`.reference` writes the
configuration reference from. :mod:`.settings` says what a setting is and reads a section by the
table, :mod:`.checks` checks one value; :mod:`.network` and :mod:`.envlimits` check what an
environment hands the guest at boot.
"""
