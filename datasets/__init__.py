"""distillbench.datasets: the dataset plugins (this folder is mapped to that name by pyproject.toml).

Python started in a checkout puts the repository root on ``sys.path``, so a plain ``import datasets`` would
find this folder and not Hugging Face's ``datasets`` (which ``distillbench export``'s cards tell users to
load a set with). Imported under that top-level name, this module hands over to the next ``datasets`` on
``sys.path``, or fails as if this folder were not there. The folder keeps its ``__init__.py``: setuptools'
editable install finds only regular packages.
"""

if __name__ == "datasets":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("datasets", _elsewhere)
    if _spec is None or _spec.loader is None:
        del sys.modules["datasets"]
        raise ModuleNotFoundError(
            "No module named 'datasets' (the datasets/ folder of this checkout is distillbench.datasets; "
            "Hugging Face's is 'pip install datasets')",
            name="datasets",
        )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["datasets"] = _module  # the import statement returns what sys.modules holds after this runs
    _spec.loader.exec_module(_module)
