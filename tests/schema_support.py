"""Validate connref's JSON documents against the schemas in ``reconciler/schemas`` (no tests here).

``check(kind, doc)`` validates with jsonschema and also fails on any key the schema does not declare, so
an output that grows a field without its schema growing too is caught here, not by a consumer."""

from __future__ import annotations

from typing import Any

import jsonschema

from reconciler.schemas import load_schema

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _resolve(root: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), f"only local references are used: {ref}"
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _type_fits(schema: dict[str, Any], value: Any) -> bool:
    declared = schema.get("type")
    if declared is None:
        return True
    names = [declared] if isinstance(declared, str) else list(declared)
    if isinstance(value, bool):
        return "boolean" in names
    return any(isinstance(value, _TYPES[n]) for n in names)


def undocumented(root: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    """Paths of object keys in ``value`` that ``schema`` does not declare (neither in ``properties`` nor
    through an ``additionalProperties`` schema)."""
    schema = _resolve(root, schema)
    out: list[str] = []
    for key in ("oneOf", "anyOf"):
        for branch in schema.get(key, []):
            branch = _resolve(root, branch)
            if _type_fits(branch, value):
                out.extend(undocumented(root, branch, value, path))
                break
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out.extend(undocumented(root, props[k], v, f"{path}.{k}"))
            elif isinstance(extra, dict):
                out.extend(undocumented(root, extra, v, f"{path}.{k}"))
            elif props is not None and extra is None:
                out.append(f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(undocumented(root, schema["items"], item, f"{path}[{i}]"))
    return out


def check(kind: str, doc: Any) -> None:
    """``doc`` is a valid ``kind`` document (``reconciler.schemas.SCHEMAS``) and every key in it is declared."""
    schema = load_schema(kind)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{kind} document does not match its schema:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:20]
    )
    missing = undocumented(schema, schema, doc)
    assert not missing, (
        f"{kind} document has keys its schema ({kind}) does not declare: {missing[:20]}; "
        "add them to the schema in reconciler/schemas/"
    )
