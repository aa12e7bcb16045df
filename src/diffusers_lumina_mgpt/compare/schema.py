"""`results.json` of `lumina-mgpt compare`: its JSON Schema (`RESULTS_SCHEMA`) and a small validator.

The validator implements the subset of JSON Schema the schema uses (type, properties, required,
additionalProperties, items, enum, minimum, maximum, $ref to #/$defs), so results can be checked
without the `jsonschema` package; `jsonschema.validate(results, RESULTS_SCHEMA)` agrees where installed.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 2  # 2: pipelines[].call_args (--pipeline-arg), summary[].sizes (figures per image size)

_NUM_OR_NULL = {"type": ["number", "null"]}
_SWEEP_VALUE = {"type": ["number", "string", "boolean", "null"]}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "lumina-mgpt compare results",
    "type": "object",
    "required": ["schema_version", "created", "settings", "pipelines", "records", "summary"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "created": {"type": "string", "description": "UTC time the results were written, ISO 8601"},
        "settings": {
            "type": "object",
            "required": ["prompts", "seeds", "sizes", "sweep", "call_args", "clip_model", "device", "num_processes",
                         "warmup"],
            "additionalProperties": False,
            "properties": {
                "prompts": {"type": "string", "description": "`shapes`, a prompt file path, or `list`"},
                "n": {"type": ["integer", "null"]},
                "families": {"type": ["array", "null"], "items": {"type": "string"}},
                "prompt_seed": {"type": "integer"},
                "seeds": {"type": "array", "items": {"type": "integer"}},
                "sizes": {"type": "array", "items": {"$ref": "#/$defs/size"}},
                "sweep": {"type": ["object", "null"], "required": ["knob", "values"], "additionalProperties": False,
                          "properties": {"knob": {"type": "string"},
                                         "values": {"type": "array", "items": _SWEEP_VALUE}}},
                "call_args": {"type": "object"},
                "clip_model": {"type": ["string", "null"]},
                "device": {"type": "string"},
                "dtype": {"type": ["string", "null"]},
                "num_processes": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0},
            },
        },
        "pipelines": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "path", "scheduler", "class_name", "kind", "parameters", "forward_counter",
                         "call_args", "error"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "path": {"type": "string"},
                "scheduler": {"type": ["string", "null"], "enum": ["ar", "jacobi", None]},
                "class_name": {"type": ["string", "null"]},
                "kind": {"type": ["string", "null"], "enum": ["autoregressive", "diffusion", None]},
                "parameters": {"type": ["integer", "null"], "minimum": 0},
                "forward_counter": {"type": ["string", "null"],
                                    "enum": ["num_forward_passes", "transformer", "unet", None]},
                "call_args": {"type": "object", "description": "call arguments for this pipeline alone"},
                "error": {"$ref": "#/$defs/error"},
            },
        }},
        "records": {"type": "array", "items": {
            "type": "object",
            "required": ["item", "pipeline", "sweep_value", "prompt_index", "prompt", "family", "split", "seed", "width",
                         "height", "image", "seconds", "forward_passes", "peak_memory_bytes", "memory_kind",
                         "shapes_passed", "shapes_reason", "clip_score", "error"],
            "additionalProperties": False,
            "properties": {
                "item": {"type": "integer", "minimum": 0, "description": "position in the planned work"},
                "pipeline": {"type": "string"},
                "sweep_value": _SWEEP_VALUE,
                "prompt_index": {"type": "integer", "minimum": 0},
                "prompt": {"type": "string"},
                "family": {"type": ["string", "null"]},
                "split": {"type": ["string", "null"], "enum": ["train", "heldout", None]},
                "seed": {"type": "integer"},
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
                "image": {"type": ["string", "null"], "description": "PNG path relative to the output folder"},
                "seconds": {"type": ["number", "null"], "minimum": 0},
                "forward_passes": {"type": ["integer", "null"], "minimum": 0},
                "peak_memory_bytes": {"type": ["integer", "null"], "minimum": 0},
                "memory_kind": {"type": ["string", "null"],
                                "enum": ["cpu_peak_rss", "cuda_max_allocated", "unavailable", None]},
                "shapes_passed": {"type": ["boolean", "null"]},
                "shapes_reason": {"type": ["string", "null"]},
                "clip_score": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                "error": {"$ref": "#/$defs/error"},
            },
        }},
        "summary": {"type": "array", "items": {
            "type": "object",
            "required": ["pipeline", "sweep_value", "images", "errors", "mean_seconds", "mean_forward_passes",
                         "peak_memory_bytes", "parameters", "shapes", "clip_score", "sizes"],
            "additionalProperties": False,
            "properties": {
                "pipeline": {"type": "string"},
                "sweep_value": _SWEEP_VALUE,
                "images": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
                "mean_seconds": _NUM_OR_NULL,
                "mean_forward_passes": _NUM_OR_NULL,
                "peak_memory_bytes": {"type": ["integer", "null"], "minimum": 0},
                "parameters": {"type": ["integer", "null"], "minimum": 0},
                "shapes": {"type": ["object", "null"], "required": ["overall", "families", "heldout"],
                           "additionalProperties": False, "properties": {
                               "overall": _NUM_OR_NULL,
                               "families": {"type": "object", "additionalProperties": {"type": "number"}},
                               "heldout": {"type": "object", "required": ["overall", "families"],
                                           "additionalProperties": False, "properties": {
                                               "overall": _NUM_OR_NULL,
                                               "families": {"type": "object",
                                                            "additionalProperties": {"type": "number"}}}}}},
                "clip_score": _NUM_OR_NULL,
                "sizes": {"type": "array", "description": "the run's figures at each image size", "items": {
                    "type": "object", "required": ["size", "images", "errors", "mean_seconds", "shapes_overall"],
                    "additionalProperties": False, "properties": {
                        "size": {"$ref": "#/$defs/size"}, "images": {"type": "integer", "minimum": 0},
                        "errors": {"type": "integer", "minimum": 0}, "mean_seconds": _NUM_OR_NULL,
                        "shapes_overall": _NUM_OR_NULL}}},
            },
        }},
    },
    "$defs": {
        "size": {"type": "array", "items": {"type": "integer", "minimum": 1},
                 "description": "[width, height] in pixels"},
        "error": {"type": ["object", "null"], "required": ["type", "message"], "additionalProperties": False,
                  "properties": {"type": {"type": "string"}, "message": {"type": "string"}}},
    },
}

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "null": lambda v: v is None,
}


def validate_results(results: Any, schema: dict[str, Any] = RESULTS_SCHEMA) -> None:
    """ValueError naming the first place where `results` breaks `schema`."""
    _check(results, schema, schema, "results")


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    if not ref.startswith("#/$defs/"):
        raise ValueError(f"unsupported $ref {ref!r}")
    return root["$defs"][ref.split("/")[-1]]


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> None:
    schema = _resolve(schema, root)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            raise ValueError(f"{where} is {type(value).__name__} {value!r:.60}, expected {' or '.join(types)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{where} is {value!r}, expected one of {schema['enum']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise ValueError(f"{where} is {value}, below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValueError(f"{where} is {value}, above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"{where} lacks the required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{where}.{key}")
            elif extra is False:
                raise ValueError(f"{where} has the unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{k}]")
