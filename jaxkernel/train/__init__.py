"""Training: pure losses, the train state and the jitted train/eval steps."""

from jaxkernel.train.losses import TASK_LOSSES, loss_for_task  # noqa: F401
from jaxkernel.train.step import (  # noqa: F401
    ModelDef,
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
    model_from_state,
)
