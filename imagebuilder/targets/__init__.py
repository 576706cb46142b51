"""Targets: a stored image in, a running or published machine out.

:mod:`.qemu` boots it locally, :mod:`.aws` publishes it as an AMI, :mod:`.metal` flashes it
onto a server's disk or serves it over the network. A new cloud gets a folder beside these.
"""
