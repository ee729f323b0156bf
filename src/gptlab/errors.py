"""The exception types for mistakes a user can fix; the CLI prints either as one line.

- GptlabError: a problem found while running (bad path, corrupt file, wrong shape): exit 1.
- ConfigError: a config or usage mistake (bad flag or value, unknown field, unknown preset,
  unreadable config file): exit 2. It is raised where configs are built from user input
  (config.from_dict / merge / load_file, presets.get_preset, the CLI's parsing).

Anything else that reaches the CLI is a bug and keeps its traceback. Config dataclasses'
`__post_init__` raise plain ValueError (the library contract, see config.py); the builders above
turn it into a ConfigError. ConfigError is also a ValueError, so library code that catches
ValueError around from_dict keeps working.
"""


class GptlabError(Exception):
    """A user-fixable problem; the message says what went wrong, why, and how to fix it."""


class ConfigError(GptlabError, ValueError):
    """A mistake in the config or the command line; the message names the field or file."""
