"""The console commands, built on the library: applications, not building blocks.

* `mmt-ard-train` (`train.py`; also `examples/run_mmt_ard.py`): distil a robust CLIP student, evaluate it, save it
  with a model card, push it. Its arguments (`train_args.py`), inputs (`train_inputs.py`) and report
  (`train_report.py`) are small modules a Python user can call one by one.
* `mmt-ard-eval` (`evaluate.py`): robust zero-shot evaluation with `mmt_ard.evaluation`.
"""
