"""The workflow spec: schema, overrides and complete validation before Ray starts.

A spec is YAML::

    name: tiny
    scale: {workers: 2}
    steps:
      corpus:    {uses: data}
      tokenizer: {uses: tokenizer, needs: [corpus], with: {vocab_size: 2048}}
      pretrain:  {uses: pretrain, needs: [corpus, tokenizer]}

Every error is a ``SpecError`` naming the file, the line when known, the step and
the field, so the CLI can print one paragraph and exit 2 without starting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workflows.phases import PHASES, load

DEFAULT_WORKDIR = os.environ.get("LIFECYCLE_WORKDIR", ".lifecycle")  # everything a run writes, unless --workdir


class SpecError(ValueError):
    """A spec that cannot run; the message names file, line, step and field."""


class Scale(BaseModel):
    """Resources per training step; the only block that changes between laptop and cluster."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(2, ge=1, description="Ray Train workers per training step.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each training worker reserves.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each training worker reserves (0 on a laptop).")


class StepSpec(BaseModel):
    """One node of the DAG."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    uses: str = Field(description=f"Phase to run: one of {', '.join(PHASES)}.")
    needs: list[str] = Field(default_factory=list, description="Names of upstream steps whose artifacts this one consumes.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="Phase config: only what differs from its defaults.")


class WorkflowSpec(BaseModel):
    """A whole workflow: a name, a scale block and named steps."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Workflow name; prefixes registered model names.")
    description: str = Field("", description="One line saying what the workflow is for.")
    scale: Scale = Field(default_factory=Scale, description="Ray resources for training steps.")
    steps: dict[str, StepSpec] = Field(min_length=1, description="Steps by name; order does not matter, needs does.")


@dataclass
class Resolved:
    """A validated spec: typed phase configs and a topological order."""

    path: str
    spec: WorkflowSpec
    configs: dict[str, BaseModel]
    order: list[str]
    document: dict[str, Any]

    @property
    def sha(self) -> str:
        return hashlib.sha256(json.dumps(self.document, sort_keys=True).encode()).hexdigest()


def load_spec(path: str | os.PathLike, overrides: list[str] = (), workdir: str | os.PathLike | None = None) -> Resolved:
    """Read, override and validate a spec file completely; raises SpecError.

    workdir: the working folder the run will use (default ./.lifecycle): a base step's hf: source
    is looked up in its hub cache, a models:/ source in its registry."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec: {e.strerror}") from None
    try:
        document = read_yaml(text, path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SpecError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(document, dict):
        raise SpecError(f"{path}: a spec is a mapping with 'name' and 'steps', got {type(document).__name__}")
    for item in overrides:
        apply_override(document, item, path)
    return validate(document, path, text, workdir)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a silent reading would change the workflow."""


# YAML 1.1 (PyYAML) reads `1e-3` as a string, since it wants a dot: read it as YAML 1.2 does, a
# number, so that strict validation below can refuse strings where numbers belong.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _unique_mapping(loader: _SpecLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # A repeated key (a second `max_steps`, a step name used twice) would silently win over the first.
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(f"{loader.name}:{key_node.start_mark.line + 1}: key '{key}' is repeated "
                            f"(first on line {seen[key] + 1}): give it once")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(text: str, name: str = "<spec>") -> Any:
    """Parse spec YAML: duplicate keys are a SpecError naming both lines; `1e-3` is a number."""
    loader = _SpecLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_override(document: dict, item: str, path: str = "<spec>") -> None:
    """Apply ``a.b.c=value`` in place. ``STEP.FIELD=v`` is short for ``steps.STEP.with.FIELD=v``.

    The value is parsed as YAML, so ``lr=3e-4`` is a number and ``needs=[a,b]`` a list.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override '{item}': expected KEY.SUBKEY=VALUE (e.g. pretrain.max_steps=100)")
    parts = key.split(".")
    steps = document.get("steps") or {}
    if parts[0] in steps and parts[0] not in WorkflowSpec.model_fields:
        parts = ["steps", parts[0]] + (parts[1:] if parts[1:2] in (["uses"], ["needs"], ["with"]) else ["with"] + parts[1:])
    try:
        value = read_yaml(raw, f"override '{item}'")
    except yaml.YAMLError:
        raise SpecError(f"override '{item}': the value is not valid YAML") from None
    node = document
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            if part == parts[1] and parts[0] == "steps":
                raise SpecError(f"override '{item}': {path} has no step '{part}' (steps: {', '.join(steps)})")
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"override '{item}': '{part}' is not a mapping in {path}")
        node = child
    node[parts[-1]] = value


def validate(document: dict, path: str, text: str = "", workdir: str | os.PathLike | None = None) -> Resolved:
    """Schema, phases, phase configs, needs, cycles and input kinds; raises SpecError."""
    lines = _key_lines(text)
    try:
        # Strict: YAML has real booleans and numbers, so `max_steps: true` is a mistake, not 1.
        spec = WorkflowSpec.model_validate(document, strict=True)
    except ValidationError as e:
        raise SpecError(_explain(e, path, lines, ())) from None
    configs: dict[str, BaseModel] = {}
    for name, step in spec.steps.items():
        where = ("steps", name)
        phase = PHASES.get(step.uses)
        if phase is None:
            raise SpecError(_at(path, lines, where + ("uses",), f"step '{name}', field 'uses': unknown phase '{step.uses}' (known: {', '.join(PHASES)})"))
        for need in step.needs:
            if need not in spec.steps:
                raise SpecError(_at(path, lines, where + ("needs",), f"step '{name}', field 'needs': no step named '{need}' (steps: {', '.join(spec.steps)})"))
        try:
            configs[name] = load(phase.config).model_validate(step.with_, strict=True)
        except ValidationError as e:
            raise SpecError(_explain(e, path, lines, where + ("with",), step=name)) from None
        if phase.check:
            try:
                configs[name] = load(phase.check)(configs[name], Path(workdir or DEFAULT_WORKDIR))
            except ValueError as e:  # DataError names the file and line itself
                field = re.match(r"field '([\w.]+)'", str(e))  # the field's own line when the error names one
                at = where + ("with", *field.group(1).split(".")) if field else where
                raise SpecError(_at(path, lines, at, f"step '{name}': {e}")) from None
    try:
        order = list(TopologicalSorter({n: s.needs for n, s in spec.steps.items()}).static_order())
    except CycleError as e:
        cycle = e.args[1]  # [a, b, ..., a]: each one needs the one before it
        raise SpecError(_at(path, lines, ("steps", cycle[1], "needs"),
                            f"step '{cycle[1]}', field 'needs': the steps form a cycle: "
                            + ", ".join(f"'{b}' needs '{a}'" for a, b in zip(cycle, cycle[1:])))) from None
    for name, step in spec.steps.items():
        got = sorted(PHASES[spec.steps[n].uses].produces for n in step.needs)
        want = PHASES[step.uses].needs
        if not needs_match(want, got):
            raise SpecError(
                _at(path, lines, ("steps", name, "needs"),
                    f"step '{name}', field 'needs': phase '{step.uses}' consumes {sorted(want) or 'nothing'} "
                    f"but its needs provide {got or 'nothing'}")
            )
        quantized = [n for n in step.needs if spec.steps[n].uses == "quantize"]
        if quantized and PHASES[step.uses].trains_weights:
            raise SpecError(
                _at(path, lines, ("steps", name, "needs"),
                    f"step '{name}' ({step.uses}) would train on and merge into '{quantized[0]}', a quantized model: "
                    "quantize last (train and merge adapters first, then quantize the merged weights)")
            )
    _check_families(spec, configs, order, path, lines)
    return Resolved(path, spec, configs, order, spec.model_dump(by_alias=True))


FAMILY_NAMES = {"causal": "a causal (decoder)", "masked": "a masked (encoder)", "seq2seq": "a seq2seq (encoder-decoder)"}


def model_families(spec: WorkflowSpec, configs: dict[str, BaseModel], order: list[str]) -> dict[str, str]:
    """The model family each step works on: set by pretrain's model.architecture or by what a base
    step's checkpoint is (its config.json, read by validation), passed down every edge."""
    family: dict[str, str] = {}
    for name in order:
        cfg = configs[name]
        if spec.steps[name].uses == "pretrain":
            family[name] = cfg.model.family
        elif spec.steps[name].uses == "base":
            family[name] = cfg.resolved.family
        else:
            upstream = [family[n] for n in spec.steps[name].needs if n in family]
            if upstream:
                family[name] = upstream[0]
    return family


def _check_families(spec: WorkflowSpec, configs: dict[str, BaseModel], order: list[str], path: str, lines: dict) -> None:
    """A phase that does not apply to its input model's family, or a tokenizer the family cannot use."""
    family = model_families(spec, configs, order)
    for name in order:
        step = spec.steps[name]
        phase = PHASES[step.uses]
        if name not in family:
            continue
        if phase.families is not None and family[name] not in phase.families:
            source = next(n for n in order if n in family and spec.steps[n].uses in ORIGINS and family[n] == family[name])
            applies = " and ".join(phase.families)
            raise SpecError(
                _at(path, lines, ("steps", name, "uses"),
                    f"step '{name}' ({step.uses}) does not apply to {FAMILY_NAMES[family[name]]} model "
                    f"(from '{source}', {_architecture(spec, configs, source)}): {step.uses} applies to {applies} models")
            )
        if (step.uses in ("distill", "prune", "quantize") and family[name] != "masked"
                and not any(spec.steps[n].uses == "instructions" for n in step.needs)):
            raise SpecError(_at(path, lines, ("steps", name, "needs"),
                                f"step '{name}', field 'needs': {step.uses} on a {family[name]} model trains or scores it on "
                                "instructions: add an instructions step to needs"))
        if family[name] == "masked" and step.uses in ("evaluate", "distill", "prune", "quantize"):
            _check_classifier_input(spec, configs, name, path, lines)
        if step.uses == "evaluate" and any(spec.steps[n].uses == "deploy" for n in step.needs):
            _check_endpoint_input(spec, configs, name, path, lines)
        if step.uses == "deploy" and family[name] != "causal" and getattr(configs[name], "rag", None) is not None:
            raise SpecError(_at(path, lines, ("steps", name, "with", "rag"),
                                f"step '{name}', field 'rag': the RAG route answers with a causal LM, and this model is "
                                f"{FAMILY_NAMES[family[name]]} one; leave rag out"))
        if step.uses == "pretrain":
            tokenizers = [n for n in step.needs if spec.steps[n].uses == "tokenizer"]
            tok = configs[tokenizers[0]] if tokenizers else None
            if tok is not None and family[name] == "masked" and not tok.mask_token:
                raise SpecError(_at(path, lines, ("steps", tokenizers[0]),
                                    f"step '{tokenizers[0]}': '{name}' pretrains a bert model, which needs a mask token: "
                                    "set mask_token (e.g. '<mask>')"))
            if tok is not None and family[name] == "seq2seq" and not tok.sentinel_tokens:
                raise SpecError(_at(path, lines, ("steps", tokenizers[0]),
                                    f"step '{tokenizers[0]}': '{name}' pretrains a t5 model, which needs span sentinels: "
                                    "set sentinel_tokens (e.g. 32)"))


ORIGINS = ("pretrain", "base")  # the phases a model starts from


def _architecture(spec: WorkflowSpec, configs: dict[str, BaseModel], source: str) -> str:
    cfg = configs[source]
    if spec.steps[source].uses == "base":
        return f"{cfg.resolved.architecture or cfg.resolved.model_type} from {cfg.source}"
    return f"architecture {cfg.model.architecture}"


def _classifier_source(spec: WorkflowSpec, name: str) -> str:
    """The classify (or pretrain) step whose model reaches step `name`, through any compression steps."""
    current = name
    while True:
        current = next(n for n in spec.steps[current].needs if PHASES[spec.steps[n].uses].produces == "model")
        if spec.steps[current].uses in ("classify", *ORIGINS):
            return current


def _check_endpoint_input(spec: WorkflowSpec, configs: dict[str, BaseModel], name: str, path: str, lines: dict) -> None:
    """An evaluate step that needs a deploy step runs its lm_eval_tasks on that endpoint: it must name some, and
    its model input must be the model the endpoint serves (deploy <- gate <- evaluate <- model)."""
    deploy = next(n for n in spec.steps[name].needs if spec.steps[n].uses == "deploy")
    if not configs[name].lm_eval_tasks:
        raise SpecError(_at(path, lines, ("steps", name, "needs"),
                            f"step '{name}', field 'needs': the endpoint of '{deploy}' is scored by lm-eval's tasks, and "
                            "lm_eval_tasks is empty: name the tasks to run on it"))

    def model_of(evaluate: str) -> str:
        return next(n for n in spec.steps[evaluate].needs if PHASES[spec.steps[n].uses].produces == "model")

    gate = next(n for n in spec.steps[deploy].needs if spec.steps[n].uses == "gate")
    served = model_of(next(n for n in spec.steps[gate].needs if spec.steps[n].uses == "evaluate"))
    if model_of(name) != served:
        raise SpecError(_at(path, lines, ("steps", name, "needs"),
                            f"step '{name}', field 'needs': '{deploy}' serves the model of '{served}', and this step's model "
                            f"is '{model_of(name)}': name '{served}' (its tokenizer builds lm-eval's requests)"))


def _check_classifier_input(spec: WorkflowSpec, configs: dict[str, BaseModel], name: str, path: str, lines: dict) -> None:
    """An encoder is evaluated and compressed as a classifier: refuse a bare pretrained bert, and
    evaluate on a token classifier (ner) or on suites whose labels it lacks, before anything runs."""
    step, source = spec.steps[name], _classifier_source(spec, name)
    task = configs[source].task if spec.steps[source].uses == "classify" else None
    if task is None:
        does = "scores an encoder only as an sst2 or mnli sequence classifier" if step.uses == "evaluate" else "compresses a classifier"
        raise SpecError(_at(path, lines, ("steps", name, "needs"),
                            f"step '{name}', field 'needs': {step.uses} {does}, and '{source}' is a bare pretrained bert "
                            "(masked LM): put a classify step between them"))
    if step.uses != "evaluate":
        return
    if task == "ner":
        raise SpecError(_at(path, lines, ("steps", name, "needs"),
                            f"step '{name}', field 'needs': '{source}' is a token classifier (task ner), and evaluate scores "
                            "sst2 or mnli sequence classifiers; its entity F1 is in the classify step's own metrics"))
    if configs[name].lm_eval_tasks:
        raise SpecError(_at(path, lines, ("steps", name, "with", "lm_eval_tasks"),
                            f"step '{name}', field 'lm_eval_tasks': lm-eval scores a language model's text, and '{source}' is an "
                            f"{task} classifier; its accuracy_{task} is the evaluate step's own"))
    if task not in configs[name].benchmarks:
        raise SpecError(_at(path, lines, ("steps", name, "with", "benchmarks"),
                            f"step '{name}', field 'benchmarks': its model is an {task} classifier (from '{source}'), and "
                            f"{configs[name].benchmarks} has no {task}: add {task}"))


def needs_match(want: tuple[str, ...], got: list[str]) -> bool:
    """Whether upstream artifact kinds `got` fit a phase's needs: one of each kind, "kind?" optional."""
    required = sorted(k for k in want if not k.endswith("?"))
    optional = {k[:-1] for k in want if k.endswith("?")}
    rest = list(got)
    for kind in required:
        if kind not in rest:
            return False
        rest.remove(kind)
    return len(rest) == len(set(rest)) and set(rest) <= optional


def _explain(error: ValidationError, path: str, lines: dict, prefix: tuple, step: str | None = None) -> str:
    first = error.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    field = ".".join(loc) or "(top level)"
    got = f" (got {first['input']!r})" if first["type"] not in ("missing",) and not isinstance(first["input"], dict) else ""
    who = f"step '{step}', field '{field}'" if step else f"field '{field}'"
    more = f" [and {error.error_count() - 1} more]" if error.error_count() > 1 else ""
    return _at(path, lines, prefix + loc, f"{who}: {first['msg']}{got}{more}")


def _at(path: str, lines: dict, loc: tuple, message: str) -> str:
    # The deepest key of loc that appears in the file gives the line.
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return f"{path}:{lines[loc[:cut]]}: {message}"
    return f"{path}: {message}"


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path of the YAML text, e.g. ('steps','pretrain','with','lr'), to its 1-based line."""
    out: dict[tuple, int] = {}
    try:
        root = yaml.compose(text) if text else None
    except yaml.YAMLError:
        return out

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                loc = prefix + (str(key.value),)
                out[loc] = key.start_mark.line + 1
                walk(value, loc)

    walk(root, ())
    return out
