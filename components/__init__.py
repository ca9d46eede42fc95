"""llm-lifecycle's phases: pure algorithms in core/, one package per phase, MLflow in tracking.py."""

import logging

# torchao, which transformers imports when it is installed, warns on every import about its
# CUDA-only kernels and torch.compile registrations; on a CPU machine that is noise, not news.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
