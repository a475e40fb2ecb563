"""The one exception type of trace reading and analysis: a bad input, named with its problem.

The CLI turns it into a one-line message and exit status 2; library callers catch it to skip a
bad file. It is a ``ValueError``: the input, not perfcallback, is at fault.
"""

from __future__ import annotations

from pathlib import Path


class TraceError(ValueError):
    """A trace file or folder that cannot be analysed.

    Attributes:
        path: The file or folder at fault.
        problem: What is wrong with it, in one line, without the path.

    Example::

        >>> str(TraceError("run/rank-0.json.gz", "not a gzip file"))
        'run/rank-0.json.gz: not a gzip file'
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")
