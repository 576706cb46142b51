"""Fetching: a suite and package names in, verified Debian packages on disk out.

:mod:`.sources` finds the host's mirror, :mod:`.http` downloads with caps, :mod:`.debian` checks
the signed archive and its indices (:mod:`.debindex` reads their text), :mod:`.lock` pins what
was resolved, :mod:`.deb` unpacks a package and :mod:`.sysroot` runs programs from the unpacked
packages.
"""
