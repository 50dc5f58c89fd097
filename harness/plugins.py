"""The six plugin registries and the lazy table of built-in plugins.

How to add a plugin: decorate a class with the matching ``register_*`` function in your own module
and expose the module through an entry point of the registry's group in your package's
``pyproject.toml``::

    [project.entry-points."distillbench.methods"]
    mymethod = "my_package.mymethod:MyMethod"

Built-ins are listed here as strings so that listing names imports nothing heavy.
"""

from __future__ import annotations

from typing import Any, NoReturn

from distillbench.harness.registry import Registry


def _needs_params(obj: Any) -> None:
    params = getattr(obj, "Params", None)
    if params is None or not hasattr(params, "__dataclass_fields__"):
        raise TypeError("a plugin must define 'Params', a frozen dataclass (use NoParams if it takes none)")
    if not params.__dataclass_params__.frozen:
        raise TypeError(f"{params.__qualname__} must be a frozen dataclass (@dataclass(frozen=True))")


METHODS: Registry[Any] = Registry("method", group="distillbench.methods", check=_needs_params)
DATASETS: Registry[Any] = Registry("dataset", group="distillbench.datasets", check=_needs_params)
NETWORKS: Registry[Any] = Registry("network", group="distillbench.networks", check=_needs_params)
PROTOCOLS: Registry[Any] = Registry("protocol", group="distillbench.protocols")
WEIGHTINGS: Registry[Any] = Registry("weighting", group="distillbench.weightings", check=_needs_params)
LABELS: Registry[Any] = Registry("label stage", group="distillbench.labels", check=_needs_params)

REGISTRIES: dict[str, Registry[Any]] = {
    "methods": METHODS,
    "datasets": DATASETS,
    "networks": NETWORKS,
    "protocols": PROTOCOLS,
    "weightings": WEIGHTINGS,
    "labels": LABELS,
}

register_method = METHODS.register
register_dataset = DATASETS.register
register_network = NETWORKS.register
register_weighting = WEIGHTINGS.register
register_label_stage = LABELS.register

_BUILTINS: dict[Registry[Any], dict[str, str]] = {
    METHODS: {
        "random": "distillbench.methods.random:RandomReal",
        "herding": "distillbench.methods.herding:Herding",
        "dm": "distillbench.methods.dm:DistributionMatching",
        "dd": "distillbench.methods.dd:DatasetDistillation",
        "dc": "distillbench.methods.dc:GradientMatching",
        "dsa": "distillbench.methods.dsa:SiameseGradientMatching",
        "kcenter": "distillbench.methods.kcenter:KCenter",
        "sre2l": "distillbench.methods.sre2l:SRe2L",
        "full": "distillbench.methods.full:FullData",
        "mtt": "distillbench.methods.mtt:MatchingTrainingTrajectories",
        "ftd": "distillbench.methods.ftd:FlatTrajectoryDistillation",
        "datm": "distillbench.methods.datm:DifficultyAlignedTrajectoryMatching",
        "rded": "distillbench.methods.rded:RDED",
    },
    DATASETS: {
        "digits": "distillbench.datasets.digits:Digits",
        "mnist": "distillbench.datasets.mnist:MNIST",
        "fashion_mnist": "distillbench.datasets.mnist:FashionMNIST",
        "kmnist": "distillbench.datasets.mnist:KMNIST",
        "svhn": "distillbench.datasets.svhn:SVHN",
        "cifar10": "distillbench.datasets.cifar:CIFAR10",
        "cifar100": "distillbench.datasets.cifar:CIFAR100",
        "sst5": "distillbench.datasets.text:SST5",
        "sst2": "distillbench.datasets.text:SST2",
        "mr": "distillbench.datasets.text:MR",
        "trec6": "distillbench.datasets.text:TREC6",
        "trec50": "distillbench.datasets.text:TREC50",
        "imdb": "distillbench.datasets.text:IMDB",
        "ag_news": "distillbench.datasets.text:AGNews",
        "colored_mnist": "distillbench.datasets.colored:ColoredMNIST",
        "bg_fmnist": "distillbench.datasets.colored:BackgroundFashionMNIST",
        "corrupted_cifar10": "distillbench.datasets.corrupted_cifar:CorruptedCIFAR10",
        "bffhq": "distillbench.datasets.bffhq:BFFHQ",
    },
    NETWORKS: {
        "convnet": "distillbench.harness.networks.convnet:ConvNet",
        "mlp": "distillbench.harness.networks.mlp:MLP",
        "lenet": "distillbench.harness.networks.lenet:LeNet",
        "alexcifarnet": "distillbench.harness.networks.alexcifarnet:AlexCifarNet",
        "resnet18": "distillbench.harness.networks.resnet:ResNet18",
        "textcnn": "distillbench.harness.networks.text:TextCNN",
        "birnn": "distillbench.harness.networks.text:BiRNN",
        "bilstm": "distillbench.harness.networks.text:BiLSTM",
    },
    PROTOCOLS: {
        "convnet-v1": "distillbench.harness.protocols:CONVNET_V1",
        "quick-v1": "distillbench.harness.protocols:QUICK_V1",
        "quick-v1-relabel": "distillbench.harness.protocols:QUICK_V1_RELABEL",
        "lt-cpu-v1": "distillbench.harness.protocols:LT_CPU_V1",
        "lt-cpu-v1-relabel": "distillbench.harness.protocols:LT_CPU_V1_RELABEL",
        "convnet-v1-cpu-reduced": "distillbench.harness.protocols:CPU_REDUCED_V1",
        "dd-replay-v1": "distillbench.harness.protocols:DD_REPLAY_V1",
        "text-v1": "distillbench.harness.protocols:TEXT_V1",
    },
    WEIGHTINGS: {
        "none": "distillbench.harness.stages:NoWeighting",
        "kde": "distillbench.methods.kde:KDEWeighting",
        "groups": "distillbench.methods.groups:GroupWeighting",
    },
    LABELS: {
        "native": "distillbench.harness.stages:NativeLabels",
        "teacher": "distillbench.methods.relabel:TeacherLabels",
        "adsa": "distillbench.methods.relabel:ADSALabels",
    },
}
for _registry, _table in _BUILTINS.items():
    for _name, _target in _table.items():
        _registry.add_lazy(_name, _target, origin=f"built-in {_target}")


def registry(kind: str) -> Registry[Any]:
    """The registry for ``kind`` (``methods``, ``datasets``, ...; singular forms accepted)."""
    from distillbench.harness.errors import UnknownNameError

    key = kind if kind in REGISTRIES else kind + "s"
    if key == "labelss":
        key = "labels"
    if key not in REGISTRIES:
        raise UnknownNameError(f"unknown plugin kind {kind!r}. Available: {', '.join(REGISTRIES)}")
    return REGISTRIES[key]


def register_protocol(protocol: Any) -> Any:
    """Register an ``EvalProtocol`` instance under its own name; returns it."""
    PROTOCOLS.add(protocol.name, protocol)
    return protocol


def load_plugin_modules(specs: list[str] | tuple[str, ...], *, base: str | None = None) -> None:
    """Import plugin modules named in a grid (``plugins:``) or on the command line (``--plugin``).

    Each entry is an importable module name (``my_package.my_method``) or the path of a ``.py``
    file (relative paths are relative to ``base``, the grid file's folder). Importing runs the
    module's ``@register_*`` decorators. Workers of a cluster import the same entries, so a file
    must be at the same path on every node (or be an installed module).

    A plugin is arbitrary code: it runs wherever a grid naming it is read (``run``, also with
    ``--dry-run``, and ``status --grid``) and on every worker. Only ``KeyboardInterrupt`` passes
    through; any other exception, including ``SystemExit`` from a plugin calling ``sys.exit(0)``,
    becomes a one-line error, because a plugin that ended the process would otherwise look like a
    successful command.

    Raises:
        DistillBenchError: a module or file cannot be imported, or exited while being imported;
            the message names it and the cause.
    """
    import hashlib
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from distillbench.harness.errors import DistillBenchError

    for spec in specs:
        if spec.endswith(".py"):
            path = Path(spec).expanduser()
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            path = path.resolve()
            if not path.is_file():
                raise DistillBenchError(
                    f"plugin {str(path)!r} not found: no such file; check 'plugins:' in the grid or --plugin"
                )
            # A stable module name per file, so importing the same file twice is a no-op.
            name = f"distillbench_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            if name in sys.modules:
                continue
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException as exc:
                sys.modules.pop(name, None)
                _reraise_plugin_failure(str(path), exc)
        else:
            try:
                importlib.import_module(spec)
            except BaseException as exc:
                _reraise_plugin_failure(spec, exc)


def _reraise_plugin_failure(plugin: str, exc: BaseException) -> NoReturn:
    """Raise the one-line ``DistillBenchError`` for ``exc``, raised while importing ``plugin``.

    ``KeyboardInterrupt`` and the plugin's own ``DistillBenchError`` (already a user-facing message)
    are re-raised as they are.
    """
    from distillbench.harness.errors import DistillBenchError

    if isinstance(exc, KeyboardInterrupt | DistillBenchError):
        raise exc
    if isinstance(exc, SystemExit):
        raise DistillBenchError(
            f"plugin {plugin!r} exited while being imported (SystemExit: {exc.code!r}); a plugin module must only "
            "define and register plugins: remove the exit call, or remove the plugin from 'plugins:' / --plugin"
        ) from None
    raise DistillBenchError(f"plugin {plugin!r} failed to import: {type(exc).__name__}: {exc}") from None
