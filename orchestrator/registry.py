"""The family registry: family name -> ``Family`` declaration (``orchestrator.contract``).

Adding a family is its package under ``trainables/`` plus one line in ``BUILTIN`` below, or,
for a family that lives in another distribution, an entry point::

    [project.entry-points."moe_orch.families"]
    myfamily = "my_package.family:FAMILY"

``register(ref)`` adds one at run time (tests, notebooks). Declarations are imported by
reference (``"module:attribute"``) on first use, and the reference travels with each run to
its Ray Train workers and Serve replicas, which import it themselves.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from orchestrator.contract import Family, import_ref

ENTRY_POINT_GROUP = "moe_orch.families"
BUILTIN: dict[str, str] = {
    "more": "trainables.more.family:FAMILY",
    "ensemble": "trainables.ensemble.family:FAMILY",
    "mixlora": "trainables.mixlora.family:FAMILY",
    "dylora": "trainables.dylora.family:FAMILY",
    "llm_judge": "trainables.llm_judge.family:FAMILY",
}

_REFS: dict[str, str] = {}  # name -> "module:attribute", filled on first use
_LOADED: dict[str, Family] = {}


def _refs() -> dict[str, str]:
    if not _REFS:
        _REFS.update(BUILTIN)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _REFS.setdefault(ep.name, ep.value)
    return _REFS


def register(ref: str) -> Family:
    """Register the ``Family`` at ``"module:attribute"`` (replacing one of the same name); returns it."""
    family = _load_ref(ref)
    _refs()[family.name] = ref
    _LOADED[family.name] = family
    return family


def family_names() -> list[str]:
    """Every registered family name, sorted."""
    return sorted(_refs())


def family_ref(name: str) -> str:
    """The ``"module:attribute"`` reference of family ``name`` (what workers import)."""
    get_family(name)
    return _refs()[name]


def get_family(name: str) -> Family:
    """The family registered as ``name``; KeyError naming the known ones otherwise."""
    if name not in _refs():
        raise KeyError(f"unknown family {name!r}; known: {', '.join(family_names())}")
    if name not in _LOADED:
        _LOADED[name] = _load_ref(_refs()[name])
    return _LOADED[name]


FEATURES = {"evaluator": "an evaluator", "endpoint": "a serve app", "generator": "a generator",
            "predictor": "a predictor"}


def family_with(name: str, feature: str, what: str) -> Family:
    """The family ``name`` if its declaration has ``feature`` (one of ``FEATURES``);
    LookupError naming ``what`` (the checkpoint or run asked about) and the family otherwise."""
    try:
        family = get_family(name)
    except KeyError as exc:
        raise LookupError(f"{what}: {exc.args[0]}") from exc
    if getattr(family, feature) is None:
        raise LookupError(f"{what}: family {name!r} has no {FEATURES[feature].split(' ', 1)[1]} "
                          f"(its declaration has no {feature})")
    return family


def base_family(feature: str, target: str, name: str | None = None) -> Family:
    """The family that handles a pretrained base reference ``target`` for ``feature``: ``name`` if
    given, else the one registered family with ``base_models`` and that feature; LookupError otherwise."""
    if name is not None:
        family = family_with(name, feature, target)
        if not family.base_models:
            raise LookupError(f"{target}: family {name!r} is not built on a pretrained base")
        return family
    found = [f for f in map(get_family, family_names()) if f.base_models and getattr(f, feature) is not None]
    if len(found) != 1:
        known = ", ".join(f.name for f in found) or "none registered"
        raise LookupError(f"{target}: got neither a checkpoint directory nor an MLflow run id (32 hex digits); "
                          f"as a base model it needs --family (families with pretrained bases: {known})")
    return found[0]


def load_family(ref: str) -> Family:
    """The ``Family`` at ``ref``, registered under its name (for worker and replica processes)."""
    name = next((n for n, r in _refs().items() if r == ref), None)
    return get_family(name) if name is not None else register(ref)


def _load_ref(ref: str) -> Family:
    family = import_ref(ref)
    if not isinstance(family, Family):
        raise TypeError(f"{ref}: got {type(family).__name__}, expected an orchestrator.contract.Family")
    errors = family.contract_errors()
    if errors:
        raise TypeError(f"{ref}: invalid family declaration:\n  " + "\n  ".join(errors))
    return family
