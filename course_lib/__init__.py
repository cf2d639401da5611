"""course_lib: the small, tested helper library of the LLM optimization course.

Modules, each introduced in the chapter that teaches it (the full table, one concept per module,
is in CONTRIBUTING.md, "What is where in course_lib"):

* 00 baseline and metrics: ``device``, ``profiles``, ``model_sources``, ``models``, ``data``,
  ``tasks``, ``inference``, ``metrics``, ``footprint``, ``throughput``, ``scorecard``, ``claims``,
  ``training``, ``layers``, ``tiny_models``, ``noise``, ``notebook_setup``, ``colab``;
* 01 hyperparameter search: ``search_space``, ``hpo``, ``hpo_studies``, ``study_analysis``,
  ``hpo_article``, ``hpo_workers``, ``hpo_trainer``;
* 02 pruning: ``pruning``, ``wanda``, ``structured_pruning``, ``sparse_kernels``,
  ``pruning_explorer``, ``widgets``;
* 03 quantization: ``int_quantization``, ``code_books``, ``quantized_storage``, ``quantization``,
  ``torch_int8``, ``gptq``, ``qat``, ``bnb_storage``, ``quantization_plots``;
* 04 distillation: ``distillation``; 05 LoRA and QLoRA: ``lora``, ``lora_training``, ``qlora``;
* 06 structural redesign: ``architecture``, ``layer_removal``;
* ``checks``: exercise checkers; ``exercise_builder``: writes ``exercises/`` from ``solutions/``;
  ``benchmark``: runs the lessons for ``benchmarks/RESULTS.md``.

Import what you need from its module, e.g. ``from course_lib.models import load_model``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
