"""The one exception type users see: a one-line message, no traceback."""

import click


class UserError(click.ClickException):
    """Bad input or an unusable artifact. The message says what was wrong and what is accepted.

    Library code raises it; the CLI prints ``error: <message>`` and exits with status 2.
    """

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def choice_error(what: str, value, accepted) -> UserError:
    """`unknown env 'foo'; accepted: walker, dclaw-screw, ...`"""
    return UserError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
