"""Keep the ML libraries' noise off the terminal, so that a user sees llamarec's own progress and messages only.

Loading a model makes transformers, peft, huggingface_hub, accelerate and bitsandbytes print tqdm bars ("Loading
weights", "Writing model shards", GGUF conversion), log warnings (bitsandbytes: "Failed to load CPU gemm_4bit_forward
from kernels-community ...") and issue FutureWarnings (``is_gradient_checkpointing`` is deprecated ...).
:func:`quiet_libraries` turns these off unless ``LLAMAREC_DEBUG=1``. It imports none of those libraries: it sets
the environment variables they read when imported, the levels of their loggers, and warning filters, and it
reconfigures only the libraries already imported. Environment variables the user set are left as they are.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from . import settings

# Read by the libraries when they are imported: the first three by huggingface_hub and transformers (their tqdm bars
# and log levels: each sets its logger's level from its variable on import, over the level set below, so that
# huggingface_hub's "Retrying in 8s" lines reached the terminal), TQDM_DISABLE by tqdm itself (the bars transformers
# draws with plain tqdm, such as the GGUF conversion). llamarec draws its own progress with rich.
ENV_DEFAULTS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}
LIBRARIES = ("transformers", "peft", "huggingface_hub", "accelerate", "bitsandbytes")
WARNING_CATEGORIES = (FutureWarning, UserWarning, DeprecationWarning)
# Deprecations that transformers may attribute to its caller (stacklevel), i.e. to llamarec's or peft's code.
DEPRECATION_MESSAGE = r"`\w*(gradient|activation)_checkpointing\w*` is deprecated"


def quiet_libraries() -> bool:
    """Silence the libraries' progress bars, warnings and log messages below ERROR; nothing under LLAMAREC_DEBUG=1
    (it then returns False). Cheap and idempotent: call it before a model or tokenizer is loaded."""
    if settings.debug():
        return False
    user_set = {name for name in ENV_DEFAULTS if name in os.environ}
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for library in LIBRARIES:
        if library != "transformers" or "TRANSFORMERS_VERBOSITY" not in user_set:
            logging.getLogger(library).setLevel(logging.ERROR)
        for category in WARNING_CATEGORIES:
            warnings.filterwarnings("ignore", category=category, module=rf"{library}(\.|$)")
    warnings.filterwarnings("ignore", message=DEPRECATION_MESSAGE, category=FutureWarning)
    # Libraries imported already have read the environment: tell them directly.
    if "huggingface_hub" in sys.modules and "HF_HUB_DISABLE_PROGRESS_BARS" not in user_set:
        from huggingface_hub.utils import disable_progress_bars

        with warnings.catch_warnings():  # it warns when HF_HUB_DISABLE_PROGRESS_BARS=0 takes priority
            warnings.simplefilter("ignore")
            disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        if "HF_HUB_DISABLE_PROGRESS_BARS" not in user_set:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                transformers_logging.disable_progress_bar()
        if "TRANSFORMERS_VERBOSITY" not in user_set:
            transformers_logging.set_verbosity_error()
    return True
