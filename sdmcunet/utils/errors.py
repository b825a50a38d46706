class SDMCError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    Command-line entry points print its message without a traceback and exit with status 2;
    the message must name the file concerned and say what is wrong with it.
    """
