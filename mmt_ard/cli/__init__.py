"""The console commands, built on the library: applications, not building blocks.

* `mmt-ard-train` (`train.py`; also `examples/run_mmt_ard.py`): distil a robust CLIP student, evaluate it, save it
  with a model card, push it. Here: its parser (`train_args.py`) and the checks of its flags and names
  (`train_checks.py`, `train_flags.py`, `names.py`); the run itself is library code, `mmt_ard.pipeline`
  (`run_training`, and its inputs, report, run folder and publishing as small modules a Python user can call).
* `mmt-ard-eval` (`evaluate.py`): robust zero-shot evaluation with `mmt_ard.evaluation`.

Every command reports user errors the same way (`errors.py`): one line `<command>: error: <what>=<value>: <why>.
<fix>` on stderr, exit status 2 for a wrong command line or configuration, 1 for a failure while running, 75 for
preemption, the traceback only with `--debug` / `MMT_ARD_DEBUG=1`. A command adopts it with one call:

    @command("mmt-ard-x")                 # main(argv) -> exit status, never raises
    def main(argv):
        args = one_line_errors(parser).parse_args(argv)   # argparse's errors: one line too
        check_model_name("--model", args.model)            # names.py: models, datasets, files, devices
        running()                                          # checks done: later errors are run-time failures
        ...
"""
