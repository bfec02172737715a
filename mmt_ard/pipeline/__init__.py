"""The end-to-end training run that `mmt-ard-train` drives, as a library: load the student, teachers and data
(`inputs`), evaluate, train with `MMTARDTrainer`, evaluate again, report (`report`: `results.json`, the model card),
save and push (`publish`), in a run folder that knows what it holds and what changed on resume (`run_dir`).

>>> from mmt_ard.pipeline import ScriptArguments, run_training
>>> from mmt_ard.training import MMTARDConfig
>>> results = run_training(ScriptArguments(student="openai/clip-vit-base-patch32", ...), MMTARDConfig(...))

`run_training` checks only what the library can (the run folder, the evaluation budgets); the command line's own
checks of its flags and names (`mmt_ard.cli.train_checks`) run before it in `mmt-ard-train`.
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "ScriptArguments": ".arguments",
    "parse_eps": ".arguments",
    "RunInputs": ".inputs",
    "load_run_inputs": ".inputs",
    "HubPushError": ".publish",
    "push_to_hub": ".publish",
    "save_student": ".publish",
    "RunFolderError": ".run_dir",
    "check_output_dir": ".run_dir",
    "check_resume": ".run_dir",
    "clear_run": ".run_dir",
    "run_training": ".run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
