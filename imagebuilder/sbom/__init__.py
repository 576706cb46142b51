"""What an image is made of, as a software bill of materials (CycloneDX 1.6 and SPDX 2.3)."""
