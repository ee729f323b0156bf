"""The `gptlab` command line: one small module per verb, dispatched by main.py."""
