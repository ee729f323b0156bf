"""Tokenizers: text <-> integer ids."""
