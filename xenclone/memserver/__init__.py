"""The memory server: blessed images on disk and in RAM, served locally
(memfd passing over a Unix socket) and remotely (TLS with a token)."""
