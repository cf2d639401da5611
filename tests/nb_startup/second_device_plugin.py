"""Run the course's notebooks on the test-only second device (see ``tests/second_device.py``).

* :func:`install_for_course` runs in a notebook kernel: it activates the second device for the
  session and makes the course's one device decision, ``course_lib.device.pick_device()``, return
  it, so everything that follows the course rules lands there.
* As a pytest plugin (``pytest -p second_device_plugin`` with ``tests/nb_startup/`` on ``PYTHONPATH``, as ``make test-second-device`` does): with ``COURSE_SECOND_DEVICE=1`` every
  kernel that nbval starts gets an IPython start-up file that calls :func:`install_for_course`
  before the first cell. A failing cell shows the mode's message in nbval's report.
* ``python tests/nb_startup/second_device_plugin.py --ipython-dir DIR`` writes that start-up file
  for kernels started by hand with ``IPYTHONDIR=DIR COURSE_SECOND_DEVICE=1``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # tests/, where second_device.py lives

import second_device  # noqa: E402
from second_device import SECOND_DEVICE, is_second_device, suspended  # noqa: E402

__all__ = ["ENV_VAR", "install_for_course", "write_ipython_dir"]

ENV_VAR = "COURSE_SECOND_DEVICE"


def install_for_course() -> None:
    """Activate the modes for the session and make the course run on the second device.

    * ``course_lib.device.pick_device`` is patched (before other course modules import it, so their
      ``from .device import pick_device`` gets this one): with no explicit ``preferred`` device and
      no ``COURSE_DEVICE`` it returns :data:`SECOND_DEVICE`.
    * ``PreTrainedModel.from_pretrained`` runs with the modes suspended: reading weights is CPU work
      (and its meta-device initialisation must stay plain); moving the loaded model, e.g. the
      ``model.to(device)`` in ``course_lib.models.load_model``, is checked as usual.
    * ``course_lib.models.load_model`` loads bitsandbytes-quantized models on the real CPU when no
      device or the second device is asked for, and ``check_quantization_supported`` accepts the
      second device for that reason (see the limits in ``tests/second_device.py``). Modules that
      import these at call time (``from .models import load_model`` inside a function) get them.
    """
    import course_lib.device as course_device
    import course_lib.models as course_models
    from transformers import PreTrainedModel

    if getattr(course_device.pick_device, "second_device", False):
        raise ValueError("install_for_course() was already called in this process.")
    original_pick, original_load = course_device.pick_device, course_models.load_model
    original_check = course_models.check_quantization_supported
    original_from_pretrained = PreTrainedModel.from_pretrained.__func__

    def pick_device(preferred=None):
        if preferred is None and os.environ.get(course_device.DEVICE_ENV) is None:
            return SECOND_DEVICE
        if preferred is not None and is_second_device(preferred):
            return SECOND_DEVICE
        return original_pick(preferred)

    def load_model(name=course_models.DEFAULT_MODEL, quantization=None, device=None, **kwargs):
        if quantization is not None and (device is None or is_second_device(device)):
            device = "cpu"  # bitsandbytes kernels need real memory: quantized models stay on the CPU
        model, tokenizer = original_load(name, quantization=quantization, device=device, **kwargs)
        if quantization is not None:
            model.on_cpu_for_the_second_device = True  # on a GPU it would be on the GPU with the others
        return model, tokenizer

    def check_quantization_supported(quantization, device):
        return original_check(quantization, torch.device("cpu") if is_second_device(device) else device)

    def from_pretrained(cls, *args, **kwargs):
        with suspended():
            return original_from_pretrained(cls, *args, **kwargs)

    _patch_libraries_that_special_case_meta(course_models)
    pick_device.__doc__ = original_pick.__doc__ + "\n    (Patched by tests/nb_startup/second_device_plugin.py.)"
    pick_device.second_device = True
    load_model.__doc__ = original_load.__doc__
    course_device.pick_device = course_models.pick_device = pick_device
    course_models.load_model = load_model
    course_models.check_quantization_supported = check_quantization_supported
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    second_device.enter()


def _patch_libraries_that_special_case_meta(course_models) -> None:
    """The second device reports itself as ``meta``, which some libraries treat as "not loaded yet".
    These patches give such places what they would see on a GPU; each says why.

    * peft does not move a new adapter to its base layer's device when another adapter of that
      layer is on ``meta`` (``_move_adapter_to_device_of_base_layer``); on a GPU it moves it.
    * ``transformers.TrainingArguments.device`` and accelerate's default device (where the
      ``Trainer`` places the model) are the GPU when one is present and ``use_cpu`` is False (the
      course's ``training.trainer_arguments`` sets ``use_cpu`` from ``pick_device()``); here that
      is the second device.
    * bitsandbytes models load on the real CPU here (see ``load_model`` above); for
      ``metrics.compare_speeds``' one-device rule they count as on the second device, where a GPU
      would have them. Their inputs still go to ``model_device(model)``, the CPU, and mixing is caught.
    * transformers (5.25+) re-applies its hub kernels (the ``kernels`` package) when ``model.train()``
      or ``model.eval()`` changes the mode of a model loaded with ``from_pretrained``, for the
      model's device type; ``kernels`` refuses the type ``meta``. The second device computes on the
      CPU, so the kernels chosen are the CPU's (on a GPU they would be the GPU's).
    """
    import course_lib.metrics as course_metrics
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import TrainingArguments

    original_move = BaseTunerLayer._move_adapter_to_device_of_base_layer

    def move_adapter(self, adapter_name, device=None):
        original_move(self, adapter_name, device)
        base = self.get_base_layer()
        weight = getattr(base, "weight", None)
        if device is None and weight is not None and second_device.on_second_device(weight):
            for layer_name in self.adapter_layer_names + self.other_param_names:
                layer = getattr(self, layer_name, None)
                if isinstance(layer, torch.nn.ModuleDict) and adapter_name in layer:
                    layer[adapter_name] = layer[adapter_name].to(SECOND_DEVICE)

    from accelerate.state import PartialState

    original_device = TrainingArguments.device
    original_default = PartialState.default_device

    def trainer_device(self):
        device = original_device.fget(self)  # sets up the distributed state the Trainer reads
        return SECOND_DEVICE if not self.use_cpu and not torch.cuda.is_available() else device

    def accelerate_default_device(self):  # where accelerate (and so the Trainer) places the model
        return SECOND_DEVICE if not torch.cuda.is_available() else original_default.fget(self)

    original_devices = course_metrics._timing_devices

    def timing_devices(models):
        stand_ins = {n: m for n, m in models.items() if getattr(m, "on_cpu_for_the_second_device", False)}
        if not stand_ins or len(stand_ins) == len(models):
            return original_devices(models)
        others = original_devices({n: m for n, m in models.items() if n not in stand_ins})
        device = next(iter(others.values()))
        return {n: others.get(n, device) for n in models}

    from transformers.integrations import hub_kernels

    original_device_type = hub_kernels.get_device_type

    def kernel_device_type(device=None):
        return "cpu" if device is not None and is_second_device(device) else original_device_type(device)

    BaseTunerLayer._move_adapter_to_device_of_base_layer = move_adapter
    hub_kernels.get_device_type = kernel_device_type
    TrainingArguments.device = property(trainer_device)
    PartialState.default_device = property(accelerate_default_device)
    course_metrics._timing_devices = timing_devices


STARTUP = '''\
# Written by tests/nb_startup/second_device_plugin.py: run the course on the test-only second device.
import os, sys
if os.environ.get("{env}") == "1":
    sys.path[:0] = [{tests!r}, {here!r}]
    import second_device_plugin
    second_device_plugin.install_for_course()
    print("second device active: course_lib.device.pick_device() ->", second_device_plugin.SECOND_DEVICE)
'''


def write_ipython_dir(folder: str | Path) -> Path:
    """Write an IPython profile whose start-up file calls :func:`install_for_course`.

    Kernels started with ``IPYTHONDIR=folder`` and ``COURSE_SECOND_DEVICE=1`` run on the second
    device from their first cell on. Returns the start-up file's path.
    """
    startup = Path(folder) / "profile_default" / "startup" / "00-second-device.py"
    startup.parent.mkdir(parents=True, exist_ok=True)
    startup.write_text(STARTUP.format(env=ENV_VAR, tests=str(HERE.parent), here=str(HERE)))
    return startup


# ----------------------------------------------------------------------- pytest plugin (-p)


def pytest_configure(config):
    """With ``COURSE_SECOND_DEVICE=1``, point every kernel that nbval starts at a start-up file."""
    if os.environ.get(ENV_VAR) != "1":
        return
    folder = tempfile.mkdtemp(prefix="second-device-ipython-")
    write_ipython_dir(folder)
    os.environ["IPYTHONDIR"] = folder
    config._second_device_dir = folder


def pytest_unconfigure(config):
    folder = getattr(config, "_second_device_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_report_header(config):
    if os.environ.get(ENV_VAR) == "1":
        return f"second device: notebook kernels run with {ENV_VAR}=1 (tests/nb_startup/second_device_plugin.py)"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipython-dir", required=True, help="folder to write the IPython profile to")
    print(write_ipython_dir(parser.parse_args().ipython_dir))
    sys.exit(0)
