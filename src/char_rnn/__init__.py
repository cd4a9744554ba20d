"""char-rnn-pipeline: character-level RNN language models, Korean text first.

Quiet, offline defaults are set here, before anything imports TensorFlow, MLflow, DVC or Prefect;
a value already in the environment wins.
"""

import os

for _key, _value in {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # hides TensorFlow's CPU-feature and determinism log lines
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the registry's downloads drew bars on stderr
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # its INFO lines (store migrations, system metrics) drown the progress
}.items():
    os.environ.setdefault(_key, _value)
