"""Who built an image: cosign-format signatures, in-toto attestations, signed-only environments."""
