"""Prefect driver over `char_rnn.stages`: one flow, its tasks, the model worker and DVC bookkeeping.

No stage logic lives here. Prefect re-imports the flow module in a fresh process for every
deployment run, so nothing in this package imports TensorFlow, Great Expectations or MLflow at
module top level.
"""
