"""The one base class of every error that is the user's to fix (bad params, bad data, a diverged run).

Drivers print these as a single clear message and exit non-zero; anything else is a bug and keeps
its traceback. Prefect does not retry them: they would fail the same way again.
"""


class PipelineError(Exception):
    """Raised with a message that says what was wrong and what is allowed."""
