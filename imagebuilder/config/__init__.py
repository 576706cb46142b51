"""The configuration: ``imagebuilder.toml`` in, a frozen, validated spec out.

:mod:`.parse` reads and checks the file (and the options standing in for it), :mod:`.spec` is
the typed result every later stage takes, :mod:`.network` and :mod:`.envlimits` check what an
environment hands the guest at boot.
"""
