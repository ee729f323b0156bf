"""Hugging Face interop: import GPT-2 and Llama-family checkpoints, export gptlab models.

One file per architecture (gpt2.py, llama.py) holds the config map and the weight-name table;
convert.py applies a table in either direction one tensor at a time; tensors.py reads and
writes the weight files; tokenizers.py moves tokenizers across; hf.py is the entry point the
rest of gptlab calls. Docs: docs/interop.md.
"""
