"""Data: find raw text, tokenize it once into memmaps, and draw (B, T) batches from them."""
