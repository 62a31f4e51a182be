"""Models on disk: safetensors weights + `config.json` + a model card; the registry under `models/<model_id>/`.

A model folder holds
  model.safetensors  the weights (for trained models: the EMA weights, which are what DiffAE uses downstream)
  config.json        {"model_id", "model": ModelConfig fields, "preprocess": Preprocess fields, "format"}
  card.json          what it was trained on and how well it reconstructs (machine-readable)
  MODEL_CARD.md      the same for people
`model_id` is a content hash (sha256 over the tensors and the canonical config JSON, first 16 hex), so the
same weights and preprocessing always get the same id and a changed byte gets a new one.

Nothing is pickled anywhere: tensors go through safetensors, everything else through JSON. Training state
(optimizer moments, EMA, step) uses the same two formats, see `save_tensors` / `save_optimizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import InputError, StoreError
from .slicedata import Preprocess
from .store import connect

FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"


# ----------------------------------------------------------------------------------------- configs <-> JSON


def config_to_dict(cfg) -> dict:
    """A ModelConfig as plain JSON types."""
    return cfg.to_dict()


def config_from_dict(d: dict):
    """ModelConfig from its JSON form; fields this version does not know are a user-facing error."""
    from .model import ModelConfig

    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise InputError(f"model config not readable by this version: {e}") from None


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------- tensors on disk


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Write tensors as safetensors atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(flat, str(tmp), metadata={"json": json.dumps(meta)} if meta is not None else None)
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def tensors_hash(tensors: dict[str, torch.Tensor], config: dict) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, then the canonical config; first 16 hex."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(_canonical([name, str(t.dtype), list(t.shape)]))
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(_canonical(config))
    return h.hexdigest()[:16]


def save_optimizer(path: str | Path, opt: torch.optim.Optimizer) -> None:
    """Optimizer state as safetensors (moments, step counts) + JSON metadata (param groups) - no pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    save_tensors(path, tensors, {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(path: str | Path, opt: torch.optim.Optimizer) -> None:
    """Restore what `save_optimizer` wrote into an optimizer built over the same parameters."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # JSON turned tuples (Adam's betas) into lists; give them back so the state equals what was saved
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------ models


@dataclass
class LoadedModel:
    """A DAE ready for inference: the network in eval mode plus everything needed to feed it."""

    net: torch.nn.Module  # latentstore.model.DiffusionAutoencoder
    model_config: object  # latentstore.model.ModelConfig
    preprocess: Preprocess
    model_id: str
    card: dict
    path: Path


def save_model(
    out_dir: str | Path,
    state: dict[str, torch.Tensor],
    model_config,
    preprocess: Preprocess,
    card: dict | None = None,
) -> str:
    """Write a model folder (weights, config, card) into `out_dir` and return its `model_id`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": config_to_dict(model_config), "preprocess": preprocess.to_dict()}
    model_id = tensors_hash(state, config)
    save_tensors(out / WEIGHTS, state, {"model_id": model_id})
    (out / CONFIG).write_text(json.dumps({"model_id": model_id, "format": FORMAT, **config}, indent=2) + "\n")
    card = {"model_id": model_id, **(card or {})}
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out / CARD_MD).write_text(render_card(card))
    return model_id


def register_model(store, state: dict[str, torch.Tensor], model_config, preprocess, card=None) -> Path:
    """Save a model into `STORE/models/<model_id>/` (staged in a temp folder, published by rename)."""
    models = connect(store).models.dir  # StoreError for object-store URIs: models need a local folder
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="_staging-", dir=models))
    try:
        model_id = save_model(tmp, state, model_config, preprocess, card)
        final = models / model_id
        if final.exists():  # same content hash = same model; refresh only the card (metrics may be new)
            for name in (CARD_JSON, CARD_MD):
                os.replace(tmp / name, final / name)
        else:
            os.replace(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def update_card(model_dir: str | Path, **fields) -> dict:
    """Merge `fields` into a model's card (e.g. metrics from `eval recon`); the weights and id stay."""
    model_dir = Path(model_dir)
    if model_dir.resolve() == default_model_dir().resolve():
        raise InputError("the shipped default model's card is part of the package; --record needs --model ID")
    card = json.loads((model_dir / CARD_JSON).read_text())
    card.update(fields)
    for name, text in ((CARD_JSON, json.dumps(card, indent=2) + "\n"), (CARD_MD, render_card(card))):
        tmp = model_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, model_dir / name)  # a reader sees the old card or the new one, never half
    return card


def default_model_dir() -> Path:
    """`latentstore/default_model/`, the model shipped inside the package (works from an installed wheel)."""
    return Path(str(resources.files("latentstore") / "default_model"))


def default_model_id() -> str:
    """The id of the model shipped with the package."""
    return json.loads((default_model_dir() / CARD_JSON).read_text())["model_id"]


def resolve_model_dir(model: str | os.PathLike | None = None, store=None) -> Path:
    """A model folder from a model id (looked up in `STORE/models/`, then the shipped default's id), a folder
    path, or None = the shipped default."""
    if model is None or str(model) in ("", "default"):
        path = default_model_dir()
    elif Path(model).is_dir():
        path = Path(model)
    else:
        st = connect(store)
        path = st.models.path(str(model)) if st.local else None
        if path is None or not path.is_dir():
            if str(model) != default_model_id():
                where = st.models.dir if st.local else st.root
                raise StoreError(f"no model {model!r}: not a folder and not in {where}")
            path = default_model_dir()
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise StoreError(f"{path} is not a model folder (needs {WEIGHTS} and {CONFIG})")
    return path


def load_model(
    model: str | os.PathLike | None = None, store=None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a DAE by model id, folder path, or None for the default model shipped with the package.

    Weights come from safetensors only; the network is returned in eval mode on `device`.
    """
    from .model import DiffusionAutoencoder

    path = resolve_model_dir(model, store)
    try:
        config = json.loads((path / CONFIG).read_text())
        model_config = config_from_dict(config["model"])
        net = DiffusionAutoencoder(model_config)
        net.load_state_dict(load_tensors(path / WEIGHTS), strict=True)
        Preprocess(**config["preprocess"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        # A truncated safetensors file, a broken config.json or weights of another shape.
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise StoreError(f"{path} is not a loadable model ({type(e).__name__}: {reason})") from None
    card = json.loads((path / CARD_JSON).read_text()) if (path / CARD_JSON).is_file() else {}
    return LoadedModel(
        net=net.to(device).eval(),
        model_config=model_config,
        preprocess=Preprocess(**config["preprocess"]),
        model_id=config["model_id"],
        card=card,
        path=path,
    )


@dataclass(frozen=True)
class ModelMeta:
    """A model's id, folder and preprocessing, read from its config.json without loading the weights."""

    model_id: str
    path: Path
    preprocess: Preprocess
    config: dict


def load_model_meta(model: str | os.PathLike | None = None, store=None) -> ModelMeta:
    """What a driver needs to know of a model (its actors load the weights): id, folder, preprocessing."""
    path = resolve_model_dir(model, store)
    try:
        config = json.loads((path / CONFIG).read_text())
        return ModelMeta(config["model_id"], path, Preprocess(**config["preprocess"]), config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path} is not a loadable model ({type(e).__name__}: {e})") from None


def render_card(card: dict) -> str:
    """MODEL_CARD.md from card.json: the facts first, then whatever metrics and notes were recorded."""
    lines = [f"# latentstore DAE `{card.get('model_id', '?')}`", ""]
    if card.get("summary"):
        lines += [card["summary"], ""]
    facts = {k: v for k, v in card.items() if not isinstance(v, (dict, list)) and k not in ("summary", "model_id")}
    if facts:
        lines += ["| field | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    for key, value in card.items():
        if isinstance(value, dict):
            lines += [f"## {key}", "", "| | |", "| --- | --- |"]
            lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in value.items()]
            lines += [""]
        elif isinstance(value, list):
            lines += [f"## {key}", ""] + [f"- {item}" for item in value] + [""]
    return "\n".join(lines)
