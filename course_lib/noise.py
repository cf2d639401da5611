"""Silence the libraries' messages that teach nothing, so that the warnings a learner sees mean something.

:func:`silence_library_noise` installs two kinds of filters, each listed in :data:`NOISE` with the
reason it is noise:

* ``logging`` filters: bitsandbytes and torchao report through the ``logging`` module, which
  ``warnings.filterwarnings`` does not reach;
* ``warnings`` filters for messages that repeat on every call.

What teaches something is *not* silenced here: the library function that triggers it catches
it (``warnings.catch_warnings(record=True)``) and prints one sentence of the lesson's own (see
:func:`course_lib.torch_int8.static_quantize_linears`). Calling the function twice installs
nothing twice.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings

__all__ = ["NOISE", "MessageFilter", "silence_library_noise"]

# (kind, logger name or warning category, message regex, why it is noise)
NOISE = [
    ("logging", "bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward",
     "bitsandbytes looks for the optional `kernels` package (a hub download) on AVX512-BF16 CPUs and "
     "falls back to its own CPU kernel; nothing is wrong and the hub is unreachable here anyway."),
    ("logging", "bitsandbytes.autograd._functions", r"MatMul8bitLt: inputs will be cast",
     "LLM.int8() computes in float16 by design; the lesson says so once, the log says it on every layer."),
    ("logging", "torchao", r"Failed to load .*\.so|Skipping import of cpp extensions",
     "torchao's CUDA-only compiled extensions cannot load on a CPU wheel; the Python paths work."),
    ("logging", "torch.utils._pytree", r"is an Enum subclass and is now natively supported",
     "a torch.compile registration notice raised when torchao is imported; it concerns torchao's authors."),
    ("warnings", UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized "
     r"tensor creation functions",
     "raised inside torch.ao for every quantized layer; the torch.ao deprecation is said once by the lesson."),
    ("warnings", UserWarning, r"Please use quant_min and quant_max to specify the range for observers",
     "raised by PyTorch's own default qconfig, not by anything the learner wrote."),
    ("warnings", "optuna.exceptions.ExperimentalWarning", r".*is experimental \(supported from v",
     "Optuna marks its matplotlib plots as experimental (their interface may change); they work as shown."),
    ("warnings", FutureWarning, r"",
     "transformers, peft and torch announce API changes planned for later releases to library authors; "
     "the course pins versions it was tested with."),
    ("logging", "kernels._internals.hf_hub", r"Skipping publisher trust check",
     "the `kernels` package (pulled in by transformers) says it cannot verify a hub kernel's publisher "
     "offline, when bitsandbytes looks for its optional CPU kernel (see above); nothing is downloaded."),
]


class MessageFilter(logging.Filter):
    """A ``logging`` filter that drops records whose message matches ``pattern`` (``re.search``)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def silence_library_noise() -> list[str]:
    """Install every filter of :data:`NOISE` (once); returns the message patterns now silenced."""
    silenced = []
    for kind, target, pattern, _why in NOISE:
        if kind == "logging":
            logger = logging.getLogger(target)
            if not any(isinstance(f, MessageFilter) and f.pattern.pattern == pattern for f in logger.filters):
                logger.addFilter(MessageFilter(pattern))
        else:
            if isinstance(target, str):  # a category of an optional library, imported only if installed
                module, _, name = target.rpartition(".")
                try:
                    target = getattr(importlib.import_module(module), name)
                except ImportError:
                    continue
            warnings.filterwarnings("ignore", message=pattern, category=target)
        silenced.append(pattern)
    return silenced
