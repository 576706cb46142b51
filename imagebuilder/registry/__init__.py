"""Registries: images of the store in, images on an OCI registry out (and back).

:mod:`.refs` checks a registry reference, :mod:`.creds` finds its credentials, :mod:`.client`
speaks the distribution API to one host (:mod:`.urls` judges where a URL goes) and returns what
it sends as bounded, verified streams (:mod:`.streams`), :mod:`.manifest` checks what it
replies, :mod:`.transfer` pushes and pulls (the store writes what the client streams), and
:mod:`.promote` moves an environment's tag.
"""
