"""Checks what a client library reads against /openapi.json.

A library describes each answer it reads as a "read": method, path, status, a pointer into the body and
the model it decodes there, as a type spec (kind object/array/map/decimal/timestamp/string/integer/
boolean/json, nullable, and per object field `optional`). Both libraries produce the same form
(lad_billing.models.describe; the Node package's `reads`), so one checker holds both to the document.
"""
from __future__ import annotations

from typing import Any

DECIMAL_PATTERN = r"^-?\d+(\.\d+)?$"


class Contract:
    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.schemas = document["components"]["schemas"]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].removeprefix("#/components/schemas/")]
        return schema

    def variants(self, schema: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The non-null alternatives of a schema, and whether null is allowed."""
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf")
        if options is None:
            kinds = schema.get("type")
            if isinstance(kinds, list):
                return [{**schema, "type": k} for k in kinds if k != "null"], "null" in kinds
            return [schema], kinds == "null"
        found, nullable = [], False
        for option in options:
            inner, inner_null = self.variants(option)
            nullable |= inner_null
            found += [o for o in inner if o.get("type") != "null"]
        return found, nullable

    def response_schema(self, method: str, path: str, status: int) -> dict[str, Any]:
        operation = self.document["paths"][path][method.lower()]
        return operation["responses"][str(status)]["content"]["application/json"]["schema"]

    def check_read(self, read: dict[str, Any]) -> list[str]:
        where = f"{read['method']} {read['path']} {read['status']}"
        try:
            schema = self.response_schema(read["method"], read["path"], read["status"])
        except KeyError:
            return [f"{where}: not in /openapi.json"]
        for key in read["pointer"]:
            schema = self.resolve(schema)
            if key not in schema.get("properties", {}):
                return [f"{where}: no property {key!r}"]
            schema = schema["properties"][key]
        return self.check(read["spec"], schema, f"{where} {'.'.join(read['pointer']) or '(body)'}")

    def check(self, spec: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
        options, nullable = self.variants(schema)
        problems = []
        if nullable and not spec.get("nullable"):
            problems.append(f"{where}: the document allows null, the client does not")
        if not options:
            return problems + [f"{where}: the document allows only null"]
        mismatches = [self.check_one(spec, option, where) for option in options]
        # the client type must fit one of the document's alternatives
        if all(mismatches):
            problems += mismatches[0]
        return problems

    def check_one(self, spec: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
        kind, json_type = spec["kind"], schema.get("type")
        expected = {"decimal": "string", "timestamp": "string", "string": "string", "integer": "integer",
                    "boolean": "boolean", "json": "object", "object": "object", "map": "object", "array": "array"}[kind]
        if json_type != expected and not (json_type is None and kind == "json"):
            return [f"{where}: the client reads {kind}, the document says {json_type}"]
        if kind == "decimal" and schema.get("pattern") != DECIMAL_PATTERN:
            return [f"{where}: the client reads a decimal string, the document's string is not one"]
        if kind == "string" and "enum" in spec:
            allowed = schema.get("enum", [schema["const"]] if "const" in schema else None)
            if allowed is not None and not set(spec["enum"]) <= set(allowed):
                return [f"{where}: the client expects {spec['enum']}, the document allows {allowed}"]
        if kind == "array":
            return self.check(spec["items"], schema.get("items", {}), f"{where}[]")
        if kind == "map":
            values = schema.get("additionalProperties")
            if not isinstance(values, dict):
                return [f"{where}: the document's object is not a map"]
            return self.check(spec["values"], values, f"{where}{{}}")
        if kind == "object":
            properties, required = schema.get("properties", {}), set(schema.get("required", []))
            problems = []
            for name, field in spec["fields"].items():
                if name not in properties:
                    problems.append(f"{where}.{name}: the client reads it, the document does not have it")
                    continue
                if name not in required and not (field.get("optional") or field.get("nullable")):
                    problems.append(f"{where}.{name}: may be absent, the client requires it")
                problems += self.check(field, properties[name], f"{where}.{name}")
            return problems
        return []
