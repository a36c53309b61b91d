class OnnxfuseError(Exception):
    """A problem with the user's input (file, model, option or data).

    The CLI prints it as one line `error: ...` and exits with status 2.
    """
