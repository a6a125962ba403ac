"""Face-recognition models in ONNX format, run through onnxruntime.

The field's baselines ship as ONNX files: insightface's ArcFace packs
(buffalo_l ``w600k_r50.onnx``, antelopev2 ``glintr100.onnx``), OpenCV's SFace
and a 512-d MobileFaceNet; ``facebench/models.yaml`` names them, and
``onnx:<file>`` runs any other file. Each file lives under
:func:`facebench.paths.models_root`, fetched by ``facebench models fetch``
(:mod:`facebench.fetch`) or placed by hand.

Per image, the face reaches the network's input size as follows (the note goes
into each pair's ``raw_output``):

``pre-aligned``
    the image already has the input size (e.g. a 112×112 crop): used as it is;
``aligned:dataset``
    the dataset's five landmarks → similarity warp onto the ArcFace template
    (:func:`facebench.align.warp_to_template`);
``aligned:dlib68`` / ``aligned:yunet``
    the setting ``aligner`` picks who finds the five points, same warp: dlib's HOG
    detector and 68-point model, or YuNet (:mod:`facebench.detectors`);
``aligned:dlib68:padded`` / ``aligned:yunet:padded``
    it found none in the image as given, and found them in the image enlarged and
    framed (:func:`facebench.detectors.pad_for_detection`): a tight crop whose face
    fills the frame; with the setting ``pad_retry`` off this step is skipped;
``no face: centre crop``
    the centred square, resized.

Then pixels → ``(x − mean) / std`` in the network's channel order and layout.
With ``flip`` the embedding is f(x) + f(mirrored x), as in insightface's
verification protocol; embeddings are L2-normalised and compared by cosine.

A file without a registry entry gets insightface's preprocessing, decided as
insightface's ``ArcFaceONNX`` does: input size and layout from the graph's input
shape, RGB, mean = std = 127.5, except mean 0 and std 1 when a Sub and a Mul
node sit among the graph's first eight (MXNet exports that normalise inside).
Settings override each of these.
"""
from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from facebench.align import centre_crop, check_landmarks, warp_to_template
from facebench.detectors import ALIGNERS, find_landmarks, landmark_finder, yunet_entry
from facebench.files import file_sha256
from facebench.models import BACKENDS, EmbeddingVerifier
from facebench.paths import PROJECT_ROOT, models_root

# insightface model_zoo/arcface_onnx.py: blobFromImages(img, 1/127.5, size, (127.5,)*3, swapRB=True)
# on a BGR image, i.e. RGB input scaled to [-1, 1].
INSIGHTFACE_MEAN = INSIGHTFACE_STD = 127.5
DEFAULT_BATCH_SIZE = 32  # images per forward pass; 64 rows with flip, ~10 MB of input at 112×112
_HASHES: dict[tuple, str] = {}  # (path, size, mtime) → sha256, so a big file is read once per process


def model_path(model: str | Path) -> Path:
    """Where the model file ``model`` is: an absolute path as given; a relative one
    under :func:`~facebench.paths.models_root` or, failing that, the working directory."""
    path = Path(model).expanduser()
    if path.is_absolute():
        return path
    under_root = models_root() / path
    return under_root if under_root.exists() or not path.exists() else path.resolve()


def _cached_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def _registry_entry(model: str) -> tuple[str, dict] | None:
    """The models.yaml entry that names this file, if any (for its licence and source)."""
    from facebench.models import registry_entries

    name = Path(str(model)).name
    for key, entry in registry_entries().items():
        settings = entry.get("settings") or {}
        if entry.get("backend") == "onnx" and Path(str(settings.get("model", ""))).name == name:
            return key, entry
    return None


def file_problem(model: str, expected_sha256: str | None = None, *, entry: dict | None = None) -> str | None:
    """Why the file ``model`` cannot be used (missing, or not the file the registry
    pins by ``expected_sha256``), or None. ``entry`` gives its ``obtain`` and
    ``licence`` (default: the models.yaml entry that names the file)."""
    from facebench.fetch import fetch_hint

    path = model_path(model)
    if not path.is_file():
        entry = entry or (_registry_entry(model) or (None, None))[1]
        origin = f" (from {entry['obtain']}; licence: {entry['licence']})" if entry else ""
        relative = not Path(model).expanduser().is_absolute()
        hint = " (or set FACEBENCH_MODELS to the folder holding it)" if relative else ""
        folder = path.parent
        if folder.is_relative_to(PROJECT_ROOT):  # the book shows this: no machine paths in it
            folder = folder.relative_to(PROJECT_ROOT)
        command = fetch_hint(path.name) if relative else None
        fetch = f", or run `{command}`" if command else ""
        return f"place {path.name}{origin} under {folder}/{hint}{fetch} — see facebench/models.yaml"
    if expected_sha256:
        actual = _cached_sha256(path)
        if actual != expected_sha256.lower():
            return (f"{path} has sha256 {actual}, not the {expected_sha256} this model pins: it is another "
                    "file, and its scores would be labelled as the wrong model. Put the published file there, "
                    f"or run this one as onnx:{path}")
    return None


def graph_preprocessing(path: Path, *, layout: str | None = None) -> dict:
    """What the graph says about its input: ``input_size`` [width, height] (None where the
    graph leaves it open), ``layout`` (``layout`` if given, else from where the 3 channels
    are), ``batch`` (a fixed batch size, or None), and insightface's mean/std rule (module
    docstring)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    weights, read = {init.name for init in graph.initializer}, _names_read(graph)
    # Old exports list the weights among the inputs too, and some list inputs nothing reads
    # (see runnable_model): the image is the first input that is neither.
    data = next(i for i in graph.input if i.name not in weights and i.name in read)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in data.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ValueError(f"{path}: input {data.name!r} has shape {dims}, not (batch, 3, height, width) "
                         "or (batch, height, width, 3)")
    if layout is None:
        layout = "nchw" if dims[1] == 3 else "nhwc" if dims[3] == 3 else None
    if layout is None:
        raise ValueError(f"{path}: cannot tell the channel axis of input shape {dims}; set `layout`")
    h, w = dims[2:4] if layout == "nchw" else dims[1:3]
    names = [node.name for node in graph.node[:8]]
    normalises_inside = (any(n.startswith(("Sub", "_minus")) for n in names)
                         and any(n.startswith(("Mul", "_mul")) for n in names))
    mean, std = (0.0, 1.0) if normalises_inside else (INSIGHTFACE_MEAN, INSIGHTFACE_STD)
    return {"input_size": [w, h], "layout": layout, "batch": dims[0] if dims[0] else None,
            "mean": mean, "std": std, "input_name": data.name, "output_name": graph.output[0].name}


def _names_read(graph) -> set[str]:
    """Every value name a node of ``graph`` or of its subgraphs reads, and the graph's outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names_read(sub)
    return names


def runnable_model(path: Path, *, free_size: bool = False) -> tuple[str | bytes, list[str]]:
    """The ONNX file at ``path`` as onnxruntime can run it, and the repairs made, in
    memory only: the file is never changed, so its sha256 stays the published one.

    - Graph inputs that no node reads are dropped. OpenCV Zoo's int8bq SFace declares
      29 (the float weights its quantised copies replaced); onnxruntime demands a value
      for every input and refuses the file as shipped.
    - A DequantizeLinear whose scale is a single number loses its ``block_size``: one
      block and one scale for the whole tensor are the same arithmetic, but onnxruntime
      refuses a block size on a per-tensor scale (OpenCV Zoo's int8bq YuNet).
    - With ``free_size``, the first input's height and width and the outputs' shapes
      are left open, for a fully convolutional graph that declares one size (YuNet,
      which OpenCV too runs at the size of each image).

    Returns the path itself (as a string) when nothing needed repairing, else the
    repaired model's bytes.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    read = _names_read(graph)
    stale = [i for i in graph.input if i.name not in read]
    dims = {init.name: list(init.dims) for init in graph.initializer}
    per_tensor = [node for node in graph.node if node.op_type == "DequantizeLinear" and len(node.input) > 1
                  and len(dims.get(node.input[1], [0, 0])) <= 1 and int(np.prod(dims[node.input[1]])) == 1
                  and any(a.name == "block_size" and a.i for a in node.attribute)]
    if not stale and not per_tensor and not free_size:
        return str(path), []
    if free_size:
        for axis, name in ((2, "height"), (3, "width")):
            graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
        for output in graph.output:
            output.type.tensor_type.ClearField("shape")
    for i in stale:
        graph.input.remove(i)
    for node in per_tensor:
        kept = [a for a in node.attribute if a.name not in ("block_size", "axis")]
        del node.attribute[:]
        node.attribute.extend(kept)
    repairs = [f"dropped {len(stale)} graph input(s) no node reads"] if stale else []
    if per_tensor:
        repairs.append(f"removed block_size from {len(per_tensor)} per-tensor DequantizeLinear node(s)")
    if free_size:
        repairs.append("input height and width left open")
    return model.SerializeToString(), repairs


def inference_session(path: Path, providers: list[str], *, free_size: bool = False):
    """An onnxruntime session of the file at ``path`` (see :func:`runnable_model`) and the repairs made."""
    import onnxruntime as ort

    model, repairs = runnable_model(path, free_size=free_size)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    return ort.InferenceSession(model, options, providers=providers), repairs


def to_tensor(images: list[Image.Image], *, mean=INSIGHTFACE_MEAN, std=INSIGHTFACE_STD, channels: str = "rgb",
              layout: str = "nchw", flip: bool = False) -> np.ndarray:
    """Stack same-size images into a network input.

    Parameters
    ----------
    images : list of PIL images, all of one size (width W, height H)
    mean, std : float or sequence of 3 floats
        ``(pixel - mean) / std`` on 0–255 values, per channel in ``channels`` order.
    channels : {"rgb", "bgr"}
    layout : {"nchw", "nhwc"}
    flip : bool
        Mirror each image left–right first.

    Returns
    -------
    ndarray, float32, of shape (n, 3, H, W) or (n, H, W, 3)

    Examples
    --------
    >>> im = Image.new("RGB", (2, 1), (255, 0, 0))
    >>> to_tensor([im]).shape
    (1, 3, 1, 2)
    >>> to_tensor([im], channels="bgr", mean=0, std=1, layout="nhwc")[0, 0, 0].tolist()
    [0.0, 0.0, 255.0]
    """
    x = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    if flip:
        x = x[:, :, ::-1]
    if channels == "bgr":
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x)


def aligner_problem(aligner: str | None) -> str | None:
    """Why the aligner cannot run here (YuNet's file missing or not the pinned one), or None."""
    if aligner != "yunet":
        return None
    entry = yunet_entry()
    why = file_problem(entry["file"], entry["sha256"], entry=entry)
    return f"aligner yunet: {why}" if why else None


@BACKENDS.register("onnx")
class OnnxFaceRecognizer(EmbeddingVerifier):
    """An ONNX face-recognition model; score = cosine similarity of the embeddings.

    Settings (each changes scores, so each is part of the run identity):
    ``model`` the file (see :func:`model_path`); ``sha256`` the published file's
    digest (a different file is refused); ``input_size``, ``layout``, ``mean``,
    ``std`` (None: from the graph, see the module docstring); ``channels``
    ``"rgb"``/``"bgr"``; ``flip`` flip-augmented embeddings; ``threshold`` a
    published cosine cut-off for hard decisions (None: no decisions);
    ``aligner`` who finds the five landmarks in photos that are neither crops
    nor given landmarks, ``"dlib"`` or ``"yunet"`` (:mod:`facebench.detectors`);
    ``upsample`` dlib HOG upsampling there; ``pad_retry`` where the aligner finds
    no face, look again in the image enlarged and framed before falling back to
    the centre crop (False: as runs made before it, which centre-cropped tight crops).

    How it runs is not a setting: attribute ``device`` picks the execution
    provider, ``"auto"`` (CUDA where onnxruntime has it, else CPU), ``"cpu"`` or
    ``"cuda"``, set before the first :meth:`embed`; ``batch_size`` caps the images
    per forward pass (each with its mirror image when ``flip``).
    """

    requires = ("onnxruntime", "onnx")

    def __init__(self, *, model: str, sha256: str | None = None, input_size=None, mean=None, std=None,
                 channels: str = "rgb", layout: str | None = None, flip: bool = True,
                 threshold: float | None = None, aligner: str = "dlib", upsample: int = 1,
                 pad_retry: bool = True):
        if aligner not in ALIGNERS:
            raise ValueError(f"model {model!r}: setting aligner must be one of {', '.join(ALIGNERS)}, got {aligner!r}")
        problem = file_problem(model, sha256) or aligner_problem(aligner)
        if problem:
            raise ValueError(f"model {model!r}: {problem}")
        if channels not in ("rgb", "bgr"):
            raise ValueError(f"model {model!r}: setting channels must be 'rgb' or 'bgr', got {channels!r}")
        if layout not in (None, "nchw", "nhwc"):
            raise ValueError(f"model {model!r}: setting layout must be 'nchw' or 'nhwc', got {layout!r}")
        self.path = model_path(model)
        self.sha256 = _cached_sha256(self.path)
        graph = graph_preprocessing(self.path, layout=layout)
        if input_size is not None:
            graph["input_size"] = [int(input_size)] * 2 if np.ndim(input_size) == 0 else [int(s) for s in input_size]
        if None in graph["input_size"]:
            raise ValueError(f"{self.path}: the graph does not fix its input size; set `input_size`")
        if graph["input_size"][0] != graph["input_size"][1]:
            raise ValueError(f"{self.path}: input size {graph['input_size']} is not square, "
                             "and the alignment template is")
        self.size = graph["input_size"][0]
        self.layout = graph["layout"]
        self.mean = graph["mean"] if mean is None else mean
        self.std = graph["std"] if std is None else std
        if np.any(np.asarray(self.std, float) == 0):
            raise ValueError(f"model {model!r}: setting std must not be 0, got {self.std!r}")
        self.channels, self.flip = channels, bool(flip)
        self.threshold = None if threshold is None else float(threshold)
        self.aligner, self.upsample, self.pad_retry = aligner, int(upsample), bool(pad_retry)
        self._find = landmark_finder(aligner, upsample=self.upsample,
                                     yunet_path=model_path(yunet_entry()["file"]) if aligner == "yunet" else None)
        self._fixed_batch, self._input, self._output = graph["batch"], graph["input_name"], graph["output_name"]
        self.device, self.batch_size = "auto", DEFAULT_BATCH_SIZE
        if sha256 is None:
            self._warn_if_registered(model)

    def _warn_if_registered(self, model: str) -> None:
        from facebench.models import registry_entries

        for name, entry in registry_entries().items():
            if (entry.get("settings") or {}).get("sha256") == self.sha256:
                warnings.warn(f"{self.path} is the file of registry model {name!r}, whose settings (e.g. its "
                              f"preprocessing) onnx:{model} does not use: run it as {name!r}", stacklevel=3)

    @classmethod
    def unavailable(cls, settings: dict) -> str | None:
        why = super().unavailable(settings)
        if why:
            return why
        if not settings.get("model"):
            return "no model file: the settings lack `model`"
        return file_problem(settings["model"], settings.get("sha256")) or aligner_problem(settings.get("aligner"))

    @classmethod
    def identity(cls, settings: dict) -> dict:
        # A bare file is identified by its content, so replacing it starts a new
        # run; registry entries pin the content in their settings already.
        if settings.get("sha256") or not settings.get("model"):
            return {}
        path = model_path(settings["model"])
        return {"model_sha256": _cached_sha256(path)} if path.is_file() else {}

    @cached_property
    def _session(self):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ValueError("device 'cuda': this onnxruntime has no CUDAExecutionProvider "
                             f"(it has {available}); install onnxruntime-gpu")
        cuda = self.device != "cpu" and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        session, self._repairs = inference_session(self.path, providers)
        return session

    def info(self) -> dict:
        import onnxruntime as ort

        from facebench.fetch import weights_source

        provider = self._session.get_providers()[0]
        aligner = {"aligner": self.aligner}
        if self.aligner == "yunet":
            aligner["aligner_file"] = yunet_entry()["file"]
            aligner["aligner_sha256"] = yunet_entry()["sha256"]
        return {"model_id": self.path.name, "model_file": str(self.path), "sha256": self.sha256,
                "weights_source": weights_source(self.path, self.sha256), "graph_repairs": self._repairs,
                "revision": f"onnxruntime {ort.__version__}",
                "device": "cuda" if provider == "CUDAExecutionProvider" else "cpu", "provider": provider,
                "preprocessing": {"input_size": self.size, "layout": self.layout, "channels": self.channels,
                                  "mean": self.mean, "std": self.std, "flip": self.flip, **aligner}}

    def align(self, image: Image.Image, landmarks: np.ndarray | None = None) -> tuple[Image.Image, str]:
        """The face at the network's input size, and how it was found (module docstring)."""
        if image.size == (self.size, self.size):
            return image.convert("RGB"), "pre-aligned"
        if landmarks is not None:
            return warp_to_template(image, check_landmarks(landmarks), self.size), "aligned:dataset"
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        found, path = find_landmarks(self._find, pixels, retry=self.pad_retry)
        if found is None:
            return centre_crop(image, self.size), "no face: centre crop"
        note = "aligned:dlib68" if self.aligner == "dlib" else "aligned:yunet"
        return warp_to_template(image, found, self.size), note + (":padded" if path == "padded" else "")

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Network outputs (n, dim) for inputs ``x``, in runs of the graph's fixed batch size if it has one."""
        step = self._fixed_batch or len(x)
        out = []
        for start in range(0, len(x), step):
            part = x[start:start + step]
            n = len(part)
            if n < step:  # a fixed-batch graph takes nothing smaller: pad, then drop the padding's outputs
                part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), part.dtype)])
            out.append(self._session.run([self._output], {self._input: part})[0][:n].reshape(n, -1))
        return np.concatenate(out)

    def embed(self, images: list[Image.Image],
              landmarks: list[np.ndarray | None] | None = None) -> tuple[np.ndarray, list[str]]:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if landmarks is not None and len(landmarks) != len(images):
            raise ValueError(f"got {len(landmarks)} landmark entries for {len(images)} images")
        faces, notes = [], []
        for image, points in zip(images, landmarks if landmarks is not None else [None] * len(images)):
            face, note = self.align(image, points)
            faces.append(face)
            notes.append(note)
        prep = {"mean": self.mean, "std": self.std, "channels": self.channels, "layout": self.layout}
        chunks = []
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start:start + self.batch_size]
            x = to_tensor(chunk, **prep)
            if self.flip:  # each image and its mirror image in the same batch
                x = np.concatenate([x, to_tensor(chunk, flip=True, **prep)])
            y = self._forward(x)
            chunks.append(y[:len(chunk)] + y[len(chunk):] if self.flip else y)
        emb = np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.where(norm > 0, norm, 1), notes

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        return None if self.threshold is None else (scores >= self.threshold).astype(float)
