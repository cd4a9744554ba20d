"""Prefect drivers over dvc.yaml's stages: the flow (each task one stage through DVC) and the sweep.

No stage logic lives here. Prefect re-imports the flow module in a fresh process for every
deployment run, so nothing in this package imports TensorFlow, Great Expectations or MLflow at
module top level.

The checkout this package sits in also provides `char_rnn` (its `src/`), ahead of any installed
copy, for this process and the ones it starts (the stage commands DVC runs, served flow runs): a
work-pool worker's clone runs the code it cloned, not whichever checkout the environment installed in
editable mode. Imported first on every path into the pipeline (`python -m pipelines`, the
deployment's entrypoint `pipelines.flow.char_rnn_pipeline`, a Dask worker's sweep trial).
"""

import os
import sys
from pathlib import Path

CODE_DIR = Path(__file__).resolve().parents[1]

if (CODE_DIR / "src" / "char_rnn").is_dir():
    sys.path.insert(0, str(CODE_DIR / "src"))
_paths = [str(CODE_DIR), str(CODE_DIR / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(_paths))
