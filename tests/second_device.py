"""A test-only "second device": catches GPU-only device bugs on a CPU-only machine.

What it simulates
-----------------
On a GPU, a tensor on ``cuda`` and a tensor on the CPU cannot meet in one operation
("Expected all tensors to be on the same device"), and ``.numpy()`` or matplotlib on a ``cuda``
tensor fails ("can't convert cuda:0 device type tensor to numpy"). On a CPU-only machine every
tensor is on the CPU, so these bugs pass CI and break on Colab. This module adds a second device
that behaves like a GPU for those two rules while computing on the CPU:

* :class:`SecondDeviceTensor` is a tensor subclass that *reports* ``device("meta")`` and holds the
  real CPU tensor in ``.elem``. (A wrapper that reports ``cuda`` aborts the process on a CPU build
  of torch, so ``meta`` stands in for the GPU; ``model_device(model)`` then says ``meta``.)
* :class:`SecondDeviceMode` (a ``TorchDispatchMode``) sees every aten operation. It turns
  ``.to("meta")`` and factory calls with ``device="meta"`` into real CPU computations whose
  results are wrapped, unwraps inputs for the real computation and re-wraps outputs, and raises
  :class:`SecondDeviceError` when one operation mixes second-device tensors with non-empty plain
  CPU tensors. :class:`SecondDeviceFunctionMode` catches ``torch.tensor(..., device="meta")``
  (and ``as_tensor``, ``asarray``, ``Tensor.new_tensor``), which never reach the dispatcher.
* ``.numpy()``, ``np.asarray`` (hence matplotlib and pandas) on a wrapped tensor raise.

Use :func:`activate` (a context manager) in tests. For notebooks, ``tests/nb_startup/second_device_plugin.py``
makes the course itself run on the second device (``make test-second-device``).

Rules, as on CUDA
-----------------
* Empty tensors and 0-dim CPU tensors may meet second-device tensors (CUDA accepts CPU scalars).
* ``copy_`` across devices is allowed, and CPU index tensors may index a second-device tensor.
* Plain ``meta`` tensors that library code creates outside the modes count as on the second
  device; they have no data, so only empty ones can take part in a computation (else the error
  says so: it is a limit of this mechanism, not a bug of the code under test).
* Kernels that exist only for the CPU (the ``quantized::`` namespace of ``torch.ao`` int8) refuse
  second-device inputs, as they would refuse ``cuda`` inputs.

Limits (what it does NOT check)
-------------------------------
* Code that branches on ``device.type == "cuda"`` or ``torch.cuda.is_available()`` takes its CPU
  branch here; those branches need their own review. Code that branches on
  ``device.type == "cpu"`` sees ``meta`` and takes its non-CPU branch.
* bitsandbytes-quantized models are loaded on the real CPU by the notebook plugin (their
  kernels read raw memory, which a wrapper does not have): their inputs must be moved with
  ``model_device(quantized_model)``, which says ``cpu``. Feeding them tensors from another model's
  device is reported, which is stricter than a GPU where both models would be on ``cuda``.
* While active, ``torch.nn.Module._apply`` is replaced by a version that keeps tied weights tied
  when a model moves between the CPU and the second device (torch itself would untie them here).
* Speed, memory, dtype support and numerics of a real GPU are not simulated; ``data_ptr``,
  safetensors saving and ``torch.cuda`` memory statistics of wrapped tensors do not work
  (``data_ptr`` gives the real CPU address, for telling tensors apart).
* Modes are thread-local: a thread started by the code under test runs without them.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = [
    "SECOND_DEVICE", "SecondDeviceError", "SecondDeviceTensor", "SecondDeviceMode",
    "SecondDeviceFunctionMode", "activate", "deactivate", "is_active", "suspended", "on_second_device",
    "is_second_device", "enter",
]

SECOND_DEVICE = torch.device("meta")
NAME = "the second device (a stand-in for a GPU, reported as device 'meta')"
MOVE_HINT = ("Fix: create it on the model's device (`device=model_device(model)`) or move it with "
             "`.to(model_device(model))` (`course_lib.device.model_device`); move a whole model "
             "with `model.to(pick_device())`.")
NUMPY_HINT = ("Fix: call `.cpu()` before `.numpy()`/plotting, e.g. `t.detach().cpu().numpy()` or "
              "`plt.plot(t.cpu())`.")
ATEN = torch.ops.aten
# Operations that accept CPU tensors next to CUDA tensors, and the arguments that may be on the CPU.
CROSS_DEVICE_ARGS = {ATEN.copy_.default: {"self", "src"}, ATEN._to_copy.default: {"self"},
                     ATEN.index.Tensor: {"indices"}, ATEN.index_put_.default: {"indices"},
                     ATEN.index_put.default: {"indices"}, ATEN._index_put_impl_.default: {"indices"},
                     ATEN.lift_fresh.default: {"self"}, ATEN.lift_fresh_copy.default: {"self"}}
CPU_ONLY_NAMESPACES = ("quantized",)


class SecondDeviceError(RuntimeError):
    """A device bug that would fail on a GPU: tensors of two devices mixed, or NumPy on the device."""


class SecondDeviceTensor(torch.Tensor):
    """A tensor that reports :data:`SECOND_DEVICE` and holds the real CPU tensor in ``.elem``."""

    elem: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        if type(elem) is not torch.Tensor or elem.device.type != "cpu":
            raise ValueError(f"SecondDeviceTensor wraps a plain CPU tensor, got {type(elem).__name__} "
                             f"on {elem.device}.")
        out = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=SECOND_DEVICE,
            requires_grad=elem.requires_grad)
        out.elem = elem
        return out

    def __repr__(self, *, tensor_contents=None):
        return f"{self.elem!r} (on {NAME})"

    def __format__(self, spec):
        if self.dim() == 0:
            return self.item().__format__(spec)
        return repr(self).__format__(spec)

    def data_ptr(self):
        """The real tensor's address: on a GPU ``data_ptr`` works too, and code uses it to tell
        distinct tensors apart (``course_lib.footprint.footprint_bytes``, tied-weight detection)."""
        return self.elem.data_ptr()

    @property
    def is_meta(self):
        """False, as on a GPU: the ``meta`` device type is only this stand-in's label. Libraries treat
        real meta tensors as "no data yet" (``load_state_dict`` skips copying into them, peft does
        not move adapters next to them); tensors on the second device hold data."""
        return False

    def tolist(self):
        """As on CUDA, ``tolist`` copies to Python objects."""
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise SecondDeviceError(f"`.numpy()` on a tensor on {NAME} ({_describe(self)}). On a GPU this "
                                "fails: \"can't convert cuda:0 device type tensor to numpy\". " + NUMPY_HINT)

    def __array__(self, *args, **kwargs):
        raise SecondDeviceError(f"NumPy conversion (`np.asarray`, matplotlib, pandas) of a tensor on "
                                f"{NAME} ({_describe(self)}). On a GPU this fails: \"can't convert "
                                "cuda:0 device type tensor to numpy\". " + NUMPY_HINT)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def on_second_device(t) -> bool:
    """Whether ``t`` is a tensor on the second device (a wrapper, or a plain ``meta`` tensor)."""
    return isinstance(t, torch.Tensor) and (isinstance(t, SecondDeviceTensor) or t.device.type == "meta")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}"


def is_second_device(device) -> bool:
    """Whether ``device`` (a string or ``torch.device``; None: no) names the second device."""
    return device is not None and torch.device(device).type == "meta"


def _named_tensors(func, args, kwargs):
    """(argument name, tensor) for every tensor argument, names from the operator's schema."""
    names = [a.name for a in func._schema.arguments]
    pairs = list(zip(names, args)) + list(kwargs.items())
    found = []
    for name, value in pairs:
        leaves = value if isinstance(value, (list, tuple)) else [value]
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                found.append((name if leaves is not value else f"{name}[{i}]", name, leaf))
    return found


def _check_mixing(func, args, kwargs) -> None:
    """Raise :class:`SecondDeviceError` if ``func`` mixes second-device and non-empty CPU tensors."""
    named = _named_tensors(func, args, kwargs)
    allowed = CROSS_DEVICE_ARGS.get(func, set())
    second = [(label, t) for label, _, t in named if on_second_device(t)]
    cpu = [(label, t) for label, base, t in named if not on_second_device(t) and base not in allowed
           and t.device.type == "cpu" and t.dim() > 0 and t.numel() > 0]
    if second and func.namespace in CPU_ONLY_NAMESPACES:
        label, t = second[0]
        raise SecondDeviceError(
            f"{func} is a CPU-only kernel (torch.ao int8), but its argument `{label}` "
            f"({_describe(t)}) is on {NAME}; on a GPU this fails too. Fix: keep this model and its "
            "inputs on the CPU (`model_device(model)` of a CPU-only model is `cpu`).")
    if second and cpu:
        (c_label, c), (s_label, s) = cpu[0], second[0]
        raise SecondDeviceError(
            f"{func} mixes devices: argument `{c_label}` ({_describe(c)}) is on the CPU, argument "
            f"`{s_label}` ({_describe(s)}) is on {NAME}. On a GPU this fails with \"Expected all "
            "tensors to be on the same device\". " + MOVE_HINT)


def _unwrap(t):
    """The real CPU tensor behind a second-device tensor (plain tensors pass through)."""
    if isinstance(t, SecondDeviceTensor):
        return t.elem
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        if t.numel() == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        raise SecondDeviceError(
            f"A plain 'meta' tensor with data ({_describe(t)}) reached a computation. It was created "
            "outside the second-device modes (e.g. by C++ code or in another thread), so it has no "
            "values: this is a limit of tests/second_device.py, not necessarily a bug of the code.")
    return t


def _tensors(args, kwargs):
    """The tensor arguments (one level of lists, as aten schemas have)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


def _run(func, args, kwargs):
    """Check, compute on the CPU, and wrap what belongs on the second device."""
    device = kwargs.get("device")
    tensors = _tensors(args, kwargs)
    inputs_on_second = any(on_second_device(t) for t in tensors)
    if not inputs_on_second and not is_second_device(device):
        return func(*args, **kwargs)
    if any(not on_second_device(t) and t.dim() > 0 and t.numel() > 0 for t in tensors) or (
            inputs_on_second and func.namespace in CPU_ONLY_NAMESPACES):
        _check_mixing(func, args, kwargs)  # the slow, precise check only when there is a suspect
    if device is not None:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    to_second = is_second_device(device) or (device is None and inputs_on_second)
    cpu_args, cpu_kwargs = tree_map(_unwrap, (args, kwargs))
    out = func(*cpu_args, **cpu_kwargs)
    if not to_second:
        return out
    owners = {id(t.elem if isinstance(t, SecondDeviceTensor) else t): t for t in tensors}

    def wrap(x):
        if not isinstance(x, torch.Tensor) or isinstance(x, SecondDeviceTensor):
            return x
        if id(x) in owners:  # in-place or out= operation: return the caller's own tensor (either device)
            return owners[id(x)]
        return SecondDeviceTensor(x) if x.device.type == "cpu" else x

    return tree_map(wrap, out)


class SecondDeviceMode(TorchDispatchMode):
    """Sees every aten operation; see the module docstring for the rules."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.asarray}


class SecondDeviceFunctionMode(TorchFunctionMode):
    """Makes ``torch.tensor(data, device=<second device>)`` (and friends) hold real values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONSTRUCTORS and is_second_device(kwargs.get("device")):
            return SecondDeviceTensor(func(*args, **{**kwargs, "device": "cpu"}).detach()
                                      ).requires_grad_(bool(kwargs.get("requires_grad", False)))
        if func is torch.Tensor.new_tensor and on_second_device(args[0]) and kwargs.get("device") is None:
            extra = {"dtype": kwargs.get("dtype") or args[0].dtype,
                     "requires_grad": kwargs.get("requires_grad", False)}
            return SecondDeviceTensor(torch.tensor(args[1], dtype=extra["dtype"])
                                      ).requires_grad_(extra["requires_grad"])
        return func(*args, **kwargs)


_ACTIVE: list = []
_MODULE_APPLY = torch.nn.Module._apply


_MEMO: list = []  # one {id(old parameter): (old, new)} per Module._apply call in progress


def _apply_keeping_ties(self, fn, recurse=True):
    """``Module._apply`` (``.to``, ``.cpu``, ``.float``...) that keeps tied weights tied.

    Between two real devices ``Module._apply`` changes each parameter in place (``param.data =``).
    Between a plain tensor and a :class:`SecondDeviceTensor` that is impossible, and torch would give
    every module a new ``Parameter``: weights tied across modules (embeddings = LM head) would come
    untied. Here one new ``Parameter`` per old one is shared by all modules that held it.
    Gradients are moved with their parameters; buffers are converted as torch does.
    """
    top = not _MEMO
    if top:
        _MEMO.append({})
    memo = _MEMO[-1]
    try:
        if recurse:
            for module in self.children():
                module._apply(fn)
        for key, param in self._parameters.items():
            if param is None:
                continue
            if id(param) not in memo:
                memo[id(param)] = (param, _convert_parameter(param, fn))
            self._parameters[key] = memo[id(param)][1]
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self
    finally:
        if top:
            _MEMO.clear()


def _convert_parameter(param, fn):
    with torch.no_grad():
        applied = fn(param)
    grad = param.grad
    if applied is param:
        return param
    if torch._has_compatible_shallow_copy_type(param, applied):
        param.data = applied
        new = param
    else:
        new = torch.nn.Parameter(applied, param.requires_grad)
    if grad is not None:
        with torch.no_grad():
            new.grad = fn(grad)
    return new


def is_active() -> bool:
    """Whether :func:`activate` is in effect in this thread."""
    return bool(_ACTIVE)


def enter() -> None:
    torch.nn.Module._apply = _apply_keeping_ties
    modes = (SecondDeviceFunctionMode(), SecondDeviceMode())
    for mode in modes:
        mode.__enter__()
    _ACTIVE.append(modes)


def deactivate() -> None:
    """Leave the modes entered last by :func:`activate` (or :func:`install_for_course`)."""
    if not _ACTIVE:
        raise ValueError("The second device is not active: nothing to deactivate.")
    for mode in reversed(_ACTIVE.pop()):
        mode.__exit__(None, None, None)
    if not _ACTIVE:
        torch.nn.Module._apply = _MODULE_APPLY


@contextlib.contextmanager
def activate():
    """``with activate():`` every tensor operation in the block follows the second-device rules."""
    enter()
    try:
        yield SECOND_DEVICE
    finally:
        deactivate()


@contextlib.contextmanager
def suspended():
    """Run a block without the modes (wrapped tensors still refuse to mix with CPU tensors)."""
    saved = list(_ACTIVE)
    while _ACTIVE:
        deactivate()
    try:
        yield
    finally:
        for _ in saved:
            enter()
