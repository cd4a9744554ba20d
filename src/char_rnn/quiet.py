"""TensorFlow 2.21 announces its start-up on stderr (absl's and oneDNN's lines) whatever
`TF_CPP_MIN_LOG_LEVEL` says, from native code that Python's logging cannot reach: a driver that is
about to run a stage needing it imports it here first, with the process's stderr closed meanwhile.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow() -> None:
    """Import TensorFlow and Keras with file descriptor 2 pointed at /dev/null; later imports are free."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)
