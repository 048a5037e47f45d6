"""The ``recflow`` command (cli/app.py): the top layer, which only calls the stages below it.

Heavy modules (Prefect, TensorFlow, tritonclient) are imported inside the commands that need
them, so ``recflow --help`` and the registry commands answer at once.
"""
