"""Error types. Every error a user can cause is an `IADR1Error`: one line naming the file and the problem."""


class IADR1Error(Exception):
    """Base class: the CLI prints the message on one line and exits with status 1 (no traceback)."""


class DataError(IADR1Error):
    """Bad input data: a missing or unreadable file, malformed JSON, a record that fails validation."""


class ConfigError(IADR1Error):
    """An invalid option or configuration value."""
