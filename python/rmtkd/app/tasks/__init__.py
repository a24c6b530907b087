"""The command line's tasks (``--task text|images|lm``), each turning data and model options into the library's
inputs; see ``base.CommandTask``."""
from rmtkd.app.tasks import images, lm, text  # noqa: F401  (each registers its task)
from rmtkd.app.tasks.base import TASKS, CommandTask, EvalSet, Prepared, Settings

__all__ = ["TASKS", "CommandTask", "EvalSet", "Prepared", "Settings"]
