class SDMCError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    Command-line entry points print its message without a traceback and exit with status 2;
    the message must name the file concerned and say what is wrong with it.
    """


class OutputWriteError(SDMCError):
    """An output could not be written (a full disk, a quota, an I/O error, a read-only folder).

    Unlike a bad input, it is never a per-item skip: it ends the command (exit status 2), which a
    re-run resumes once the cause is gone. Per-item handlers re-raise it.
    """
