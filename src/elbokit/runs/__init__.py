"""Run directories: what ``elbokit fit`` writes, and :class:`Run`, which reads one back.

A run directory holds ``config.json`` (the RunConfig), ``dataset.json`` (what was trained on: for a data file its
absolute path, size and SHA-256), ``metrics.jsonl`` (one line per epoch), ``checkpoint.safetensors`` with
``state.json`` (the last epoch) and ``best.safetensors`` (the epoch with the best validation bound), and what
the other commands add beside them: ``evaluation.json``, ``samples.png``, ``reconstructions.png``,
``diagnostics.json``, ``report.html``, ``sweep.json`` with ``sweep/``. ``.lock`` is the writers' lock and
``.replaced/`` a run that ``--overwrite`` set aside (:mod:`elbokit.rundir`).

::

    run = ek.Run.open("runs/demo")            # device="auto", checkpoint="auto" | "best" | "last"
    run.evaluate(k=1000)                      # -> Evaluation (and evaluation.json)
    run.diagnose(k=1000, limit=1000)          # -> elbokit.diagnostics.Diagnosis (and diagnostics.json)
    run.report()                              # -> the path of report.html
    run.sample(64)                            # -> (64, D) tensor
"""

from elbokit.config import PROPOSALS
from elbokit.runs.build import (
    ACTIVATIONS,
    MAX_GRID,
    available_memory,
    build_model,
    check_data,
    check_model_size,
    check_sample_size,
    load_data,
    new_model,
    resolve_likelihood,
)
from elbokit.runs.evaluation import Evaluation, evaluate, evaluation_seconds
from elbokit.runs.factors import SCORES, factor_scores
from elbokit.runs.files import (
    CONFIG,
    DATASET,
    EVALUATION,
    REPLACED_BY_OVERWRITE,
    RUN_FILES,
    RunWriter,
    absolute_data,
    check_data_file,
    describe_data,
    holds_run,
    image_shape,
    is_data_file,
    read_description,
    write_json,
    writing_run,
)
from elbokit.runs.run import (
    CHECKPOINTS,
    DIAGNOSTICS,
    Run,
    current_diagnosis,
    open_run,
    read_history,
    read_sweep,
    write_images,
    write_pictures,
)
from elbokit.runs.train import RESUMABLE, Trained, resumed_config, train_run

__all__ = [
    "ACTIVATIONS",
    "CHECKPOINTS",
    "CONFIG",
    "DATASET",
    "DIAGNOSTICS",
    "EVALUATION",
    "MAX_GRID",
    "PROPOSALS",
    "REPLACED_BY_OVERWRITE",
    "RESUMABLE",
    "RUN_FILES",
    "SCORES",
    "Evaluation",
    "Run",
    "RunWriter",
    "Trained",
    "absolute_data",
    "available_memory",
    "build_model",
    "check_data",
    "check_data_file",
    "check_model_size",
    "check_sample_size",
    "current_diagnosis",
    "describe_data",
    "evaluate",
    "evaluation_seconds",
    "factor_scores",
    "holds_run",
    "image_shape",
    "is_data_file",
    "load_data",
    "new_model",
    "open_run",
    "read_description",
    "read_history",
    "read_sweep",
    "resolve_likelihood",
    "resumed_config",
    "train_run",
    "write_images",
    "write_json",
    "write_pictures",
    "writing_run",
]
