"""The local store: images, stage outputs and the home holding them.

:mod:`.layout` is the OCI image layout of built images (:mod:`.index` its index.json,
:mod:`.reach` what ``rm`` and ``gc`` keep), :mod:`.blobs` reads its blobs with
proof, :mod:`.refs` says what a reference names, :mod:`.oci` holds the OCI structures,
:mod:`.cache` the stage outputs, :mod:`.check` verifies both, :mod:`.sizes` says what an image
carries, and :mod:`.home` is where all of it lives.
"""
