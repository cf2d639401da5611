"""Fault injection for the test-only second device (tests/second_device.py).

Each GPU-only device bug must fail under the mechanism and its corrected form must pass, both in
this process (``activate()``) and in notebook kernels started with the course's start-up hook.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import second_device as sd
from course_lib.device import model_device
from course_lib.metrics import generation_speed, perplexity
from course_lib.footprint import footprint_bytes
from course_lib.tiny_models import tiny_llama

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "nb_startup"))
import second_device_plugin as plugin  # noqa: E402
IDS = [[1, 5, 7, 9, 11, 13]]


@pytest.fixture
def on_device():
    """A tiny Llama on the second device, with the modes active, and its plain CPU twin."""
    reference = tiny_llama()
    with sd.activate():
        model = tiny_llama().to(sd.SECOND_DEVICE)
        yield model, reference


def test_moved_model_reports_the_second_device_and_computes_the_same_numbers(on_device):
    model, reference = on_device
    assert model_device(model) == sd.SECOND_DEVICE
    assert isinstance(next(model.parameters()), torch.nn.Parameter)
    logits = model(input_ids=torch.tensor(IDS, device=model_device(model))).logits
    assert isinstance(logits, sd.SecondDeviceTensor) and logits.device == sd.SECOND_DEVICE
    expected = reference(input_ids=torch.tensor(IDS)).logits
    torch.testing.assert_close(logits.detach().cpu(), expected.detach())
    assert type(logits.cpu()) is torch.Tensor  # .cpu() leaves the second device


def test_moves_keep_tied_weights_tied_and_copies_independent(on_device):
    model, reference = on_device
    count = sum(p.numel() for p in reference.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == count
    assert footprint_bytes(model) == footprint_bytes(reference)  # tells tensors apart by data_ptr
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.add_(1.0)
    assert twin.model.embed_tokens.weight.cpu()[0, 0] == model.lm_head.weight.cpu()[0, 0] + 1.0
    model.cpu()
    assert model.lm_head.weight is model.model.embed_tokens.weight and model_device(model).type == "cpu"
    assert type(model.lm_head.weight) is torch.nn.Parameter


def test_fault_a_tensor_created_without_device(on_device):
    model, _ = on_device
    with pytest.raises(sd.SecondDeviceError, match=r"(?s)embedding.*`indices` \(int64 \[1, 6\]\) is on the CPU.*model_device"):
        model(input_ids=torch.tensor(IDS))
    model(input_ids=torch.tensor(IDS, device=model_device(model)))  # the fix
    model(input_ids=torch.tensor(IDS).to(model_device(model)))  # the other fix


def test_fault_b_numpy_and_plotting_of_a_model_output(on_device):
    model, _ = on_device
    logits = model(input_ids=torch.tensor(IDS, device=model_device(model))).logits.detach()
    with pytest.raises(sd.SecondDeviceError, match=r"\.numpy\(\).*call `\.cpu\(\)` before"):
        logits.numpy()
    with pytest.raises(sd.SecondDeviceError, match=r"NumPy conversion.*call `\.cpu\(\)`"):
        np.asarray(logits[0, 0])
    fig, ax = plt.subplots()
    try:
        with pytest.raises(sd.SecondDeviceError, match="matplotlib"):
            ax.plot(logits[0, 0])
        assert logits.cpu().numpy().shape == (1, 6, logits.shape[-1])  # the fix
        ax.plot(logits[0, 0].cpu())
    finally:
        plt.close(fig)


def test_fault_c_student_from_config_left_on_the_default_device(on_device):
    teacher, _ = on_device
    ids = torch.tensor(IDS, device=model_device(teacher))
    student = tiny_llama(num_layers=1)  # built like from_config: on the CPU
    with pytest.raises(sd.SecondDeviceError, match="mixes devices"):
        student(input_ids=ids)
    cpu_student_logits = student(input_ids=ids.cpu()).logits
    with pytest.raises(sd.SecondDeviceError, match="mixes devices"):  # the KL against the teacher
        F.kl_div(F.log_softmax(cpu_student_logits, -1), F.softmax(teacher(input_ids=ids).logits, -1),
                 reduction="batchmean")
    student.to(model_device(teacher))  # the fix
    loss = F.kl_div(F.log_softmax(student(input_ids=ids).logits, -1),
                    F.softmax(teacher(input_ids=ids).logits, -1), reduction="batchmean")
    assert loss.device == sd.SECOND_DEVICE and float(loss.detach()) >= 0


def test_fault_d_tokenizer_output_not_moved(on_device):
    from transformers import BatchEncoding

    model, _ = on_device
    encoding = BatchEncoding({"input_ids": torch.tensor(IDS), "attention_mask": torch.ones(1, 6, dtype=torch.long)})
    with pytest.raises(sd.SecondDeviceError, match="is on the CPU"):
        model(**encoding)
    model(**encoding.to(model_device(model)))  # the fix


def test_generate_backward_and_optimizer_step_on_the_second_device(on_device):
    model, reference = on_device
    ids = torch.tensor(IDS, device=model_device(model))
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert out.device == sd.SECOND_DEVICE
    expected = reference.generate(torch.tensor(IDS), max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert out.cpu().tolist() == expected.tolist()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.grad is not None and weight.grad.device == sd.SECOND_DEVICE
    before = weight.detach().cpu().clone()
    optimizer.step()
    assert (weight.detach().cpu() - before).abs().max() > 0
    assert float(model(input_ids=ids, labels=ids).loss) < float(loss)


def test_course_metrics_on_the_second_device(on_device, tokenizer):
    model, reference = on_device
    blocks = torch.randint(3, 1000, (3, 16), generator=torch.Generator().manual_seed(0))
    ppl = perplexity(model, blocks, batch_size=2, progress=False)  # blocks given on the CPU: moved inside
    assert ppl == pytest.approx(perplexity(reference, blocks, batch_size=2, progress=False), rel=1e-5)
    speed = generation_speed(model, tokenizer, new_tokens=3, repeats=1, warmup=0)
    assert speed["new_tokens"] == 3 and speed["tokens_per_s"] > 0


def test_what_cuda_allows_does_not_trigger_an_alarm():
    with sd.activate():
        x = torch.zeros(4, device=sd.SECOND_DEVICE)
        x += torch.tensor(1.0)  # a 0-dim CPU scalar
        x[torch.tensor([0, 2])] = 3.0  # CPU indices
        assert torch.cat([torch.tensor([], device="meta"), x]).tolist() == [3.0, 1.0, 3.0, 1.0]
        assert torch.cat([x, torch.empty(0)]).shape == (4,)  # an empty CPU tensor
        x.copy_(torch.arange(4.0))  # copies across devices are legal
        assert f"{x.sum():.1f}" == "6.0" and x[1].item() == 1.0
        cpu = torch.empty(4)
        cpu.copy_(x)
        assert type(cpu) is torch.Tensor and cpu.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert torch.tensor([1, 2]).new_tensor([3]).device.type == "cpu"
        assert x.new_tensor([3.0]).device == sd.SECOND_DEVICE


def test_cpu_only_int8_kernels_refuse_second_device_inputs():
    from torch.ao.quantization import quantize_dynamic

    layer = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)), {torch.nn.Linear}, dtype=torch.qint8)
    with sd.activate():
        with pytest.raises(sd.SecondDeviceError, match="CPU-only kernel"):
            layer(torch.ones(2, 8, device=sd.SECOND_DEVICE))
        assert layer(torch.ones(2, 8)).shape == (2, 4)  # the fix: its inputs stay on the CPU


def test_bad_use_gets_a_clear_error():
    with pytest.raises(ValueError, match="not active"):
        sd.deactivate()
    with pytest.raises(ValueError, match="plain CPU tensor"):
        sd.SecondDeviceTensor(torch.zeros(2, device="meta"))
    assert not sd.is_active()
    with sd.activate():
        assert sd.is_active()
        with sd.suspended():
            assert not sd.is_active()
        assert sd.is_active()


def test_startup_file_does_nothing_without_the_environment_variable(tmp_path, monkeypatch):
    startup = plugin.write_ipython_dir(tmp_path)
    assert startup.name == "00-second-device.py" and "install_for_course" in startup.read_text()
    monkeypatch.delenv(plugin.ENV_VAR, raising=False)
    script = f"exec(open({str(startup)!r}).read()); import sys; print('second_device' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- notebooks

FAULTS = {  # cell source -> expected error (None: must run)
    "from course_lib.device import pick_device, model_device\n"
    "import course_lib.models, course_lib.notebook_setup, torch\n"
    "assert pick_device() == torch.device('meta'), pick_device()\n"
    "assert course_lib.models.pick_device() == course_lib.notebook_setup.pick_device() == pick_device()\n"
    "assert pick_device('cpu') == torch.device('cpu')\n"
    "course_lib.models.check_quantization_supported('nf4', pick_device())  # quantized models load on the CPU": None,
    "from course_lib.tiny_models import tiny_llama\n"
    "model = tiny_llama().to(pick_device())\nassert model_device(model) == pick_device()": None,
    "model(input_ids=torch.tensor([[1, 2, 3]]))": "aten.embedding.default mixes devices",
    "out = model(input_ids=torch.tensor([[1, 2, 3]], device=model_device(model))).logits": None,
    "out.detach().numpy()": "call `.cpu()` before `.numpy()`",
    "import matplotlib.pyplot as plt\nplt.plot(out[0, 0].detach())": "NumPy conversion",
    "plt.plot(out[0, 0].detach().cpu()); out.detach().cpu().numpy().shape": None,
    "student = tiny_llama(num_layers=1)\nstudent(input_ids=torch.tensor([[1, 2]], device=model_device(model)))":
        "mixes devices",
    "student.to(model_device(model))(input_ids=torch.tensor([[1, 2]], device=model_device(model)))": None,
    "enc = {'input_ids': torch.tensor([[1, 2]]), 'attention_mask': torch.ones(1, 2, dtype=torch.long)}\n"
    "model(**enc)": "is on the CPU",
    "model(**{k: v.to(model_device(model)) for k, v in enc.items()})": None,
}


def _notebook(cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _kernel_env(tmp_path, monkeypatch):
    plugin.write_ipython_dir(tmp_path / "ipython")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv(plugin.ENV_VAR, "1")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))


def test_notebook_faults_fail_and_fixes_pass_in_a_kernel(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    _kernel_env(tmp_path, monkeypatch)
    nb = _notebook(FAULTS)
    NotebookClient(nb, timeout=600, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell, expected in zip(nb.cells, FAULTS.values()):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if expected is None:
            assert not errors, f"cell failed but should run:\n{cell.source}\n{errors}"
        else:
            assert errors and errors[0].ename == "SecondDeviceError", f"cell should fail:\n{cell.source}"
            assert expected in errors[0].evalue, errors[0].evalue


def test_nbval_report_names_the_notebook_cell_and_the_message(tmp_path, monkeypatch):
    import nbformat

    _kernel_env(tmp_path, monkeypatch)
    monkeypatch.delenv("IPYTHONDIR")  # the pytest plugin sets it up itself
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "nb_startup"), str(TESTS.parent)]))
    path = tmp_path / "faulty.ipynb"
    nbformat.write(_notebook(["import torch\nfrom course_lib.device import pick_device",
                              "torch.ones(2, device=pick_device()) + torch.ones(2)"]), path)
    command = [sys.executable, "-m", "pytest", "-p", "second_device_plugin", "--nbval-lax", "--nbval-current-env",
               "-p", "no:cacheprovider", "-q", "--color=no", "-W", "ignore", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 1, report
    assert "faulty.ipynb::Cell 1" in report and "1 failed, 1 passed" in report, report
    assert "SecondDeviceError" in report and "aten.add.Tensor mixes devices" in report, report
    assert "move it with `.to(model_device(model))`" in report, report


# --------------------------------------------------------------------------- the library patches

PATCH_CHECKS = '''
import json, sys, torch
sys.path[:0] = [{tests!r}, {startup!r}]
if {install}:  # as the kernel's start-up file does: before any course module is imported
    import second_device_plugin
    second_device_plugin.install_for_course()
from accelerate.state import PartialState
from course_lib import metrics, training
from course_lib.lora import add_lora_, lora_config
from course_lib.tiny_models import tiny_llama

def observe():
    from course_lib.device import pick_device
    seen = {{"pick_device": str(pick_device())}}
    model = add_lora_(tiny_llama().to(pick_device()), r=2)
    model.add_adapter("second", lora_config(model.base_model.model, r=2))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    seen["second adapter"] = str(layer.lora_A["second"].weight.device)
    seen["trainer device"] = str(training.trainer_arguments("/tmp/unused", steps=1, lr=1e-3, batch_size=1).device)
    seen["accelerate device"] = str(PartialState().default_device)
    stand_in = tiny_llama()
    stand_in.on_cpu_for_the_second_device = True  # what load_model marks a bitsandbytes model with
    seen["timing devices"] = sorted({{str(d) for d in metrics._timing_devices({{"a": model, "b": stand_in}}).values()}}) \\
        if str(pick_device()) == "meta" else None
    kernelized = tiny_llama().to(pick_device())
    kernelized.use_kernels = True  # as from_pretrained sets it; train() then re-applies hub kernels
    seen["kernelized train()"] = kernelized.train().training
    return seen

print(json.dumps(observe()))
'''


def test_library_patches_place_adapters_trainer_and_timing_on_the_second_device(monkeypatch):
    """Each patch of the plugin changes what the library does from the CPU answer to the second
    device, as on a GPU: a second peft adapter, the Trainer's and accelerate's device,
    compare_speeds' one-device rule for bitsandbytes stand-ins (which stay on the real CPU), and
    the hub kernels transformers re-applies on ``train()`` (which refuse the type ``meta``)."""
    import json

    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    seen = {}
    for label, install in (("before", False), ("after", True)):
        script = PATCH_CHECKS.format(tests=str(TESTS), startup=str(TESTS / "nb_startup"), install=install)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        seen[label] = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["before"]["pick_device"] == "cpu" and seen["before"]["trainer device"] == "cpu"
    assert seen["after"] == {"pick_device": "meta", "second adapter": "meta", "trainer device": "meta",
                             "accelerate device": "meta", "timing devices": ["meta"],
                             "kernelized train()": True}, seen
