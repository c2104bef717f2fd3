"""The driver: what runs on the machine where ``dist-contrast train`` or ``sweep`` is typed.

In the order a run meets them:

* ``plan.py``: the run's plan, computed once (resolved config and paths, run folder, the
  checkpoint to resume, the data's summary, the pre-start checks);
* ``address.py``: which Ray cluster to join and its token;
* ``runtime.py``: Ray started or joined, and stopped;
* ``lifecycle.py``: the MLflow run, opened and ended (train and sweep alike);
* ``trainer.py``: the TorchTrainer (and a sweep's trial as a Ray task);
* ``signals.py``: Ctrl-C and SIGTERM;
* ``failure.py``: a failed run explained in one line;
* ``run.py``: ``run_training``, which puts them together;
* ``tasks.py``: Ray tasks for the offline commands (``dist-contrast mine``'s encoding).
"""
