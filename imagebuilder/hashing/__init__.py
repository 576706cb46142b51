"""The hashing core: files and trees in, digests and cache keys out.

:mod:`.core` reads a file once, skipping its holes (:mod:`.sparse`), and feeds every digest
that needs it; :mod:`.tree` defines the block-tree ``xxh3`` that both it and :mod:`.parallel`
(a large file's leaves on several cores) compute; :mod:`.keys` turns structured inputs into the
stage cache's keys.
"""
