"""Sets out: a distilled set as a Hugging Face dataset folder with a dataset card, and its upload.

:func:`export_set` writes, atomically (a temporary folder beside ``out``, renamed into place)::

    <out>/README.md                             dataset card: YAML metadata + a readable summary
    <out>/data/train-00000-of-00001.parquet     one row per sample: x, label (, soft_label) (, image)
    <out>/set.safetensors, <out>/set.json       the distillbench set itself, byte for byte

* ``x`` holds the samples exactly as distillbench trains on them (float32 in the dataset's space, or
  token ids), as an HF ``ArrayND`` feature; ``label`` the class (a ``ClassLabel`` with the dataset's
  names; for soft labels their argmax, and ``soft_label`` the exact probability rows); ``image`` an
  8-bit PNG preview for image sets whose pixels are known (not ZCA): lossy, for browsing only.
* The card's YAML has what ``datasets.load_dataset(out)`` needs (``configs``, ``dataset_info``) and a
  ``distillbench`` block: method and parameters, dataset and parameters, ipc, seed, labels,
  normalisation (space, mean/std or ZCA facts), the rows' results per protocol (from ``--results`` or
  the results directory the set lives in), provenance (versions, distill id, import record) and the
  sha256 of every data file.

:func:`push` uploads such a folder with ``huggingface_hub`` (``HfApi.create_repo`` then
``upload_folder``, ``repo_type="dataset"``). ``HF_ENDPOINT`` points it at another hub; the tests
point it at a local stand-in, since no hub is reachable from the development machines.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distillbench.harness.errors import ConfigError, DataError, DistillBenchError

__all__ = ["DATA_FILE", "Export", "export_set", "push"]

DATA_FILE = "data/train-00000-of-00001.parquet"
CARD_VERSION = 1
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


@dataclasses.dataclass(frozen=True)
class Export:
    """What :func:`export_set` wrote: the folder, its files with their sha256, and the card's results."""

    folder: Path
    checksums: dict[str, str]
    results: list[dict[str, Any]]
    notes: list[str]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _set_identity(set_file: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Method, dataset, ipc and seed of a saved set (distilled or imported), as plain data."""
    imported = meta.get("imported") if isinstance(meta.get("imported"), dict) else None
    resolved = meta.get("resolved") if isinstance(meta.get("resolved"), dict) else {}
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    dataset_spec = (imported or {}).get("dataset") or spec.get("dataset") or meta.get("dataset")
    if not isinstance(dataset_spec, str):
        raise DataError(f"{set_file}: its metadata names no dataset; was it written by distillbench?")
    method = {
        "spec": meta.get("method") or spec.get("method"),
        "name": (resolved.get("method") or {}).get("name") or (imported and f"{imported.get('format')} import"),
        "params": (resolved.get("method") or {}).get("params", {}),
    }
    if imported:
        method["source_method"] = imported.get("source_method")
    return {
        "dataset_spec": dataset_spec,
        "dataset_params": (resolved.get("dataset") or {}).get("params"),
        "method": method,
        "ipc": meta.get("ipc") or spec.get("ipc"),
        "seed": meta.get("seed", spec.get("seed")),
        "weighting": meta.get("weighting"),
        "labels_stage": meta.get("labels"),
    }


def _dataset_facts(dataset_spec: str, data_root: Path | None, notes: list[str]) -> tuple[Any, Any, Any]:
    """(configured dataset, its info, loaded info or None): statistics some datasets know only once loaded."""
    from distillbench.harness.plugins import DATASETS

    configured = DATASETS.resolve(dataset_spec)
    dataset = configured.obj(configured.params)
    info = dataset.info()
    loaded = None
    if info.modality == "image" and not info.mean:
        from distillbench.harness.runner import default_data_root

        root = Path(data_root) if data_root is not None else default_data_root()
        try:  # digits and the coloured MNIST variants compute their statistics from the train split
            dataset.prepare(root, download=False)
            loaded = dataset.load(root).info
        except DistillBenchError as exc:
            notes.append(f"dataset statistics unknown without its data ({str(exc).splitlines()[0][:120]})")
    return configured, info, loaded


def _normalisation(dset: Any, info: Any, loaded: Any) -> dict[str, Any]:
    if info.modality != "image":
        return {"space": "token ids" if dset.x.dim() == 2 else "word embeddings", "zca": False}
    if bool(dset.meta.get("zca", False)):
        from distillbench.datasets._zca import EPS

        return {
            "space": "zca",
            "zca": True,
            "eps": EPS,
            "formula": "x = (pixels_flat - mu) W, W = U diag((S + eps)^-1/2) U^T of the train split's pixel covariance",
            "fit": "kornia ZCAWhitening(eps=0.1) arithmetic on the dataset's train split, pixels in [0, 1]",
        }
    source = loaded if loaded is not None else info
    if not source.mean:
        if loaded is None and info.modality == "image":
            return {"space": "normalised", "mean": None, "std": None, "zca": False, "note": "statistics not known here"}
        return {"space": "pixels", "pixel_max": 1.0, "zca": False, "formula": "x = pixels in [0, 1]"}
    return {
        "space": "normalised",
        "mean": [float(v) for v in source.mean],
        "std": [float(v) for v in source.std],
        "zca": False,
        "formula": "x = (pixels - mean) / std per channel, pixels in [0, 1]",
    }


def _nested(values: np.ndarray) -> Any:
    """``[n, *shape]`` numpy -> an Arrow column of nested lists (the storage of HF ``ArrayND``/``List``)."""
    import pyarrow as pa

    array: Any = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        offsets = np.arange(0, len(array) + 1, size, dtype=np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def _previews(x: np.ndarray, norm: dict[str, Any]) -> list[bytes] | None:
    """8-bit PNGs of image samples whose pixels are known (normalised or pixel space), else None."""
    from PIL import Image

    if x.ndim != 4 or x.shape[1] not in (1, 3) or norm.get("space") not in ("normalised", "pixels"):
        return None
    if norm["space"] == "normalised":
        if not norm.get("mean"):
            return None
        mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        pixels = x * std + mean
    else:
        pixels = x
    u8 = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


_ARRAY_KEYS = {2: "array2_d", 3: "array3_d", 4: "array4_d", 5: "array5_d"}
_HF_TYPES = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32"}


def _table(
    dset: Any, class_names: tuple[str, ...], norm: dict[str, Any]
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """The Parquet table, its HF features (card YAML form) and notes."""
    import pyarrow as pa

    notes: list[str] = []
    x = dset.x.detach().cpu().contiguous().numpy()
    dtype = _HF_TYPES.get(str(x.dtype))
    if dtype is None:
        x, dtype = x.astype(np.float32), "float32"
    sample = list(x.shape[1:])
    columns: dict[str, Any] = {"x": _nested(x)}
    if len(sample) == 1:
        features: list[dict[str, Any]] = [{"name": "x", "list": dtype, "length": sample[0]}]
    elif len(sample) in _ARRAY_KEYS:
        features = [{"name": "x", "dtype": {_ARRAY_KEYS[len(sample)]: {"shape": sample, "dtype": dtype}}}]
    else:
        raise DataError(f"samples of shape {tuple(sample)} have no Hugging Face array feature (1 to 5 dimensions)")
    y = dset.y.detach().cpu()
    label_names = {str(i): name for i, name in enumerate(class_names)}
    if y.dim() == 2:
        columns["soft_label"] = _nested(y.float().numpy())
        features.append({"name": "soft_label", "list": "float32", "length": int(y.shape[1])})
        columns["label"] = pa.array(y.argmax(dim=1).numpy().astype(np.int64))
        notes.append("The `label` column is the argmax of `soft_label`; the set trains on `soft_label`.")
    else:
        columns["label"] = pa.array(y.numpy().astype(np.int64))
    features.append({"name": "label", "dtype": {"class_label": {"names": label_names}}})
    previews = _previews(x, norm) if dtype.startswith("float") else None
    if previews is not None:
        struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns["image"] = pa.array([{"bytes": b, "path": None} for b in previews], type=struct)
        features.append({"name": "image", "dtype": "image"})
        notes.append(
            "The `image` column is an 8-bit PNG preview (pixels clipped to [0, 1]); `x` holds the exact values."
        )
    table = pa.table(columns)
    hf_features = {
        f["name"]: _feature_json(f, class_names)
        for f in features  # the same features as the card, for readers of the Parquet file alone
    }
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": hf_features}})})
    return table, features, notes


def _feature_json(feature: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any]:
    if "list" in feature:
        return {"feature": {"dtype": feature["list"], "_type": "Value"}, "length": feature["length"], "_type": "List"}
    dtype = feature["dtype"]
    if dtype == "image":
        return {"_type": "Image"}
    if "class_label" in dtype:
        return {"names": list(class_names), "_type": "ClassLabel"}
    key = next(iter(dtype))
    kind = {v: k for k, v in _ARRAY_KEYS.items()}[key]
    return {"shape": dtype[key]["shape"], "dtype": dtype[key]["dtype"], "_type": f"Array{kind}D"}


def _find_results(set_file: Path, results: str | Path | None) -> Path | str | None:
    """The results directory whose rows describe the set: given, or the one it lives in (``<r>/sets/x``)."""
    from distillbench.harness import store

    if results is not None:
        loc = store.location(results)
        if not (loc / "rows").is_dir():
            raise ConfigError(f"--results {str(results)!r} has no rows/ folder; pass the --results directory of a run")
        return results
    parent = set_file.resolve().parent
    if parent.name == "sets" and (parent.parent / "rows").is_dir():
        return parent.parent
    return None


def _results(results: Path | str | None, distill_id: str | None, notes: list[str]) -> list[dict[str, Any]]:
    """The set's ok rows, one entry per row (protocol, network, seed, accuracies), sorted."""
    from distillbench.harness import store

    if results is None or not distill_id:
        return []
    wanted = ["trial_id", "distill_id", "status", "protocol", "protocol_version", "eval_network", "seed"]
    wanted += ["acc_mean", "acc_std", "val_acc_mean", "n_eval_models", "acc_per_model"]
    skipped: list[str] = []
    frame = store.read_rows([results], on_bad=lambda path, reason: skipped.append(str(path)))
    if skipped:
        notes.append(f"{len(skipped)} unreadable row file(s) skipped")
    frame = frame[[c for c in wanted if c in frame.columns]]
    frame = frame[(frame["distill_id"] == distill_id) & (frame["status"] == "ok")]
    out = []
    for row in frame.to_dict("records"):
        entry = {
            "protocol": row.get("protocol"),
            "protocol_version": _plain(row.get("protocol_version")),
            "network": row.get("eval_network"),
            "seed": _plain(row.get("seed")),
            "acc_mean": _plain(row.get("acc_mean")),
            "acc_std": _plain(row.get("acc_std")),
            "val_acc_mean": _plain(row.get("val_acc_mean")),
            "n_models": _plain(row.get("n_eval_models")),
            "trial_id": row.get("trial_id"),
        }
        out.append(entry)
    return sorted(out, key=lambda e: (str(e["protocol"]), str(e["network"]), str(e["seed"])))


def _plain(value: Any) -> Any:
    """Numpy / pandas scalars as Python numbers (YAML writes those plainly); NaN as None."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _card(doc: dict[str, Any], table_rows: list[dict[str, Any]], notes: list[str]) -> str:
    import yaml

    block = doc["distillbench"]
    ident = block
    title = f"{ident['method']['spec']} on {ident['dataset']['spec']}, {ident['ipc']} per class"
    norm = block["normalisation"]
    if norm["space"] == "normalised" and norm.get("mean"):
        space = f"normalised: (pixels - {norm['mean']}) / {norm['std']} per channel, pixels in [0, 1]"
    elif norm["space"] == "zca":
        space = f"ZCA-whitened pixels (kornia arithmetic, eps {norm.get('eps')}, fitted on the dataset's train split)"
    else:
        space = str(norm["space"])
    lines = [
        "---",
        yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        "A distilled dataset written by `distillbench export`. The YAML above holds everything below in "
        "machine-readable form.",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{ident['method']['spec']}` |",
        f"| dataset | `{ident['dataset']['spec']}` ({ident['dataset']['num_classes']} classes, samples "
        f"{'x'.join(map(str, ident['dataset']['shape']))}) |",
        f"| images per class | {ident['ipc']} |",
        f"| samples | {ident['samples']} |",
        f"| labels | {ident['labels']} |",
        f"| values (`x`) | {space} |",
        f"| ZCA | {'yes' if norm.get('zca') else 'no'} |",
    ]
    if block["provenance"].get("imported"):
        imp = block["provenance"]["imported"]
        lines.append(f"| imported from | `{imp.get('format')}` artefact, sha256 `{str(imp.get('sha256'))[:16]}...` |")
    lines += ["", "## Results", ""]
    if table_rows:
        lines += ["| protocol | network | seed | accuracy (%) | models |", "|---|---|---|---|---|"]
        for r in table_rows:
            acc = f"{100 * r['acc_mean']:.2f} ± {100 * (r['acc_std'] or 0):.2f}" if r["acc_mean"] is not None else "-"
            lines.append(
                f"| {r['protocol']} v{r['protocol_version']} | `{r['network']}` | {r['seed']} | {acc} "
                f"| {r['n_models']} |"
            )
    else:
        lines.append("No result rows were found for this set (pass `--results DIR` to `distillbench export`).")
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("THIS_REPO_OR_FOLDER", split="train").with_format("torch")',
        'x, y = ds["x"], ds["soft_label" if "soft_label" in ds.column_names else "label"]',
        "```",
        "",
        "`x` holds the samples exactly as distillbench trains on them; train on them as they are, without "
        "normalising again. " + " ".join(notes),
        "",
        "With distillbench: `distillbench evaluate set.safetensors --protocol convnet-v1`.",
        "",
        "## Files (sha256)",
        "",
    ]
    lines += [f"- `{name}`: `{digest}`" for name, digest in block["checksums"]["sha256"].items()]
    return "\n".join(lines) + "\n"


def export_set(
    set_file: str | Path,
    out: str | Path,
    *,
    results: str | Path | None = None,
    data_root: Path | None = None,
) -> Export:
    """Write ``set_file`` (a distillbench set) as a Hugging Face dataset folder at ``out`` (see module docstring).

    Raises:
        DistillBenchError: ``out`` exists and is not an empty folder, the set is unreadable, or ``--results``
            is not a results directory; nothing is left behind.
    """
    import pyarrow.parquet as pq

    from distillbench.harness import store
    from distillbench.harness.runner import provenance

    if "://" in str(set_file):
        raise ConfigError(f"export reads a local set; copy {str(set_file).partition('?')[0]!r} here first")
    set_file = Path(set_file).expanduser()
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {str(out)!r} exists and is not an empty folder; pass a new folder")
    dset, meta = store.load_set(set_file)
    tensor_path = set_file if set_file.suffix == ".safetensors" else set_file.with_suffix(".safetensors")
    notes: list[str] = []
    ident = _set_identity(set_file, meta)
    configured, info, loaded = _dataset_facts(ident["dataset_spec"], data_root, notes)
    norm = _normalisation(dset, info, loaded)
    table, features, table_notes = _table(dset, tuple(info.class_names), norm)
    rows = _results(_find_results(set_file, results), meta.get("distill_id"), notes)
    from distillbench.harness.params import params_to_dict

    sink = io.BytesIO()
    pq.write_table(table, sink)
    set_json = tensor_path.with_suffix(".json").read_bytes()
    if isinstance(meta.get("imported"), dict) and meta["imported"].get("source"):
        # The import's local path (a home folder, a user name) stays local: the card and set.json keep its name.
        meta["imported"]["source"] = Path(str(meta["imported"]["source"])).name
        document = {"set_meta": dset.meta, **{k: v for k, v in meta.items() if k != "set_meta"}}
        set_json = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
    files = {
        DATA_FILE: sink.getvalue(),
        "set.safetensors": tensor_path.read_bytes(),
        "set.json": set_json,
    }
    checksums = {name: _sha256_bytes(data) for name, data in files.items()}
    versions = {k: v for k, v in provenance().items() if k in ("package_version", "git_sha")}
    doc: dict[str, Any] = {
        "pretty_name": f"{ident['method']['spec']} on {ident['dataset_spec']}, ipc {ident['ipc']}",
        "tags": ["dataset-distillation", "distillbench", "synthetic"],
        "task_categories": ["image-classification" if info.modality == "image" else "text-classification"],
        "size_categories": ["n<1K" if len(dset) < 1000 else "1K<n<10K" if len(dset) < 10000 else "10K<n<100K"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "dataset_info": {
            "features": features,
            "splits": [{"name": "train", "num_bytes": int(table.nbytes), "num_examples": len(dset)}],
        },
        "distillbench": {
            "card_version": CARD_VERSION,
            "method": ident["method"],
            "dataset": {
                "spec": configured.display,
                "name": configured.name,
                "params": params_to_dict(configured.params),
                "num_classes": info.num_classes,
                "class_names": list(info.class_names),
                "shape": list(info.shape),
            },
            "ipc": ident["ipc"],
            "seed": ident["seed"],
            "samples": len(dset),
            "labels": "soft (probabilities, column soft_label)" if dset.soft else "hard (column label)",
            "weighting": ident["weighting"],
            "label_stage": ident["labels_stage"],
            "normalisation": norm,
            "zca": bool(norm.get("zca")),
            "extras": sorted(dset.extras),
            "results": rows,
            "provenance": {
                "distill_id": meta.get("distill_id"),
                "distill_seconds": meta.get("distill_seconds"),
                "set_package_version": meta.get("package_version"),
                "set_git_sha": meta.get("git_sha"),
                "imported": meta.get("imported"),
                "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "exported_by": versions,
            },
            "checksums": {"sha256": checksums},
        },
    }
    doc = json.loads(json.dumps(doc, default=_plain))  # plain types only: YAML stays free of Python tags
    card = _card(doc, rows, table_notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(folder=out, checksums=checksums, results=rows, notes=notes)


def _umask() -> int:
    from distillbench.harness.store import _umask as umask

    return umask()


def push(
    source: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    results: str | Path | None = None,
    data_root: Path | None = None,
) -> tuple[str, str]:
    """Upload a set (exported to a temporary folder first) or an exported folder as a hub dataset repository.

    Calls ``HfApi(endpoint=$HF_ENDPOINT).create_repo(repo_id, repo_type="dataset", private=..., exist_ok=True)``
    and ``upload_folder(repo_id=..., folder_path=..., repo_type="dataset")``; the token is ``token``, else
    what ``huggingface_hub`` finds (``HF_TOKEN``, the saved login).

    Returns:
        (the repository's URL, the commit's URL).

    Raises:
        DistillBenchError: ``huggingface_hub`` is missing, the repository id is malformed, the folder is not
            an export, or the hub refused (one line, with the hub's reason).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise DistillBenchError(
            "push needs the huggingface_hub package, which is not installed: pip install huggingface_hub"
        ) from None
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ConfigError(f"repository id {repo_id!r} is not of the form 'owner/name' (letters, digits, - _ .)")
    source = Path(source).expanduser()
    with tempfile.TemporaryDirectory(prefix="distillbench-push-") as tmp:
        if source.is_dir():
            folder = source
            if "distillbench" not in _front_matter_keys(folder / "README.md"):
                raise ConfigError(
                    f"{source}: not a folder written by 'distillbench export' (no dataset card with a "
                    "distillbench block)"
                )
        else:
            folder = export_set(source, Path(tmp) / "export", results=results, data_root=data_root).folder
        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        try:
            repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="dataset",
                commit_message=f"distillbench export: {_title(folder)}",
            )
        except Exception as exc:  # HTTP errors, no network, a refused token: one line with the hub's reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DistillBenchError(
                f"push to dataset repository {repo_id!r} failed: {type(exc).__name__}: {first[:300]}"
            ) from None
    return str(repo_url), str(getattr(commit, "commit_url", commit))


def _title(folder: Path) -> str:
    from distillbench.harness.formats import _front_matter

    return str(_front_matter(folder / "README.md").get("pretty_name") or folder.name)[:200]


def _front_matter_keys(readme: Path) -> set[str]:
    from distillbench.harness.formats import _front_matter

    return set(_front_matter(readme))
