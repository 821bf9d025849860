"""The submit form, generated from ``GET /v1/methods`` (each method's JSON schema), and the request body it
makes.

Inputs start empty with the schema's default as placeholder: a blank input is left out of the request, so
a default stays a default (the API stores recipes as given). Values are converted only as far as their
type is clear; anything else goes to the API's own validation unchanged, and its messages (``field`` +
``message``, the 422 body of ``POST /v1/jobs``) are what the form shows, beside the input they name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from presso.app.core.errors import _clean_message, field_path
from presso.app.jobs.schemas import JobCreate

STEP_SLOTS = 3
SKIP_PARAMS = {"method"}


@dataclass
class Field:
    name: str  # the parameter's name in the step
    label: str
    kind: str  # int | number | bool | enum | list | text | json
    default: Any = None
    placeholder: str = ""
    options: list[str] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""


@dataclass
class MethodForm:
    method: str
    summary: str
    needs_calibration: bool
    fields: list[Field]


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` -> X (keeping the outer default/description)."""
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        if len(options) == 1:
            return {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    return prop


def _field(name: str, raw: dict[str, Any]) -> Field:
    prop = _non_null(raw)
    typ = prop.get("type")
    default = prop.get("default")
    kw: dict[str, Any] = {"name": name, "label": prop.get("title") or name, "default": default,
                          "description": prop.get("description", "")}
    lo = prop.get("minimum", prop.get("exclusiveMinimum"))
    hi = prop.get("maximum", prop.get("exclusiveMaximum"))
    if "enum" in prop:
        return Field(kind="enum", options=[str(o) for o in prop["enum"]], **kw)
    if typ == "boolean":
        return Field(kind="bool", **kw)
    if typ in ("integer", "number"):
        return Field(kind="int" if typ == "integer" else "number", minimum=lo, maximum=hi,
                     placeholder="" if default is None else str(default), **kw)
    if typ == "array" and (prop.get("items") or {}).get("type") == "string":
        return Field(kind="list", placeholder=", ".join(default or []), **kw)
    if typ == "string":
        return Field(kind="text", placeholder="" if default is None else str(default), **kw)
    return Field(kind="json", placeholder=json.dumps(default) if default not in (None, [], {}) else "JSON", **kw)


def method_forms(catalog: list[dict[str, Any]]) -> list[MethodForm]:
    forms = []
    for entry in catalog:
        props = (entry.get("schema") or {}).get("properties") or {}
        fields = [_field(n, p) for n, p in props.items() if n not in SKIP_PARAMS]
        forms.append(MethodForm(method=entry["method"], summary=entry.get("summary", ""),
                                needs_calibration=bool(entry.get("needs_calibration")), fields=fields))
    return forms


def input_name(slot: int, method: str, param: str) -> str:
    return f"s{slot}.{method}.{param}"


def _convert(kind: str, text: str) -> Any:
    """The typed value where the text says it unambiguously; else the text itself, for the API to judge."""
    text = text.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "json":
            return json.loads(text)
    except ValueError:
        return text
    if kind == "bool":
        return {"true": True, "false": False}.get(text.lower(), text)
    if kind == "list":
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


@dataclass
class Submission:
    body: dict[str, Any] | None
    errors: list[dict[str, str]]  # [{field, message}] in the API's terms
    inputs: dict[str, str]  # API field path -> form input name (to show each message beside its input)


def _json_field(text: str, where: str, errors: list[dict[str, str]]) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        errors.append({"field": where, "message": f"not valid JSON: {exc}"})
        return None


def build_body(form: dict[str, str], forms: list[MethodForm]) -> Submission:
    """Form fields -> the POST /v1/jobs body (blank inputs left out)."""
    by_method = {f.method: f for f in forms}
    errors: list[dict[str, str]] = []
    inputs: dict[str, str] = {"model_uri": "model_uri"}
    body: dict[str, Any] = {"model_uri": form.get("model_uri", "").strip()}

    if form.get("recipe_json", "").strip():
        body["recipe"] = _json_field(form["recipe_json"], "recipe", errors)
        inputs["recipe"] = "recipe_json"
    else:
        steps: list[dict[str, Any]] = []
        for slot in range(STEP_SLOTS):
            method = form.get(f"s{slot}.method", "").strip()
            if not method:
                continue
            index = len(steps)
            step: dict[str, Any] = {"method": method}
            inputs[f"recipe.steps.{index}.method"] = f"s{slot}.method"
            for fld in by_method[method].fields if method in by_method else []:
                name = input_name(slot, method, fld.name)
                text = form.get(name, "")
                if text.strip():
                    step[fld.name] = _convert(fld.kind, text)
                inputs[f"recipe.steps.{index}.{fld.name}"] = name
            steps.append(step)
        body["recipe"] = {"steps": steps}
        inputs["recipe.steps"] = "s0.method"
        inputs["recipe"] = "s0.method"

    calibration = {k: form.get(f"calibration.{k}", "").strip() for k in ("uri", "samples", "seq_len")}
    if any(calibration.values()):
        body["calibration"] = {k: (_convert("int", v) if k != "uri" else v) for k, v in calibration.items() if v}
    evaluation: dict[str, Any] = {}
    for k in ("uri", "windows", "seq_len"):
        v = form.get(f"evaluation.{k}", "").strip()
        if v:
            evaluation[k] = _convert("int", v) if k != "uri" else v
    for k in ("enabled", "latency"):
        v = form.get(f"evaluation.{k}", "").strip()
        if v:
            evaluation[k] = _convert("bool", v)
    gate = {k: _convert("number", form.get(f"gate.{k}", "")) for k in ("max_ppl_increase_pct", "max_kl")
            if form.get(f"gate.{k}", "").strip()}
    if gate:
        evaluation["gate"] = gate
    if evaluation:
        body["evaluation"] = evaluation
    for key in ("calibration", "evaluation"):
        for sub in ("uri", "samples", "seq_len", "windows", "enabled", "latency"):
            inputs[f"{key}.{sub}"] = f"{key}.{sub}"
    inputs.update({f"evaluation.gate.{k}": f"gate.{k}" for k in ("max_ppl_increase_pct", "max_kl")})

    if form.get("fallbacks_json", "").strip():
        fallbacks = _json_field(form["fallbacks_json"], "fallbacks", errors)
        body["fallbacks"] = [fallbacks] if isinstance(fallbacks, dict) else fallbacks
        inputs["fallbacks"] = "fallbacks_json"
    if form.get("output.format", "").strip():
        body["output"] = {"format": form["output.format"].strip()}
        inputs["output.format"] = "output.format"
    return Submission(body=None if errors else body, errors=errors, inputs=inputs)


def validate(body: dict[str, Any]) -> tuple[JobCreate | None, list[dict[str, str]]]:
    """The API's validation of a POST /v1/jobs body, with its messages (as in its 422 ``details``)."""
    try:
        return JobCreate.model_validate(body), []
    except ValidationError as exc:
        return None, [{"field": field_path(e.get("loc", ()), e.get("type", "")),
                       "message": _clean_message(str(e.get("msg")))} for e in exc.errors()]


def input_for(field_name: str, inputs: dict[str, str]) -> str | None:
    """The form input an API field path belongs to (the longest known prefix)."""
    parts = field_name.split(".")
    for n in range(len(parts), 0, -1):
        hit = inputs.get(".".join(parts[:n]))
        if hit:
            return hit
    if field_name.startswith("fallbacks"):
        return inputs.get("fallbacks")
    return None
