"""The one exception the package raises for what pikv refuses."""


class Error(Exception):
    """A pikv failure; str(error) is the library's one-line message
    (pikv_last_error()) or, for the command-line tool, its error line."""
